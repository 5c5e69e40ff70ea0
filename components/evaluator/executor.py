"""TFX's Evaluator executor, evaluating without a baseline when ServingBaseline found none.

TFX's executor (tfx/components/evaluator/executor.py, `Do`) compares with a
baseline when `input_dict["baseline_model"]` is non-empty (`has_baseline`) and
otherwise drops the change thresholds (`update_eval_config_with_defaults(...,
has_baseline=False, rubber_stamp=True)`), blessing on the absolute thresholds
alone. A Resolver that found no blessed model gave it an empty list; the
ServingBaseline step always outputs an artifact, empty when nothing serves, so
this executor turns an empty one back into an empty list.
"""

from typing import Any
from typing import Dict
from typing import List

from absl import logging
from tfx import types
from tfx.components.evaluator import executor as evaluator_executor
from tfx.types import standard_component_specs

from next_category.components.serving_baseline import executor as baseline_executor


class Executor(evaluator_executor.Executor):
  """TFX's Evaluator executor; an empty `baseline_model` means no baseline."""

  def Do(
    self,
    input_dict: Dict[str, List[types.Artifact]],
    output_dict: Dict[str, List[types.Artifact]],
    exec_properties: Dict[str, Any],
  ) -> None:
    key = standard_component_specs.BASELINE_MODEL_KEY
    baselines = input_dict.get(key) or []
    if baselines and not all(baseline_executor.holds_model(b) for b in baselines):
      logging.info(
        "No model is serving yet: evaluating without a baseline, blessing on the absolute "
        "thresholds alone."
      )
      input_dict = {**input_dict, key: []}
    super().Do(input_dict, output_dict, exec_properties)
