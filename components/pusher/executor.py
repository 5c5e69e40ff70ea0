"""TFX's Pusher executor, made idempotent and atomic.

TFX's executor (tfx/components/pusher/executor.py) copies a blessed model to
`<base_directory>/<unix time>/` on every execution. A re-run that blesses the
same model (a clean re-run after a fresh one; a run killed during the Pusher
or TFLiteConverter and run again) therefore pushed it again under a new
version, and a kill during the copy left a partial version behind. This one:

* does not push a model whose SavedModel fingerprint is the version serving
  now: its output names that version (`already_pushed` = 1), so the
  TFLiteConverter can still ship its TFLite copy there;
* writes a new version under a staging name and renames it into place
  (`serving_versions.publish`), numbered above every existing version;
* deletes staging directories that killed pushes left behind.

The output keeps TFX's custom properties: `pushed`, `pushed_destination`,
`pushed_version`.
"""

from typing import Any
from typing import Dict
from typing import List
from typing import Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import json_utils
from tfx.utils import proto_utils

from next_category.components import serving_versions
from next_category.components import version_signing

# 1 when the model was already the version serving and nothing was copied.
ALREADY_PUSHED_PROPERTY = "already_pushed"
CUSTOM_CONFIG_KEY = standard_component_specs.CUSTOM_CONFIG_KEY


def _signing_key(exec_properties: Dict[str, Any]) -> Optional[str]:
  custom_config = exec_properties.get(CUSTOM_CONFIG_KEY) or {}
  if isinstance(custom_config, str):  # As the orchestrators pass it: JSON.
    custom_config = json_utils.loads(custom_config) or {}
  return custom_config.get(version_signing.MODEL_SIGNING_KEY)


class Executor(tfx_pusher_executor.Executor):
  """Pushes a blessed model to a filesystem destination, once per distinct model."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Pushes the model if it is blessed and not the version serving already.

    Args:
      input_dict: `model` and `model_blessing`, as TFX's Pusher.
      output_dict: `pushed_model`, as TFX's Pusher.
      exec_properties: `push_destination`, a filesystem destination, and
        `custom_config`, whose `model_signing_key` (a private key path), when
        set, signs every version pushed.

    Raises:
      ValueError: for a destination other than a filesystem.
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
      output_dict[standard_component_specs.PUSHED_MODEL_KEY]
    )
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    model_path = self.GetModelPath(input_dict)
    push_destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
      exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], push_destination
    )
    if push_destination.WhichOneof("destination") != "filesystem":
      raise ValueError(
        f"This Pusher pushes to a filesystem destination only; got {push_destination}."
      )
    base_path = push_destination.filesystem.base_directory

    serving_versions.remove_stale_staging(base_path)
    serving = serving_versions.serving_version(base_path)
    candidate = serving_versions.fingerprint(model_path)
    if candidate is None:
      logging.warning(
        "%s has no fingerprint.pb; it cannot be recognised if pushed twice.", model_path
      )
    if serving is not None and candidate and serving_versions.fingerprint(serving[1]) == candidate:
      version, destination = str(serving[0]), serving[1]
      logging.info("The model is the version serving (%s); not pushing it again.", destination)
      already_pushed = 1
    else:
      version = str(serving_versions.next_version(base_path))
      # Signed in staging (with a key), so the version is never visible unsigned.
      write = version_signing.signing_writer(
        lambda staging: io_utils.copy_dir(model_path, staging),
        _signing_key(exec_properties),
        model_name=version_signing.model_name_for(base_path),
        version=version,
      )
      destination = serving_versions.publish(base_path, version, write)
      logging.info("Model pushed to %s.", destination)
      already_pushed = 0

    # As TFX's Pusher: the model is archived in the output too.
    io_utils.copy_dir(model_path, model_push.uri)
    self._MarkPushed(model_push, pushed_destination=destination, pushed_version=version)
    model_push.set_int_custom_property(ALREADY_PUSHED_PROPERTY, already_pushed)
