"""The InfraValidator component: a canary that serves the candidate model before it is pushed.

TFX's own InfraValidator needs Docker or Kubernetes to start
tensorflow_model_server; this one starts this project's server
(`python -m next_category.serving.server`) as a child process on a loopback port, so it runs
wherever the pipeline runs, in a Kubeflow step's own container too. It writes
TFX's standard `InfraBlessing`: give it to the Pusher as `infra_blessing` and a
model that fails to load or to answer correctly is never pushed. See
`executor` for what is checked.
"""

import math
from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from next_category.components.infra_validator import executor


class InfraValidatorSpec(types.ComponentSpec):
  """Inputs, outputs and parameters of InfraValidator."""

  PARAMETERS = {
    executor.NUM_EXAMPLES_KEY: ExecutionParameter(type=int),
    executor.SPLIT_KEY: ExecutionParameter(type=str),
    executor.LOAD_TIMEOUT_SECONDS_KEY: ExecutionParameter(type=float),
    executor.MAX_ABS_DIFFERENCE_KEY: ExecutionParameter(type=float),
  }
  INPUTS = {
    executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    executor.MODEL_BLESSING_KEY: ChannelParameter(
      type=standard_artifacts.ModelBlessing, optional=True
    ),
  }
  OUTPUTS = {
    executor.BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
  }


class InfraValidator(base_component.BaseComponent):
  """Serves the trained model in a model server process, checks its answers, blesses it.

  Example:

    infra_validator = InfraValidator(
        model=trainer.outputs["model"],
        examples=example_gen.outputs["examples"],
        model_blessing=evaluator.outputs["blessing"])
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=infra_validator.outputs["blessing"], ...)

  Its `blessing` output has the custom properties `blessed` (1 or 0),
  `reason`, and when queried `predict_p50_ms` / `predict_p99_ms`; its
  directory holds infra_validation.json (the measurements) and server.log.
  """

  SPEC_CLASS = InfraValidatorSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

  def __init__(
    self,
    model: types.BaseChannel,
    examples: types.BaseChannel,
    model_blessing: Optional[types.BaseChannel] = None,
    num_examples: int = executor.Options.num_examples,
    split: str = executor.Options.split,
    load_timeout_seconds: float = executor.Options.load_timeout_seconds,
    max_abs_difference: float = executor.Options.max_abs_difference,
  ):
    """Constructs an InfraValidator.

    Args:
      model: the Trainer's model (a SavedModel in Format-Serving).
      examples: ExampleGen's examples; the first `num_examples` of `split` are sent.
      model_blessing: the Evaluator's blessing; a model it did not bless is
        not served and not blessed here either (it would not be pushed anyway).
      num_examples: examples sent, each alone to Predict and in batches to
        Classify when the model has a classification signature.
      split: the split of `examples` to read.
      load_timeout_seconds: how long the server may take to start, load and
        warm up the model before the model is declared not servable.
      max_abs_difference: the largest absolute difference between a served
        float value and the in-process model's.

    Raises:
      ValueError: for a count below 1, an empty split name, or a timeout or
        tolerance that is not a positive (non-negative) finite number.
    """
    if not isinstance(num_examples, int) or isinstance(num_examples, bool) or num_examples < 1:
      raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}.")
    if not isinstance(split, str) or not split.strip():
      raise ValueError(f"split must name a split of the examples, such as 'eval', got {split!r}.")
    for name, value, smallest in (
      ("load_timeout_seconds", load_timeout_seconds, "positive"),
      ("max_abs_difference", max_abs_difference, "non-negative"),
    ):
      if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value < 0
        or (smallest == "positive" and value == 0)
      ):
        raise ValueError(f"{name} must be a {smallest} finite number, got {value!r}.")
    spec = InfraValidatorSpec(
      model=model,
      examples=examples,
      model_blessing=model_blessing,
      num_examples=num_examples,
      split=split,
      load_timeout_seconds=float(load_timeout_seconds),
      max_abs_difference=float(max_abs_difference),
      blessing=types.Channel(type=standard_artifacts.InfraBlessing),
    )
    super().__init__(spec=spec)
