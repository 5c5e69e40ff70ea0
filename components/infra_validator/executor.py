"""The InfraValidator executor: serves the candidate model in a real server process and queries it.

It copies the Trainer's SavedModel to a temporary model base path as version 1,
starts `python -m next_category.serving.server` on it (see `model_server`), waits until the
version is AVAILABLE (loaded, warmup requests replayed), sends a sample of
eval examples over gRPC (see `queries`) and compares every answer with the
same SavedModel called in this process. The model is blessed only if it loads
and every answer is well-formed and equal within `max_abs_difference`.

The verdict is TFX's `InfraBlessing`, marked as TFX's InfraValidator marks it
(tfx/components/infra_validator/executor.py, `_mark_blessed`: an empty
INFRA_BLESSED or INFRA_NOT_BLESSED file and the int custom property `blessed`),
so TFX's Pusher, given it as `infra_blessing`, pushes only a blessed model. The
measurements go to infra_validation.json and the server's log to server.log.
A failed check never fails the run: the Pusher's refusal is what stops it.
"""

import dataclasses
import json
import os
import tempfile
from typing import Any
from typing import Dict
from typing import List
from typing import Optional

import grpc
import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from next_category.components.infra_validator import model_server
from next_category.components.infra_validator import queries

# Keys of the component's inputs, outputs and parameters.
MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
MODEL_BLESSING_KEY = "model_blessing"
BLESSING_KEY = "blessing"
NUM_EXAMPLES_KEY = "num_examples"
SPLIT_KEY = "split"
LOAD_TIMEOUT_SECONDS_KEY = "load_timeout_seconds"
MAX_ABS_DIFFERENCE_KEY = "max_abs_difference"

# TFX InfraValidator's marks (tfx/components/infra_validator/executor.py).
BLESSED_PROPERTY = "blessed"
BLESSED_FILENAME = "INFRA_BLESSED"
NOT_BLESSED_FILENAME = "INFRA_NOT_BLESSED"
# This component's own custom properties and files.
REASON_PROPERTY = "reason"
P50_MS_PROPERTY = "predict_p50_ms"
P99_MS_PROPERTY = "predict_p99_ms"
MEASUREMENTS_FILE = "infra_validation.json"
SERVER_LOG_FILE = "server.log"

# TFX InfraValidator's model name (_DEFAULT_MODEL_NAME); the version is 1.
MODEL_NAME = "infra-validation-model"
MODEL_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Options:
  """How the canary checks a model (the component's execution parameters).

  Attributes:
    num_examples: eval examples sent (the first ones of the split).
    split: the Examples split they are read from.
    load_timeout_seconds: how long the server may take to start, load and
      warm up the model.
    max_abs_difference: the largest absolute difference between a served
      float value and the in-process model's for the answer to pass. The
      server runs the same SavedModel, so only float round-off differs.
  """

  num_examples: int = 100
  split: str = "eval"
  load_timeout_seconds: float = 300.0
  max_abs_difference: float = 1e-5


def _read_examples(path: str, limit: int) -> List[bytes]:
  """Up to `limit` records of a TFRecord file, or of a directory's files in name order."""
  if tf.io.gfile.isdir(path):
    files = sorted(
      os.path.join(path, name)
      for name in tf.io.gfile.listdir(path)
      if not tf.io.gfile.isdir(os.path.join(path, name))
    )
  else:
    files = sorted(tf.io.gfile.glob(path))
  records = []
  for path in files:
    compression = "GZIP" if path.endswith(".gz") else ""
    for record in tf.data.TFRecordDataset(path, compression_type=compression):
      if len(records) >= limit:
        return records
      records.append(record.numpy())
  return records


def _percentiles(latencies_ms: List[float]) -> Dict[str, float]:
  if not latencies_ms:
    return {}
  p50, p99 = np.percentile(latencies_ms, [50, 99])
  return {"p50": float(p50), "p99": float(p99), "mean": float(np.mean(latencies_ms))}


def _verdict(measurements: Dict[str, Any], options: Options) -> Dict[str, Any]:
  queried = measurements["queries"]
  answers = queried["predict_requests"] + queried["classify_requests"]
  if queried["mismatch_count"]:
    return {
      "blessed": False,
      "reason": f"Not blessed: {queried['mismatch_count']} wrong answers in {answers} "
      f"requests, e.g. {queried['mismatches'][0]}",
    }
  predict = measurements["latency_ms"]["predict"]
  classify = (
    f" and {queried['classify_requests']} Classify ({queried['examples_classified']} examples)"
    if queried["classify_requests"]
    else " (no classification signature)"
  )
  return {
    "blessed": True,
    "reason": f"Blessed: loaded and warmed up in {measurements['load_seconds']:.1f} s; "
    f"{queried['predict_requests']} Predict{classify} answers equal the in-process model's "
    f"within {options.max_abs_difference:g} (largest difference "
    f"{queried['max_abs_difference_seen']:.2g}); Predict p50 {predict['p50']:.1f} ms, "
    f"p99 {predict['p99']:.1f} ms.",
  }


def validate(
  saved_model_dir: str, examples_dir: str, log_path: str, options: Options = Options()
) -> Dict[str, Any]:
  """Serves the SavedModel in a model server process, queries it and returns the measurements.

  Args:
    saved_model_dir: the candidate SavedModel (local or remote).
    examples_dir: a directory of TFRecord files of serialized tf.Examples
      (or one file, or a glob pattern); `.gz` files are read as GZIP.
    log_path: local file the server's log is written to.
    options: sizes and bounds of the check.

  Returns:
    The measurements, with `blessed` and `reason`.
  """
  examples = _read_examples(examples_dir, options.num_examples)
  measurements: Dict[str, Any] = {
    "model_name": MODEL_NAME,
    "version": MODEL_VERSION,
    "examples": len(examples),
    "options": dataclasses.asdict(options),
  }
  if not examples:
    measurements.update(blessed=False, reason=f"Not blessed: no examples in {examples_dir}.")
    return measurements
  with tempfile.TemporaryDirectory(prefix="infra_validation-") as root:
    base_path = model_server.stage_model(saved_model_dir, root, MODEL_NAME, MODEL_VERSION)
    server = model_server.ModelServer(
      MODEL_NAME,
      base_path,
      log_path,
      # The server gives up (and exits) when the version is not loaded by then.
      extra_flags=[f"--model_load_timeout_seconds={options.load_timeout_seconds:g}"],
    )
    measurements["server_command"] = " ".join(server.command)
    try:
      with server:
        measurements["load_seconds"] = server.wait_until_available(
          MODEL_VERSION, options.load_timeout_seconds
        )
        report = queries.query_and_check(
          server.channel,
          MODEL_NAME,
          MODEL_VERSION,
          os.path.join(base_path, str(MODEL_VERSION)),
          examples,
          options.max_abs_difference,
        )
    except model_server.ModelServerError as e:
      measurements.update(blessed=False, reason=f"Not blessed: {e}")
      return measurements
    except grpc.RpcError as e:
      measurements.update(
        blessed=False,
        reason=f"Not blessed: a request failed with {e.code().name}: {e.details()}",
      )
      return measurements
    except ValueError as e:
      measurements.update(blessed=False, reason=f"Not blessed: {e}")
      return measurements
  measurements["queries"] = {
    k: v
    for k, v in dataclasses.asdict(report).items()
    if k not in ("predict_latency_ms", "classify_latency_ms")
  }
  measurements["latency_ms"] = {
    "predict": _percentiles(report.predict_latency_ms),
    "classify": _percentiles(report.classify_latency_ms),
    "note": "Wall time of each RPC seen by the canary's client on loopback: Predict with one "
    f"example per request, Classify with up to {queries.CLASSIFY_BATCH_SIZE}.",
  }
  measurements.update(_verdict(measurements, options))
  return measurements


def _mark(blessing: types.Artifact, measurements: Dict[str, Any]) -> None:
  blessed = bool(measurements["blessed"])
  filename = BLESSED_FILENAME if blessed else NOT_BLESSED_FILENAME
  with tf.io.gfile.GFile(os.path.join(blessing.uri, filename), "w") as f:
    f.write("")
  with tf.io.gfile.GFile(os.path.join(blessing.uri, MEASUREMENTS_FILE), "w") as f:
    f.write(json.dumps(measurements, indent=2, sort_keys=True))
  blessing.set_int_custom_property(BLESSED_PROPERTY, int(blessed))
  blessing.set_string_custom_property(REASON_PROPERTY, measurements["reason"])
  predict = measurements.get("latency_ms", {}).get("predict", {})
  if predict:
    blessing.set_float_custom_property(P50_MS_PROPERTY, predict["p50"])
    blessing.set_float_custom_property(P99_MS_PROPERTY, predict["p99"])


def _evaluator_blessed(model_blessings: Optional[List[types.Artifact]]) -> bool:
  for model_blessing in model_blessings or []:
    if not model_blessing.get_int_custom_property(BLESSED_PROPERTY):
      return False
  return True


class Executor(base_executor.BaseExecutor):
  """Serves the candidate model in a server process, checks its answers, writes InfraBlessing."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Runs the canary and marks the blessing.

    Args:
      input_dict: `model` (the Trainer's Model), `examples` (ExampleGen's,
        with the `split` split) and optionally `model_blessing` (the
        Evaluator's: a model it did not bless is not served, and not blessed).
      output_dict: `blessing`, the InfraBlessing.
      exec_properties: see `InfraValidatorSpec`.
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    defaults = Options()
    options = Options(
      num_examples=int(exec_properties.get(NUM_EXAMPLES_KEY) or defaults.num_examples),
      split=exec_properties.get(SPLIT_KEY) or defaults.split,
      load_timeout_seconds=float(
        exec_properties.get(LOAD_TIMEOUT_SECONDS_KEY) or defaults.load_timeout_seconds
      ),
      max_abs_difference=float(
        exec_properties.get(MAX_ABS_DIFFERENCE_KEY, defaults.max_abs_difference)
      ),
    )
    blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
    tf.io.gfile.makedirs(blessing.uri)
    if not _evaluator_blessed(input_dict.get(MODEL_BLESSING_KEY)):
      measurements = {
        "blessed": False,
        "skipped": True,
        "reason": "Not blessed: the Evaluator did not bless the model, so it was not served.",
      }
    else:
      model_uri = artifact_utils.get_single_uri(input_dict[MODEL_KEY])
      examples_dir = artifact_utils.get_split_uri(input_dict[EXAMPLES_KEY], options.split)
      with tempfile.TemporaryDirectory(prefix="infra_validation_log-") as log_dir:
        log_path = os.path.join(log_dir, SERVER_LOG_FILE)
        measurements = validate(
          path_utils.serving_model_path(model_uri), examples_dir, log_path, options
        )
        if os.path.exists(log_path):
          tf.io.gfile.copy(log_path, os.path.join(blessing.uri, SERVER_LOG_FILE), overwrite=True)
    _mark(blessing, measurements)
    (logging.info if measurements["blessed"] else logging.warning)(
      "InfraValidator: %s", measurements["reason"]
    )
