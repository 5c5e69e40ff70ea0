"""The ServingBaseline component: the model serving now, as the Evaluator's baseline.

It replaces a Resolver (`LatestBlessedModelStrategy`): open-source Kubeflow
Pipelines runs only container and importer steps, and "the model serving now"
is what a new model must not be worse than. It reads state outside the
pipeline (the push destination), so its inputs and parameters cannot tell
whether a cached execution is still right: its driver
(`next_category.components.serving_baseline.driver`) fingerprints the push destination
before the cache lookup, where the orchestrator runs drivers (the Beam and
local runners), and `READS_OUTSIDE_STATE` tells `next_category.pipeline.caching` to turn
caching off for it where none runs (Kubeflow).
"""

from tfx import types
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from next_category.components.serving_baseline import driver
from next_category.components.serving_baseline import executor


class ServingBaselineSpec(types.ComponentSpec):
  """Parameters and outputs of ServingBaseline (it has no inputs)."""

  PARAMETERS = {
    executor.SERVING_MODEL_DIR_KEY: ExecutionParameter(type=str),
    # Filled in by the driver at run time, never by the pipeline.
    executor.SERVING_FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {}
  OUTPUTS = {executor.BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model)}


class ServingBaseline(base_component.BaseComponent):
  """Hands the model serving now to the Evaluator as `baseline_model`.

  Example:

    serving_baseline = ServingBaseline(serving_model_dir=serving_model_dir)
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_model=serving_baseline.outputs["baseline_model"],
        eval_config=eval_config)

  The model serving now is the highest numeric version directory under
  `serving_model_dir` (the Pusher's push destination) that holds a complete
  SavedModel. When there is none (a first run), `baseline_model` holds no
  model and `next_category.components.evaluator.Evaluator` evaluates without a baseline.
  """

  SPEC_CLASS = ServingBaselineSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
  DRIVER_CLASS = driver.Driver
  # Its output depends on the push destination, not only on its inputs: only
  # an orchestrator that runs DRIVER_CLASS before the cache lookup may cache it.
  READS_OUTSIDE_STATE = True

  def __init__(self, serving_model_dir: str):
    """Constructs a ServingBaseline.

    Args:
      serving_model_dir: the Pusher's push destination (its filesystem
        `base_directory`): an absolute path or a URI such as
        `gs://bucket/serving/next_category`.

    Raises:
      ValueError: if `serving_model_dir` is not a string, is empty or is a
        relative path.
    """
    if not isinstance(serving_model_dir, str) or not serving_model_dir.strip():
      raise ValueError(
        f"serving_model_dir must be the Pusher's push destination, a path or URI; got "
        f"{serving_model_dir!r}."
      )
    if "://" not in serving_model_dir and not serving_model_dir.startswith("/"):
      raise ValueError(
        f"serving_model_dir {serving_model_dir!r} is a relative path; pass an absolute path "
        "or a URI such as gs://bucket/serving/model, the same as the Pusher's."
      )
    spec = ServingBaselineSpec(
      serving_model_dir=serving_model_dir,
      baseline_model=types.Channel(type=standard_artifacts.Model),
    )
    super().__init__(spec=spec)
