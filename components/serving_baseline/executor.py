"""The ServingBaseline executor: copies the model serving now into its `baseline_model` output.

The model serving now is the highest numeric version under the Pusher's push
destination that holds a complete SavedModel (`next_category.components.serving_versions`).
It is copied into the output's `Format-Serving/`, where the Evaluator reads a
Model, so the evaluation is recorded against a fixed copy even if the push
destination changes later. With nothing serving, the output stays empty and
the Evaluator (`next_category.components.evaluator`) blesses on the absolute threshold alone.
"""

from typing import Any
from typing import Dict
from typing import List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from next_category.components import serving_versions

# Keys of the component's parameters and outputs.
SERVING_MODEL_DIR_KEY = "serving_model_dir"
BASELINE_MODEL_KEY = "baseline_model"
# Set by the driver (this folder's `driver`), where one runs: what serves now.
SERVING_FINGERPRINT_KEY = "serving_fingerprint"

# Custom properties of the output Model.
HAS_MODEL_PROPERTY = "has_model"
SERVING_VERSION_PROPERTY = "serving_version"
SOURCE_PATH_PROPERTY = "source_path"


class Executor(base_executor.BaseExecutor):
  """Finds the model serving now and copies it as the baseline."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Copies the serving model, if any, into the `baseline_model` output.

    Args:
      input_dict: none.
      output_dict: `baseline_model`, a Model. Its custom properties:
        `has_model` (0 or 1), and with a model `serving_version` and
        `source_path` (the version directory it was copied from).
      exec_properties: `serving_model_dir`, the Pusher's push destination,
        and, where the driver ran, `serving_fingerprint`, what served then.

    Raises:
      RuntimeError: if the copy is not a complete SavedModel (the version was
        deleted while being copied), or if another model serves now than the
        driver fingerprinted (the cache key would name the wrong model).
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    baseline = artifact_utils.get_single_instance(output_dict[BASELINE_MODEL_KEY])
    base_path = exec_properties[SERVING_MODEL_DIR_KEY]
    found = serving_versions.serving_version(base_path)
    if found is None:
      logging.info(
        "No complete model version under %s: no baseline, the Evaluator blesses on the "
        "absolute threshold alone.",
        base_path,
      )
      baseline.set_int_custom_property(HAS_MODEL_PROPERTY, 0)
      return
    version, source = found
    expected = exec_properties.get(SERVING_FINGERPRINT_KEY)
    if expected and serving_versions.version_fingerprint(version, source) != expected:
      # The cache key says what the driver saw: never record another model under it.
      raise RuntimeError(
        f"The model serving under {base_path} changed after this step's driver looked "
        f"(it saw {expected}; version {version} serves now); run the pipeline again."
      )
    destination = path_utils.serving_model_path(baseline.uri)
    io_utils.copy_dir(source, destination)
    if not serving_versions.is_complete_saved_model(destination):
      raise RuntimeError(
        f"The copy of {source} in {destination} is not a complete SavedModel; was the "
        "version deleted while it was being copied?"
      )
    logging.info("Baseline: version %d, copied from %s.", version, source)
    baseline.set_int_custom_property(HAS_MODEL_PROPERTY, 1)
    baseline.set_int_custom_property(SERVING_VERSION_PROPERTY, version)
    baseline.set_string_custom_property(SOURCE_PATH_PROPERTY, source)


def holds_model(baseline: types.Artifact) -> bool:
  """Whether a `baseline_model` artifact holds a model (it does not when nothing was serving).

  Decided by the files, not the custom properties, so it holds on every
  orchestrator whatever metadata it passes along.
  """
  return serving_versions.is_complete_saved_model(
    path_utils.serving_model_path(baseline.uri, path_utils.is_old_model_artifact(baseline))
  )
