"""The TFLiteConverter component: an int8 TFLite model for on-device serving, checked and shipped.

It runs after the Trainer (and, to share its version number, after the
Pusher), converts the trained Keras model to a full-integer int8 TFLite model,
compares it with the SavedModel on the eval split, and pushes it only if it
loses at most `max_accuracy_drop` points of accuracy. See `executor` for the
checks and `conversion` for the model's inputs and outputs.
"""

import math
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from next_category.components.tflite_converter import executor


class TFLiteModel(types.Artifact):
  """A TFLite model directory: model.tflite, labels.txt and metrics.json.

  Custom properties: `blessed` and `pushed` (0 or 1), `reason`, and when
  pushed `pushed_destination` and `pushed_version`.
  """

  # KFP v2 requires custom artifact types named "<namespace>.<Name>".
  TYPE_NAME = "next_category.TFLiteModel"


class TFLiteConverterSpec(types.ComponentSpec):
  """Inputs, outputs and parameters of TFLiteConverter."""

  PARAMETERS = {
    executor.MAX_ACCURACY_DROP_KEY: ExecutionParameter(type=float),
    executor.NUM_REPRESENTATIVE_EXAMPLES_KEY: ExecutionParameter(type=int),
    executor.MAX_EVAL_EXAMPLES_KEY: ExecutionParameter(type=int),
    executor.NUM_LATENCY_EXAMPLES_KEY: ExecutionParameter(type=int),
    executor.PUSH_BASE_DIRECTORY_KEY: ExecutionParameter(type=str, optional=True),
    executor.MODEL_SIGNING_KEY_KEY: ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {
    executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    executor.PUSHED_MODEL_KEY: ChannelParameter(type=standard_artifacts.PushedModel, optional=True),
  }
  OUTPUTS = {
    executor.TFLITE_MODEL_KEY: ChannelParameter(type=TFLiteModel),
  }


class TFLiteConverter(base_component.BaseComponent):
  """Converts the trained model to int8 TFLite, checks it, and ships it if it passes.

  Example:

    tflite_converter = TFLiteConverter(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        pushed_model=pusher.outputs["pushed_model"],
        push_base_directory=os.path.join(output_root, "tflite", "next_category"))

  Its `tflite_model` output holds model.tflite, labels.txt and metrics.json
  (size, accuracy per slice and latency against the float TFLite model and the
  SavedModel); a model that fails the accuracy bound is written but not
  pushed, and `blessed` = 0 with a `reason` says why. The run does not fail.
  """

  SPEC_CLASS = TFLiteConverterSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    model: types.BaseChannel,
    examples: types.BaseChannel,
    pushed_model: Optional[types.BaseChannel] = None,
    push_base_directory: Optional[str] = None,
    max_accuracy_drop: float = executor.Options.max_accuracy_drop,
    num_representative_examples: int = executor.Options.num_representative_examples,
    max_eval_examples: int = executor.Options.max_eval_examples,
    num_latency_examples: int = executor.Options.num_latency_examples,
    model_signing_key: Optional[str] = None,
  ):
    """Constructs a TFLiteConverter.

    Args:
      model: the Trainer's model (a Keras SavedModel in Format-Serving).
      examples: ExampleGen's examples, with `train` and `eval` splits.
      pushed_model: the SavedModel Pusher's output; the int8 model is pushed
        under the same version number (its `pushed_version`), and not at all
        when the Pusher did not push. Without it, the version is the current
        time in seconds, as the Pusher numbers versions.
      push_base_directory: the int8 model is pushed to
        `push_base_directory/<version>/`; None pushes nothing.
      max_accuracy_drop: the most top-1 accuracy, in percentage points, the
        int8 model may lose against the SavedModel on the eval split and still
        be shipped. Negative demands that it be better.
      num_representative_examples: train examples to calibrate int8 ranges on.
      max_eval_examples: eval examples to compare accuracy on.
      num_latency_examples: eval examples each model predicts one at a time
        (five times over) to measure latency.
      model_signing_key: an ECDSA private key file (`make keygen`); every
        version shipped is signed with it (OpenSSF model signing) before it
        becomes visible.

    Raises:
      ValueError: for a bound that is not a number, a count below 1, or an
        empty push directory or signing key path.
    """
    if (
      not isinstance(max_accuracy_drop, (int, float))
      or isinstance(max_accuracy_drop, bool)
      or not math.isfinite(max_accuracy_drop)
    ):
      raise ValueError(
        f"max_accuracy_drop must be a finite number of percentage points, got "
        f"{max_accuracy_drop!r}."
      )
    for name, value in (
      ("num_representative_examples", num_representative_examples),
      ("max_eval_examples", max_eval_examples),
      ("num_latency_examples", num_latency_examples),
    ):
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if push_base_directory is not None and not push_base_directory.strip():
      raise ValueError(
        "push_base_directory is empty; pass a directory to push to, or None to push nothing."
      )
    if model_signing_key is not None and not model_signing_key.strip():
      raise ValueError(
        "model_signing_key is empty; pass the path of a private key, or None to ship unsigned."
      )
    spec = TFLiteConverterSpec(
      model=model,
      examples=examples,
      pushed_model=pushed_model,
      push_base_directory=push_base_directory,
      max_accuracy_drop=float(max_accuracy_drop),
      num_representative_examples=num_representative_examples,
      max_eval_examples=max_eval_examples,
      num_latency_examples=num_latency_examples,
      model_signing_key=model_signing_key,
      tflite_model=types.Channel(type=TFLiteModel),
    )
    super().__init__(spec=spec)
