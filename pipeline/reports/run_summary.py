"""A short report of one pipeline run, read back from ML Metadata.

The runners print it at the end of `make run`: which components ran (or came
from cache) and how long they took, where training stopped, the data
anomalies, the evaluation metrics per slice, whether the model was blessed,
and where it was pushed.
"""

import dataclasses
import json
import os
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_metadata.proto.v0 import anomalies_pb2

from next_category.components.trainer import budget as training_budget

_STATE_NAMES = metadata_store_pb2.Execution.State.Name


@dataclasses.dataclass
class ComponentRun:
  """One component's execution in a run."""

  node_id: str
  state: str  # COMPLETE, CACHED, FAILED, RUNNING, ...
  seconds: float
  outputs: Dict[str, List[metadata_store_pb2.Artifact]]
  execution_id: int = 0


@dataclasses.dataclass
class RunSummary:
  """What one pipeline run did, as recorded in ML Metadata."""

  run_id: str
  components: List[ComponentRun]
  anomalies: Dict[str, List[Tuple[str, str, str]]]  # split -> (feature, kind, description)
  slice_metrics: List[Tuple[str, Dict[str, float]]]
  blessed: Optional[bool]
  pushed_path: Optional[str]
  pushed_version: Optional[str]
  # AnomalyGate's record, when it finished: the kinds the run tolerated,
  # (span, previous span or 0, [(feature, measure, value, threshold)]) of the
  # drift check, and the HTML reports.
  tolerated_kinds: List[str] = dataclasses.field(default_factory=list)
  drift: Optional[Tuple[int, int, List[Tuple[str, str, float, float]]]] = None
  reports: List[str] = dataclasses.field(default_factory=list)
  # InfraValidator's verdict: (blessed, reason with its latency), when it ran.
  infra_validation: Optional[Tuple[bool, str]] = None
  # The model was the version serving already: the Pusher copied nothing.
  already_pushed: bool = False
  # Set by the runner: the run's log file and its HTML run report.
  log_path: Optional[str] = None
  run_report: Optional[str] = None
  # The Trainer's stopping point (`budget.StoppingPoint.as_dict`), when it wrote one.
  training: Optional[Dict[str, Any]] = None

  def component(self, node_id: str) -> Optional[ComponentRun]:
    for run in self.components:
      if run.node_id == node_id:
        return run
    return None


def _run_contexts(store, pipeline_name: str) -> List[metadata_store_pb2.Context]:
  """The pipeline's runs, oldest first."""
  pipeline_contexts = [c for c in store.get_contexts_by_type("pipeline") if c.name == pipeline_name]
  if not pipeline_contexts:
    raise ValueError(f"ML Metadata has no pipeline named {pipeline_name!r}.")
  pipeline_executions = {e.id for e in store.get_executions_by_context(pipeline_contexts[0].id)}
  runs = []
  for context in store.get_contexts_by_type("pipeline_run"):
    executions = store.get_executions_by_context(context.id)
    if any(e.id in pipeline_executions for e in executions):
      runs.append(context)
  return sorted(runs, key=lambda c: (c.create_time_since_epoch, c.id))


def run_ids(
  connection_config: metadata_store_pb2.ConnectionConfig, pipeline_name: str
) -> List[str]:
  """The ids of every run of `pipeline_name` in ML Metadata, oldest first."""
  return [
    c.name for c in _run_contexts(metadata_store.MetadataStore(connection_config), pipeline_name)
  ]


def _latest_run_context(store, pipeline_name: str) -> metadata_store_pb2.Context:
  runs = _run_contexts(store, pipeline_name)
  if not runs:
    raise ValueError(f"ML Metadata has no run of pipeline {pipeline_name!r}.")
  return runs[-1]


def _node_id(store, node_type_id: int, execution_id: int) -> str:
  for context in store.get_contexts_by_execution(execution_id):
    if context.type_id == node_type_id:
      # Node contexts are named "<pipeline>.<node id>".
      return context.name.split(".", 1)[-1]
  return str(execution_id)


def _outputs(store, execution_id: int) -> Dict[str, List[metadata_store_pb2.Artifact]]:
  events = [
    e
    for e in store.get_events_by_execution_ids([execution_id])
    if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
  ]
  artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
  outputs: Dict[str, List[metadata_store_pb2.Artifact]] = {}
  for event in events:
    key = event.path.steps[0].key if event.path.steps else "output"
    outputs.setdefault(key, []).append(artifacts[event.artifact_id])
  return outputs


def _read_anomalies(artifact) -> Dict[str, List[Tuple[str, str, str]]]:
  found = {}
  for split_dir in sorted(tf.io.gfile.glob(os.path.join(artifact.uri, "Split-*"))):
    split = os.path.basename(split_dir)[len("Split-") :]
    path = os.path.join(split_dir, "SchemaDiff.pb")
    if not tf.io.gfile.exists(path):
      continue
    anomalies = anomalies_pb2.Anomalies.FromString(tf.io.gfile.GFile(path, "rb").read())
    rows = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
      for reason in info.reason:
        kind = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
        rows.append((feature, kind, reason.short_description))
    for reason in anomalies.dataset_anomaly_info.reason:
      rows.append(
        ("(dataset)", anomalies_pb2.AnomalyInfo.Type.Name(reason.type), reason.short_description)
      )
    found[split] = rows
  return found


def _slice_name(slice_key) -> str:
  if not slice_key:
    return "Overall"
  return ", ".join(f"{k}={v.decode() if isinstance(v, bytes) else v}" for k, v in slice_key)


def _read_slice_metrics(artifact) -> List[Tuple[str, Dict[str, float]]]:
  # Imported here: TFMA is heavy and only needed once an evaluation exists.
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

  result = tfma.load_eval_result(artifact.uri)
  rows = []
  for slice_key, metrics in result.slicing_metrics:
    values = {}
    for sub_metrics in metrics.values():
      for by_sub_key in sub_metrics.values():
        for name, value in by_sub_key.items():
          if isinstance(value, dict) and "doubleValue" in value:
            values[name] = value["doubleValue"]
    rows.append((_slice_name(slice_key), values))
  return sorted(rows, key=lambda r: (r[0] != "Overall", r[0].count(","), r[0]))


def summarize(
  connection_config: metadata_store_pb2.ConnectionConfig,
  pipeline_name: str,
  run_id: Optional[str] = None,
) -> RunSummary:
  """Reads the latest run of `pipeline_name` (or its run `run_id`) from ML Metadata.

  Raises:
    ValueError: if ML Metadata holds no run of the pipeline, or none named
      `run_id`.
  """
  store = metadata_store.MetadataStore(connection_config)
  if run_id is None:
    run_context = _latest_run_context(store, pipeline_name)
  else:
    runs = _run_contexts(store, pipeline_name)
    matching = [c for c in runs if c.name == run_id]
    if not matching:
      latest = ", ".join(c.name for c in runs[-5:]) or "none"
      raise ValueError(
        f"ML Metadata has no run {run_id!r} of pipeline {pipeline_name!r}; the latest: {latest}."
      )
    run_context = matching[0]
  node_type_id = store.get_context_type("node").id
  components = []
  for execution in sorted(
    store.get_executions_by_context(run_context.id), key=lambda e: (e.create_time_since_epoch, e.id)
  ):
    seconds = (execution.last_update_time_since_epoch - execution.create_time_since_epoch) / 1000.0
    components.append(
      ComponentRun(
        node_id=_node_id(store, node_type_id, execution.id),
        state=_STATE_NAMES(execution.last_known_state),
        seconds=seconds,
        outputs=_outputs(store, execution.id),
        execution_id=execution.id,
      )
    )
  summary = RunSummary(run_context.name, components, {}, [], None, None, None)
  infra_blessing_types = {t.id for t in store.get_artifact_types() if t.name == "InfraBlessing"}
  for run in components:
    for artifact in run.outputs.get("anomalies", []):
      summary.anomalies.update(_read_anomalies(artifact))
    for artifact in run.outputs.get("validation", []):
      # AnomalyGate's: drift anomalies as split "drift", and its record.
      summary.anomalies.update(_read_anomalies(artifact))
      props = artifact.custom_properties
      summary.tolerated_kinds = json.loads(props["tolerated_anomalies"].string_value)
      summary.drift = (
        artifact.properties["span"].int_value,
        props["previous_span"].int_value,
        [tuple(m) for m in json.loads(props["drift"].string_value)],
      )
      summary.reports = json.loads(props["reports"].string_value)
    for artifact in run.outputs.get("model_run", []):
      path = os.path.join(artifact.uri, training_budget.STOPPING_POINT_FILE)
      if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
          summary.training = json.load(f)
    for artifact in run.outputs.get("evaluation", []):
      summary.slice_metrics = _read_slice_metrics(artifact)
    for artifact in run.outputs.get("blessing", []):
      props = artifact.custom_properties
      if artifact.type_id in infra_blessing_types and "blessed" in props:
        reason = props["reason"].string_value if "reason" in props else ""
        summary.infra_validation = (bool(props["blessed"].int_value), reason)
      elif "blessed" in artifact.custom_properties:
        summary.blessed = bool(artifact.custom_properties["blessed"].int_value)
    for artifact in run.outputs.get("pushed_model", []):
      props = artifact.custom_properties
      if props.get("pushed") and props["pushed"].int_value:
        summary.pushed_path = props["pushed_destination"].string_value
        summary.pushed_version = props["pushed_version"].string_value
        summary.already_pushed = bool(
          props.get("already_pushed") and props["already_pushed"].int_value
        )
  return summary


def gate_verdict(validation: metadata_store_pb2.Artifact) -> str:
  """The data gate's verdict, in one line, from its `validation` artifact."""
  props = validation.custom_properties
  tolerated = json.loads(props["tolerated"].string_value) if "tolerated" in props else []
  blocking = props["blocking"].int_value if "blocking" in props else 0
  parts = [
    f"{blocking} blocking anomalies" if blocking else "no blocking anomalies",
  ]
  if tolerated:
    parts.append(f"{len(tolerated)} tolerated ({'; '.join(tolerated)[:120]})")
  previous = props["previous_span"].int_value if "previous_span" in props else 0
  span = validation.properties["span"].int_value if "span" in validation.properties else 0
  if previous:
    drift = json.loads(props["drift"].string_value) if "drift" in props else []
    over = [m[0] for m in drift if m[2] > m[3]]
    parts.append(
      f"drift of span {span} against span {previous}: "
      + (f"over the threshold for {', '.join(over)}" if over else f"{len(drift)} measures within")
    )
  else:
    parts.append(f"span {span} is the first span, no drift check")
  verdict = "STOPPED the run" if blocking else "passed"
  return f"Data gate {verdict}: {'; '.join(parts)}"


class ComponentStates:
  """Reads how each component ended from ML Metadata, for the console's lines."""

  def __init__(self, connection_config: metadata_store_pb2.ConnectionConfig, pipeline_name: str):
    self._connection_config = connection_config
    self._pipeline_name = pipeline_name

  def describe_end(self, node_id: str, execution_info) -> Tuple[str, str]:
    """The state of the execution TFX's launcher returned, and the gate's verdict for the gate.

    Args:
      node_id: the component's id.
      execution_info: what `Launcher.launch` returned (None if not run).

    Returns:
      `(state, detail)`: e.g. ("CACHED", "").
    """
    execution_id = getattr(execution_info, "execution_id", None)
    if execution_id is None:
      return "SKIPPED", ""
    store = metadata_store.MetadataStore(self._connection_config)
    [execution] = store.get_executions_by_id([execution_id])
    state = _STATE_NAMES(execution.last_known_state)
    detail = ""
    for artifact in _outputs(store, execution_id).get("validation", []):
      detail = gate_verdict(artifact)
    return state, detail


def format_summary(summary: RunSummary) -> str:
  """Renders a summary as the plain-text report `make run` prints."""
  lines = [f"Run {summary.run_id}", "", "Components:"]
  for run in summary.components:
    lines.append(f"  {run.node_id:<32} {run.state:<9} {run.seconds:7.1f} s")
  if summary.training is not None:
    lines += ["", f"Training: {training_budget.describe(summary.training)}"]
  lines.append("")
  total = sum(len(rows) for rows in summary.anomalies.values())
  lines.append(f"Data anomalies: {total if summary.anomalies else 'not checked'}")
  for split, rows in sorted(summary.anomalies.items()):
    for feature, kind, description in rows:
      tolerated = kind in summary.tolerated_kinds or f"{feature}:{kind}" in summary.tolerated_kinds
      lines.append(
        f"  [{split}] {feature}: {kind}: {description}{' (tolerated)' if tolerated else ''}"
      )
  if summary.tolerated_kinds:
    lines.append(f"Tolerated anomaly kinds: {', '.join(summary.tolerated_kinds)}")
  gate = summary.component("AnomalyGate")
  if gate is not None and gate.state == "FAILED":
    lines.append("Drift and AnomalyGate's verdict: the gate stopped the run, see the end.")
  if summary.drift is not None:
    span, previous_span, measurements = summary.drift
    if not previous_span:
      lines.append(f"Drift: span {span} is the first span, nothing to compare with")
    else:
      lines.append(f"Drift: span {span} (train split) against span {previous_span}:")
      for feature, measure, value, threshold in measurements:
        verdict = "OVER" if value > threshold else "ok"
        lines.append(
          f"  {feature:<14} {measure:<26} {value:9.6f}  threshold {threshold:g}  {verdict}"
        )
  if summary.slice_metrics:
    lines += [
      "",
      "Evaluation (eval split):",
      f"  {'slice':<44} {'examples':>9} {'accuracy':>9} {'top-3':>7}",
    ]
    for name, values in summary.slice_metrics:
      lines.append(
        f"  {name:<44} {values.get('example_count', float('nan')):>9.0f} "
        f"{values.get('sparse_categorical_accuracy', float('nan')):>9.4f} "
        f"{values.get('top_3_accuracy', float('nan')):>7.4f}"
      )
  lines.append("")
  if summary.blessed is None:
    lines.append("Model blessed: not evaluated")
  else:
    lines.append(f"Model blessed: {'yes' if summary.blessed else 'no'}")
  if summary.infra_validation is not None:
    infra_blessed, reason = summary.infra_validation
    lines.append(
      f"Canary (InfraValidator): {reason or ('blessed' if infra_blessed else 'not blessed')}"
    )
  if summary.pushed_path:
    already = ", already serving: not copied again" if summary.already_pushed else ""
    lines.append(f"Pushed: {summary.pushed_path} (version {summary.pushed_version}{already})")
  else:
    lines.append("Pushed: nothing")
  if summary.reports:
    lines += ["", "Reports:"] + [f"  {path}" for path in summary.reports]
  if summary.run_report:
    lines += ["", f"Run report: {summary.run_report}"]
  if summary.log_path:
    lines.append(f"Log: {summary.log_path}")
  return "\n".join(lines)
