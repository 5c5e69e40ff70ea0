"""The TFLiteConverter executor: converts, checks and (if it passes) ships the int8 model.

Every run converts the trained Keras model twice, to float32 TFLite and to
full-integer int8 TFLite (calibrated on train-split examples), then measures
on the same eval-split examples, in this process:

* size: int8 bytes against the float TFLite model;
* top-1 accuracy of the int8 model, the float TFLite model and the SavedModel
  (`serving_default`), overall and per slice;
* single-example latency (p50, p99) of the three, and of both TFLite models
  with TFLite's builtin kernels only (no XNNPACK delegate), so the int8 model,
  as shipped, is compared with the float model under its faster option.

The int8 model is blessed only if it is fully integer and its accuracy is at
most `max_accuracy_drop` points below the SavedModel's; only then is it
pushed. A failed check never fails the run (the SavedModel's push does not
depend on it): the output artifact's `blessed` and `reason` properties and
metrics.json say what happened.
"""

import dataclasses
import json
import os
import time
from typing import Any
from typing import Dict
from typing import List
from typing import Optional

import numpy as np
import tensorflow as tf
from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import path_utils

from next_category.components import serving_versions
from next_category.components import version_signing
from next_category.components.tflite_converter import conversion
from next_category.components.tflite_converter import examples as examples_lib
from next_category.components.tflite_converter import measurements
from next_category.components.trainer import export
from next_category.components.trainer import layers  # noqa: F401  Registers the custom layers for loading.

# Keys of the component's inputs, outputs and parameters.
MODEL_KEY = "model"
EXAMPLES_KEY = "examples"
PUSHED_MODEL_KEY = "pushed_model"
TFLITE_MODEL_KEY = "tflite_model"
MAX_ACCURACY_DROP_KEY = "max_accuracy_drop"
NUM_REPRESENTATIVE_EXAMPLES_KEY = "num_representative_examples"
MAX_EVAL_EXAMPLES_KEY = "max_eval_examples"
NUM_LATENCY_EXAMPLES_KEY = "num_latency_examples"
PUSH_BASE_DIRECTORY_KEY = "push_base_directory"
MODEL_SIGNING_KEY_KEY = version_signing.MODEL_SIGNING_KEY

# Files of the output artifact, and of every pushed version.
MODEL_FILE = "model.tflite"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
# The data contract the model was trained on (how to encode examples for it).
CONTRACT_FILE = export.CONTRACT_FILENAME
_SHIPPED_FILES = (MODEL_FILE, LABELS_FILE, CONTRACT_FILE, METRICS_FILE)

# Custom properties of the output artifact (the push ones as TFX's Pusher
# names them on PushedModel).
BLESSED_PROPERTY = "blessed"
REASON_PROPERTY = "reason"
PUSHED_PROPERTY = "pushed"
PUSHED_DESTINATION_PROPERTY = "pushed_destination"
PUSHED_VERSION_PROPERTY = "pushed_version"

TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
# Model names in metrics.json.
INT8 = "int8_tflite"
FLOAT = "float_tflite"
SAVED_MODEL = "saved_model"
# Latency-only names: the TFLite models run without the XNNPACK delegate.
INT8_BUILTIN_KERNELS = "int8_tflite_builtin_kernels"
FLOAT_BUILTIN_KERNELS = "float_tflite_builtin_kernels"
_SAVED_MODEL_BATCH = 256


@dataclasses.dataclass(frozen=True)
class Options:
  """How a conversion is checked (the component's execution parameters).

  Attributes:
    max_accuracy_drop: the most top-1 accuracy, in percentage points, the int8
      model may lose against the SavedModel on the eval examples.
    num_representative_examples: train examples to calibrate int8 ranges on.
    max_eval_examples: eval examples to compare accuracy on (the first ones).
    num_latency_examples: eval examples each model predicts one at a time,
      `latency_rounds` times, for the latency percentiles.
    latency_rounds: passes over the latency examples.
    num_threads: TFLite interpreter threads.
  """

  max_accuracy_drop: float = 1.0
  num_representative_examples: int = 500
  max_eval_examples: int = 10_000
  num_latency_examples: int = 200
  latency_rounds: int = 5
  num_threads: int = 1


def _write(path: str, content) -> None:
  mode = "wb" if isinstance(content, bytes) else "w"
  with tf.io.gfile.GFile(path, mode) as f:
    f.write(content)


def _saved_model_probabilities(serving, serialized: List[bytes]) -> np.ndarray:
  return np.concatenate(
    [
      serving(examples=tf.constant(serialized[i : i + _SAVED_MODEL_BATCH]))[
        export.PROBABILITIES_KEY
      ].numpy()
      for i in range(0, len(serialized), _SAVED_MODEL_BATCH)
    ]
  )


def _verdict(metrics: Dict[str, Any], options: Options) -> Dict[str, Any]:
  """Blesses the int8 model or says why not."""
  if metrics["quantization"]["non_integer_tensors"]:
    names = metrics["quantization"]["non_integer_tensors"]
    return {
      "blessed": False,
      "reason": f"The int8 model is not fully integer: {len(names)} float tensors, "
      f"e.g. {names[:3]}.",
    }
  accuracy = metrics["accuracy"]
  drop = accuracy["drop_points"][INT8]
  summary = (
    f"int8 top-1 accuracy {100 * accuracy['accuracy'][INT8]:.2f}% vs the SavedModel's "
    f"{100 * accuracy['accuracy'][SAVED_MODEL]:.2f}% on {accuracy['examples']} eval "
    f"examples: a drop of {drop:.2f} points"
  )
  if drop > options.max_accuracy_drop:
    return {
      "blessed": False,
      "reason": f"Not shipped: {summary}, more than the bound of "
      f"{options.max_accuracy_drop:g} points.",
    }
  return {
    "blessed": True,
    "reason": f"Blessed: {summary}, within the bound of {options.max_accuracy_drop:g} points.",
  }


def convert_and_check(
  saved_model_dir: str,
  train_paths: List[str],
  eval_paths: List[str],
  output_dir: str,
  options: Options = Options(),
) -> Dict[str, Any]:
  """Converts the SavedModel to int8 TFLite, measures it and writes the artifact files.

  Args:
    saved_model_dir: the Trainer's serving SavedModel (a Keras model, with the
      data contract it was trained on in assets.extra).
    train_paths: TFRecord files or directories to calibrate on.
    eval_paths: TFRecord files or directories to check on.
    output_dir: where model.tflite, labels.txt (the class names),
      data_contract.json and metrics.json are written.
    options: sizes of the checks and the accuracy bound.

  Returns:
    The metrics, as written to metrics.json.
  """
  model = tf.keras.models.load_model(saved_model_dir, compile=False)
  data_contract = export.read_contract(saved_model_dir)
  calibration = examples_lib.read(data_contract, train_paths, options.num_representative_examples)
  int8_model = conversion.convert(
    model, data_contract, (calibration.row(i) for i in range(len(calibration)))
  )
  float_model = conversion.convert(model, data_contract)

  eval_examples = examples_lib.read(data_contract, eval_paths, options.max_eval_examples)
  int8_runner = conversion.Runner(int8_model, options.num_threads)
  float_runner = conversion.Runner(float_model, options.num_threads)
  int8_builtin_runner = conversion.Runner(int8_model, options.num_threads, xnnpack=False)
  float_builtin_runner = conversion.Runner(float_model, options.num_threads, xnnpack=False)
  serving = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  probabilities = {
    SAVED_MODEL: _saved_model_probabilities(serving, eval_examples.serialized),
    FLOAT: float_runner.predict_all(eval_examples.row, len(eval_examples)),
    INT8: int8_runner.predict_all(eval_examples.row, len(eval_examples)),
  }
  accuracy = measurements.accuracy_report(
    eval_examples, probabilities, reference=SAVED_MODEL, slice_features=data_contract.slice_features
  )

  num_latency = min(options.num_latency_examples, len(eval_examples))
  single = [tf.constant(eval_examples.serialized[i : i + 1]) for i in range(num_latency)]
  latency = measurements.latency_report(
    {
      INT8: lambda i: int8_runner(eval_examples.row(i)),
      FLOAT: lambda i: float_runner(eval_examples.row(i)),
      INT8_BUILTIN_KERNELS: lambda i: int8_builtin_runner(eval_examples.row(i)),
      FLOAT_BUILTIN_KERNELS: lambda i: float_builtin_runner(eval_examples.row(i)),
      SAVED_MODEL: lambda i: serving(examples=single[i]),
    },
    num_examples=num_latency,
    rounds=options.latency_rounds,
  )
  # The int8 model as it is served (XNNPACK) against the float model under
  # whichever option is faster for it.
  fastest_float = min((FLOAT, FLOAT_BUILTIN_KERNELS), key=lambda name: latency[name]["p50_us"])

  metrics = {
    "size_bytes": {
      INT8: len(int8_model),
      FLOAT: len(float_model),
      "int8_to_float_ratio": len(int8_model) / len(float_model),
    },
    "accuracy": accuracy,
    "latency": {
      **latency,
      "fastest_float": fastest_float,
      "int8_speedup_vs_float_p50": latency[fastest_float]["p50_us"] / latency[INT8]["p50_us"],
      "int8_speedup_vs_saved_model_p50": latency[SAVED_MODEL]["p50_us"] / latency[INT8]["p50_us"],
      "num_threads": options.num_threads,
      "note": "TFLite: set inputs, invoke, read output on encoded inputs, with the default "
      "XNNPACK delegate (how the model is served) or, for *_builtin_kernels, without it; "
      "the int8 speedup vs float is against fastest_float. SavedModel: serving_default on "
      "one serialized tf.Example (parsing included).",
    },
    "quantization": {
      "weights": "int8",
      "activations": "int8",
      "inputs": "int64 ids and vocabulary indices (not quantized)",
      "output": "float32 probabilities (the int8 softmax, dequantized)",
      "representative_examples": len(calibration),
      "non_integer_tensors": conversion.non_integer_tensors(int8_model),
    },
    "options": dataclasses.asdict(options),
  }
  metrics.update(_verdict(metrics, options))

  tf.io.gfile.makedirs(output_dir)
  _write(os.path.join(output_dir, MODEL_FILE), int8_model)
  _write(
    os.path.join(output_dir, LABELS_FILE),
    "".join(f"{name}\n" for name in data_contract.label.class_names),
  )
  _write(os.path.join(output_dir, CONTRACT_FILE), data_contract.to_json())
  write_metrics(output_dir, metrics)
  return metrics


def write_metrics(directory: str, metrics: Dict[str, Any]) -> None:
  _write(os.path.join(directory, METRICS_FILE), json.dumps(metrics, indent=2, sort_keys=True))


def push(
  source_dir: str, base_directory: str, version: str, model_signing_key: Optional[str] = None
) -> str:
  """Ships the artifact files to `base_directory/version/`, once and atomically.

  A version already holding every file (a re-run after it was shipped) is
  kept as it is. Otherwise the files go to a staging directory that is renamed
  into place (`serving_versions.publish`), so a reader never sees a partial
  version; a partial one left by an older, non-atomic push is replaced, and
  staging directories left by killed runs are removed. With
  `model_signing_key`, the staged version is signed before the rename.

  Returns:
    The destination directory.
  """
  destination = os.path.join(base_directory, version)
  serving_versions.remove_stale_staging(base_directory)
  if all(tf.io.gfile.exists(os.path.join(destination, name)) for name in _SHIPPED_FILES):
    logging.info(
      "TFLiteConverter: %s already holds the TFLite model; not shipping again.", destination
    )
    return destination
  if tf.io.gfile.exists(destination):
    tf.io.gfile.rmtree(destination)

  def write(staging: str) -> None:
    for name in _SHIPPED_FILES:
      tf.io.gfile.copy(os.path.join(source_dir, name), os.path.join(staging, name))

  write_and_sign = version_signing.signing_writer(
    write, model_signing_key, version_signing.model_name_for(base_directory), version
  )
  return serving_versions.publish(base_directory, version, write_and_sign)


def _push_version(pushed_models: Optional[List[types.Artifact]]) -> Optional[str]:
  """The SavedModel Pusher's version number; None if it did not push.

  Without a Pusher (no `pushed_model` input), the current time, as the Pusher
  numbers versions.
  """
  if not pushed_models:
    return str(int(time.time()))
  for pushed_model in pushed_models:
    if pushed_model.has_custom_property(PUSHED_VERSION_PROPERTY):
      version = pushed_model.get_string_custom_property(PUSHED_VERSION_PROPERTY)
      if version:
        return version
  return None


class Executor(base_executor.BaseExecutor):
  """Converts the trained model to int8 TFLite, checks it against the SavedModel, ships it."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    """Runs the conversion, the checks and, when blessed, the push.

    Args:
      input_dict: `model` (Trainer's Model), `examples` (with `train` and
        `eval` splits), optionally `pushed_model` (Pusher's PushedModel, for
        the version number).
      output_dict: `tflite_model`, the artifact the files are written to.
      exec_properties: see `TFLiteConverterSpec`.
    """
    self._log_startup(input_dict, output_dict, exec_properties)
    options = Options(
      max_accuracy_drop=float(exec_properties.get(MAX_ACCURACY_DROP_KEY, 1.0)),
      num_representative_examples=int(
        exec_properties.get(NUM_REPRESENTATIVE_EXAMPLES_KEY, Options.num_representative_examples)
      ),
      max_eval_examples=int(exec_properties.get(MAX_EVAL_EXAMPLES_KEY, Options.max_eval_examples)),
      num_latency_examples=int(
        exec_properties.get(NUM_LATENCY_EXAMPLES_KEY, Options.num_latency_examples)
      ),
    )
    model_uri = artifact_utils.get_single_uri(input_dict[MODEL_KEY])
    examples = input_dict[EXAMPLES_KEY]
    output = artifact_utils.get_single_instance(output_dict[TFLITE_MODEL_KEY])

    metrics = convert_and_check(
      saved_model_dir=path_utils.serving_model_path(model_uri),
      train_paths=[artifact_utils.get_split_uri(examples, TRAIN_SPLIT)],
      eval_paths=[artifact_utils.get_split_uri(examples, EVAL_SPLIT)],
      output_dir=output.uri,
      options=options,
    )
    base_directory = exec_properties.get(PUSH_BASE_DIRECTORY_KEY)
    version = _push_version(input_dict.get(PUSHED_MODEL_KEY))
    metrics["pushed"] = bool(metrics["blessed"] and base_directory and version)
    if metrics["pushed"]:
      destination = os.path.join(base_directory, version)
      metrics.update(pushed_destination=destination, pushed_version=version)
      metrics["reason"] += f" Pushed to {destination}."
    elif metrics["blessed"] and not base_directory:
      metrics["reason"] += " Not pushed: no push_base_directory."
    elif metrics["blessed"]:
      # Only beside a SavedModel version: the Evaluator did not bless this model.
      metrics["reason"] += " Not pushed: the Pusher did not push the SavedModel."
    write_metrics(output.uri, metrics)
    if metrics["pushed"]:
      push(output.uri, base_directory, version, exec_properties.get(MODEL_SIGNING_KEY_KEY))
      output.set_string_custom_property(PUSHED_DESTINATION_PROPERTY, destination)
      output.set_string_custom_property(PUSHED_VERSION_PROPERTY, version)
    output.set_int_custom_property(BLESSED_PROPERTY, int(metrics["blessed"]))
    output.set_int_custom_property(PUSHED_PROPERTY, int(metrics["pushed"]))
    output.set_string_custom_property(REASON_PROPERTY, metrics["reason"])
    log = logging.info if metrics["blessed"] else logging.warning
    log("TFLiteConverter: %s", metrics["reason"])
