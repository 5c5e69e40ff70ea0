"""The Evaluator component: TFX's Evaluator running this folder's `executor`."""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from next_category.components.evaluator import executor


class Evaluator(tfx.components.Evaluator):
  """TFX's Evaluator (same inputs, outputs and parameters); see `executor` for the baseline.

  Its `baseline_model` comes from `ServingBaseline`, which outputs an empty
  Model when nothing is serving; then the model is blessed on the absolute
  thresholds alone, as TFX's Evaluator does without a baseline.
  """

  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)
