"""The AnomalyGate component: data anomalies stop the pipeline before training.

TFX 1.16's ExampleValidator records anomalies but never fails, and does not
compare a span with the previous one. AnomalyGate reads ExampleValidator's
anomalies, measures drift against the previous span with the schema's
comparators, and raises unless every anomaly is of a kind the user tolerates.
Make the Trainer depend on it (`trainer.add_upstream_node(anomaly_gate)`) so
that nothing is trained or pushed from anomalous data.
"""

import json
from typing import Optional
from typing import Sequence

from tfx import types
from tfx.dsl.components.base import base_beam_component
from tfx.dsl.components.base import executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter
from tfx.types.component_spec import ExecutionParameter

from next_category.components.anomaly_gate import anomalies as anomalies_lib
from next_category.components.anomaly_gate import executor
from next_category.components.anomaly_gate import spans


class AnomalyGateSpec(types.ComponentSpec):
  """Inputs, outputs and parameters of AnomalyGate."""

  PARAMETERS = {
    executor.INPUT_BASE_KEY: ExecutionParameter(type=str),
    executor.INPUT_PATTERN_KEY: ExecutionParameter(type=str),
    # A JSON list, as TFX's own components pass lists.
    executor.TOLERATED_ANOMALIES_KEY: ExecutionParameter(type=str),
    executor.REPORT_DIR_KEY: ExecutionParameter(type=str, optional=True),
  }
  INPUTS = {
    executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
    executor.STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
    executor.SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
    executor.ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
  }
  OUTPUTS = {
    executor.VALIDATION_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
  }


class AnomalyGate(base_beam_component.BaseBeamComponent):
  """Fails the run when the data has anomalies the user does not tolerate.

  Example:

    anomaly_gate = AnomalyGate(
        examples=example_gen.outputs["examples"],
        statistics=statistics_gen.outputs["statistics"],
        schema=schema_gen.outputs["schema"],
        anomalies=example_validator.outputs["anomalies"],
        input_base=data_root,
        input_pattern="span-{SPAN}/*",
        tolerated_anomalies=["ENUM_TYPE_UNEXPECTED_STRING_VALUES"])
    trainer.add_upstream_node(anomaly_gate)

  Its `validation` output (ExampleAnomalies) holds the drift anomalies as split
  `drift`, and as custom properties the tolerated kinds, the tolerated
  anomalies, the drift measured per feature and the report paths.
  """

  SPEC_CLASS = AnomalyGateSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(
    self,
    examples: types.BaseChannel,
    statistics: types.BaseChannel,
    schema: types.BaseChannel,
    anomalies: types.BaseChannel,
    input_base: str,
    input_pattern: str = "span-{SPAN}/*",
    tolerated_anomalies: Sequence[str] = (),
    report_dir: Optional[str] = None,
  ):
    """Constructs an AnomalyGate.

    Args:
      examples: ImportExampleGen's examples (the gate reads their span).
      statistics: StatisticsGen's statistics of the examples.
      schema: the curated schema, with `drift_comparator`s.
      anomalies: ExampleValidator's anomalies of the same statistics.
      input_base: the data root ImportExampleGen reads; the previous span is
        read from here to measure drift.
      input_pattern: ImportExampleGen's file pattern, holding `{SPAN}`.
      tolerated_anomalies: anomaly kinds (`AnomalyInfo.Type` names) that do
        not stop the run, for every feature (`KIND`) or one
        (`feature:KIND`). They are still reported.
      report_dir: where to write HTML reports, one directory per pipeline run;
        None writes none.

    Raises:
      ValueError: for an unknown anomaly kind or a pattern without `{SPAN}`.
    """
    tolerated = anomalies_lib.check_tolerated(tolerated_anomalies)
    if input_pattern.count(spans.SPAN_SPEC) != 1:
      raise ValueError(
        f"AnomalyGate finds the previous span through {spans.SPAN_SPEC} in input_pattern, "
        f"which must hold it exactly once; got {input_pattern!r}."
      )
    spec = AnomalyGateSpec(
      examples=examples,
      statistics=statistics,
      schema=schema,
      anomalies=anomalies,
      input_base=input_base,
      input_pattern=input_pattern,
      tolerated_anomalies=json.dumps(tolerated),
      report_dir=report_dir,
      validation=types.Channel(type=standard_artifacts.ExampleAnomalies),
    )
    super().__init__(spec=spec)
