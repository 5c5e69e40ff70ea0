"""The run report: one standalone HTML page of a pipeline run, with plots.

`OUTPUT_ROOT/reports/<run id>/index.html` shows, read back from ML Metadata
and the run's artifacts: the components, the evaluation per slice with the
blessing thresholds, the confusion matrix, the Trainer's curves (from its
TensorBoard events), the feature distributions of train vs eval and of this
span vs the previous one with the drift figures, the int8 TFLite model against
the SavedModel, the baseline model and why the model was or was not blessed,
and the pushed version. Plots are drawn by matplotlib and embedded as base64
PNGs, so the page opens with no network; AnomalyGate's statistics and
anomalies pages sit beside it and are linked.

Features are read from the statistics and the schema, not named here.

    python -m next_category.pipeline.reports.html_report --output_root=artifacts [--run=<run id>]
"""

import argparse
import base64
import contextlib
import dataclasses
import glob
import html
import io
import json
import os
import sys
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import matplotlib

matplotlib.use("Agg")  # No display: draw to PNG only.

import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from next_category.components.trainer import budget as training_budget  # noqa: E402

REPORT_FILE = "index.html"
# Sections of the page, in order: (id, title). Tests check every one.
SECTIONS = (
  ("run", "Run"),
  ("evaluation", "Evaluation per slice"),
  ("confusion", "Confusion matrix"),
  ("training", "Training curves"),
  ("tuning", "Hyperparameter search (Tuner)"),
  ("data", "Feature distributions: train vs eval"),
  ("drift", "This span vs the previous span"),
  ("tflite", "int8 TFLite vs SavedModel"),
  ("blessing", "Blessing and baseline"),
  ("push", "Pushed version"),
)
_ACCURACY = "sparse_categorical_accuracy"
_TOP_3 = "top_3_accuracy"
_EXAMPLE_COUNT = "example_count"
# Categorical features with more values than this show only the most frequent.
_MAX_BARS = 20
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.bad { color: #b00020; font-weight: bold; } .ok { color: #1b5e20; font-weight: bold; }
.muted { color: #777; } nav a { margin-right: 1em; }
"""


@dataclasses.dataclass
class RunData:
  """Everything the report shows, gathered from ML Metadata and the artifacts."""

  summary: Any  # run_summary.RunSummary
  eval_config: Optional[Dict[str, Any]] = None
  validation: Optional[Dict[str, Any]] = None  # tfma ValidationResult as a dict
  confusion: Optional[np.ndarray] = None  # actual x predicted
  class_names: List[str] = dataclasses.field(default_factory=list)
  curves: Dict[str, Dict[str, List[Tuple[int, float]]]] = dataclasses.field(default_factory=dict)
  statistics: Dict[str, Any] = dataclasses.field(default_factory=dict)  # split -> stats
  previous_statistics: Optional[Tuple[int, Any]] = None  # (span, stats)
  schema: Any = None
  tflite_metrics: Optional[Dict[str, Any]] = None
  baseline_uri: Optional[str] = None
  model_uri: Optional[str] = None
  # The Tuner's best values and its trials (tuner_results.json rows), when it ran.
  best_hyperparameters: Optional[Dict[str, Any]] = None
  tuner_trials: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


# --- Gathering ---------------------------------------------------------------


def _first(outputs: Dict[str, list], key: str):
  artifacts = outputs.get(key) or []
  return artifacts[0] if artifacts else None


def _read_statistics(path: str):
  from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
  return stats.datasets[0] if stats.datasets else None


def read_curves(model_run_dir: str) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
  """Scalars of the Trainer's TensorBoard event files: {subdir: {tag: [(step, value)]}}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.util import event_pb2  # pylint: disable=g-import-not-at-top

  curves: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
  for path in sorted(glob.glob(os.path.join(model_run_dir, "*", "events.out.tfevents.*"))):
    run = os.path.basename(os.path.dirname(path))
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name != "scalars":
          continue
        scalar = float(tf.make_ndarray(value.tensor)) if value.HasField("tensor") else None
        if scalar is None:
          scalar = value.simple_value
        curves.setdefault(run, {}).setdefault(value.tag, []).append((event.step, scalar))
  return curves


def _find_matrices(value) -> Optional[list]:
  """The `matrices` of the first multi-class confusion matrix in a TFMA plots dict."""
  if isinstance(value, dict):
    if "matrices" in value:
      return value["matrices"]
    for inner in value.values():
      found = _find_matrices(inner)
      if found:
        return found
  return None


def _confusion_from_plots(result) -> Optional[np.ndarray]:
  """The overall multi-class confusion matrix (actual x predicted), if the evaluation has one."""
  for slice_key, plots in result.plots:
    if slice_key:
      continue
    matrices = _find_matrices(plots)
    if not matrices:
      return None
    entries = matrices[0].get("entries", [])
    if not entries:
      return None
    size = 1 + max(
      max(int(e.get("actualClassId", 0)), int(e.get("predictedClassId", 0))) for e in entries
    )
    matrix = np.zeros((size, size))
    for e in entries:
      # TFMA leaves out class 0 (the proto default) and marks "no prediction" as -1.
      actual, predicted = int(e.get("actualClassId", 0)), int(e.get("predictedClassId", 0))
      if actual >= 0 and predicted >= 0:
        matrix[actual, predicted] = float(e.get("numWeightedExamples", 0))
    return matrix
  return None


def _class_names(schema, label_key: Optional[str], size: int, labels: Sequence[str]) -> List[str]:
  """Names of the label's classes: `labels` (the TFLite model's labels.txt), the schema's
  string domain of the label, else the class ids."""
  if len(labels) >= size:
    return list(labels[:size])
  if schema is not None and label_key:
    for feature in schema.feature:
      if feature.name != label_key:
        continue
      domain = None
      if feature.HasField("string_domain"):
        domain = list(feature.string_domain.value)
      elif feature.domain:
        domain = [d for d in schema.string_domain if d.name == feature.domain]
        domain = list(domain[0].value) if domain else None
      if domain and len(domain) >= size:
        return domain[:size]
  return [str(i) for i in range(size)]


def _read_tuning(best_uri: str, results) -> Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]]]:
  """The Tuner's best values and its trials, from the files TFX's Tuner writes (absent: none)."""
  best, trials = None, []
  with contextlib.suppress(FileNotFoundError):
    with open(os.path.join(best_uri, "best_hyperparameters.txt")) as f:
      best = json.load(f).get("values")
  if results is not None:
    with contextlib.suppress(FileNotFoundError):
      with open(os.path.join(results.uri, "tuner_results.json")) as f:
        trials = json.load(f)
  return best, trials


def gather(connection_config, pipeline_name: str, run_id: Optional[str] = None) -> RunData:
  """Reads a run from ML Metadata (the latest, or `run_id`) and the files its artifacts point to.

  Raises:
    ValueError: if ML Metadata holds no such run.
  """
  # pylint: disable=g-import-not-at-top
  import tensorflow_model_analysis as tfma
  from google.protobuf import json_format
  from google.protobuf import text_format
  from ml_metadata.metadata_store import metadata_store
  from ml_metadata.proto import metadata_store_pb2
  from tensorflow_metadata.proto.v0 import schema_pb2

  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  summary = run_summary.summarize(connection_config, pipeline_name, run_id)
  data = RunData(summary)
  labels: List[str] = []
  store = metadata_store.MetadataStore(connection_config)
  for component in summary.components:
    outputs = component.outputs
    schema = _first(outputs, "schema")
    if schema is not None:
      for path in glob.glob(os.path.join(schema.uri, "*.pbtxt")):
        with open(path) as f:
          data.schema = text_format.Parse(f.read(), schema_pb2.Schema())
    statistics = _first(outputs, "statistics")
    if statistics is not None:
      for path in sorted(glob.glob(os.path.join(statistics.uri, "Split-*", "FeatureStats.pb"))):
        split = os.path.basename(os.path.dirname(path))[len("Split-") :]
        data.statistics[split] = _read_statistics(path)
    validation = _first(outputs, "validation")
    if validation is not None:
      for path in glob.glob(os.path.join(validation.uri, "PreviousSpan-*", "FeatureStats.pb")):
        span = int(os.path.basename(os.path.dirname(path))[len("PreviousSpan-") :])
        data.previous_statistics = (span, _read_statistics(path))
    model_run = _first(outputs, "model_run")
    if model_run is not None:
      data.curves = read_curves(model_run.uri)
    best_hyperparameters = _first(outputs, "best_hyperparameters")
    if best_hyperparameters is not None:
      data.best_hyperparameters, data.tuner_trials = _read_tuning(
        best_hyperparameters.uri, _first(outputs, "tuner_results")
      )
    tflite = _first(outputs, "tflite_model")
    if tflite is not None and os.path.exists(os.path.join(tflite.uri, "metrics.json")):
      with open(os.path.join(tflite.uri, "metrics.json")) as f:
        data.tflite_metrics = json.load(f)
      labels_path = os.path.join(tflite.uri, "labels.txt")
      if os.path.exists(labels_path):
        with open(labels_path) as f:
          labels = [line.strip() for line in f if line.strip()]
    evaluation = _first(outputs, "evaluation")
    if evaluation is not None:
      [execution] = store.get_executions_by_id([component.execution_id])
      if "eval_config" in execution.custom_properties:
        data.eval_config = json.loads(execution.custom_properties["eval_config"].string_value)
      with contextlib.suppress(Exception):  # absent in a failed run
        validation_result = tfma.load_validation_result(evaluation.uri)
        data.validation = json_format.MessageToDict(validation_result)
      with contextlib.suppress(Exception):  # absent in a failed run
        data.confusion = _confusion_from_plots(tfma.load_eval_result(evaluation.uri))
      inputs = [
        e
        for e in store.get_events_by_execution_ids([component.execution_id])
        if e.type == metadata_store_pb2.Event.INPUT
      ]
      for event in inputs:
        key = event.path.steps[0].key if event.path.steps else ""
        [artifact] = store.get_artifacts_by_id([event.artifact_id])
        props = artifact.custom_properties
        # ServingBaseline's artifact is empty (has_model 0) when nothing serves yet.
        if key == "baseline_model" and not (
          "has_model" in props and not props["has_model"].int_value
        ):
          data.baseline_uri = artifact.uri
          if "serving_version" in props:
            data.baseline_uri += (
              f" (serving version {props['serving_version'].int_value}"
              f" from {props['source_path'].string_value})"
            )
        elif key == "model":
          data.model_uri = artifact.uri
  if data.confusion is not None:
    data.class_names = _class_names(
      data.schema, _label_key(data.eval_config), len(data.confusion), labels
    )
  return data


def _label_key(eval_config: Optional[Dict[str, Any]]) -> Optional[str]:
  for spec in (eval_config or {}).get("model_specs", []):
    if spec.get("label_key"):
      return spec["label_key"]
  return None


# --- Drawing -----------------------------------------------------------------


def _png(figure) -> str:
  buffer = io.BytesIO()
  figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
  plt.close(figure)
  return base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(figure, alt: str) -> str:
  return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(figure)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """An HTML table; numbers are right-aligned, text is escaped."""
  out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
  for row in rows:
    cells = []
    for cell in row:
      if isinstance(cell, float):
        cells.append(f'<td class="num">{cell:.4f}</td>')
      elif isinstance(cell, int):
        cells.append(f'<td class="num">{cell:,}</td>')
      else:
        cells.append(f"<td>{html.escape(str(cell))}</td>")
    out.append("<tr>" + "".join(cells) + "</tr>")
  out.append("</table>")
  return "\n".join(out)


def _metric_name(metric: Dict[str, Any]) -> str:
  """The name TFMA reports a MetricConfig's values under.

  The `name` in its JSON config, else its class's default: the class name in
  snake case (Keras's and TFMA's metrics, e.g. SparseCategoricalAccuracy ->
  sparse_categorical_accuracy, as configs of earlier runs name it).
  """
  try:
    name = json.loads("{" + metric.get("config", "") + "}").get("name")
  except json.JSONDecodeError:
    name = None
  if name:
    return name
  class_name = metric.get("class_name", "")
  return "".join(f"_{c.lower()}" if c.isupper() else c for c in class_name).lstrip("_")


def _thresholds(eval_config: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
  """metric name -> {"lower_bound": ..., "change": ...} from the eval config's thresholds."""
  found: Dict[str, Dict[str, float]] = {}
  for spec in (eval_config or {}).get("metrics_specs", []):
    for metric in spec.get("metrics", []):
      name = _metric_name(metric)
      for threshold in [metric.get("threshold")] + [
        t.get("threshold") for t in metric.get("per_slice_thresholds", [])
      ]:
        if not threshold:
          continue
        bounds = found.setdefault(name, {})
        lower = threshold.get("value_threshold", {}).get("lower_bound")
        if lower is not None:
          bounds["lower_bound"] = float(lower)
        change = threshold.get("change_threshold", {}).get("absolute")
        if change is not None:
          bounds["change"] = float(change)
  return found


def _section_run(data: RunData, links: Dict[str, str]) -> str:
  summary = data.summary
  rows = [[c.node_id, c.state, round(c.seconds, 1)] for c in summary.components]
  figure, axis = plt.subplots(figsize=(8, 0.3 * len(rows) + 1))
  names = [r[0] for r in rows][::-1]
  seconds = [r[2] for r in rows][::-1]
  colors = ["#b00020" if r[1] == "FAILED" else "#4c72b0" for r in rows][::-1]
  axis.barh(names, seconds, color=colors)
  axis.set_xlabel("seconds")
  axis.set_title(f"Component times (total {sum(seconds):.1f} s)")
  for y, value in enumerate(seconds):
    axis.text(value, y, f" {value:.1f}", va="center", fontsize=8)
  body = [_table(["component", "state", "seconds"], rows), _img(figure, "component times")]
  if links:
    body.append(
      "<p>Also: "
      + ", ".join(
        f'<a href="{html.escape(href)}">{html.escape(t)}</a>' for t, href in links.items()
      )
      + "</p>"
    )
  return "\n".join(body)


def _section_evaluation(data: RunData) -> str:
  metrics = data.summary.slice_metrics
  if not metrics:
    return '<p class="muted">No evaluation in this run.</p>'
  thresholds = _thresholds(data.eval_config)
  lower = thresholds.get(_ACCURACY, {}).get("lower_bound")
  names = [name for name, _ in metrics]
  accuracy = [values.get(_ACCURACY, np.nan) for _, values in metrics]
  top3 = [values.get(_TOP_3, np.nan) for _, values in metrics]
  counts = [values.get(_EXAMPLE_COUNT, np.nan) for _, values in metrics]
  figure, axis = plt.subplots(figsize=(10, 0.32 * len(names) + 1.5))
  y = np.arange(len(names))
  axis.barh(y + 0.2, accuracy, height=0.4, label="accuracy (top-1)", color="#4c72b0")
  axis.barh(y - 0.2, top3, height=0.4, label="top-3 accuracy", color="#9ecae1")
  if lower is not None:
    axis.axvline(lower, color="#b00020", linestyle="--", label=f"blessing bound {lower:g}")
  axis.set_yticks(
    y, [f"{n}  (n={c:,.0f})" for n, c in zip(names, counts, strict=False)], fontsize=8
  )
  axis.invert_yaxis()
  axis.set_xlim(0, 1)
  axis.set_xlabel("accuracy on the eval split")
  axis.legend(loc="lower right", fontsize=8)
  table = _table(
    ["slice", "examples", "accuracy", "top-3"],
    [
      [n, int(c) if c == c else "", a, t]
      for n, c, a, t in zip(names, counts, accuracy, top3, strict=False)
    ],
  )
  notes = []
  if lower is not None:
    notes.append(f"top-1 accuracy of the whole eval split must be at least {lower:g}")
  change = thresholds.get(_ACCURACY, {}).get("change")
  if change is not None:
    notes.append(f"and at least {change:+g} against the baseline model, when there is one")
  text = f"<p>Blessing: {'; '.join(notes)}.</p>" if notes else ""
  return text + _img(figure, "accuracy and top-3 per slice") + table


def _section_confusion(data: RunData) -> str:
  if data.confusion is None:
    return '<p class="muted">The evaluation has no confusion matrix.</p>'
  names, matrix = data.class_names or [str(i) for i in range(len(data.confusion))], data.confusion
  rows = matrix.sum(axis=1, keepdims=True)
  normalized = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
  figure, axis = plt.subplots(figsize=(7, 6))
  image = axis.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
  axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
  axis.set_yticks(range(len(names)), names, fontsize=8)
  axis.set_xlabel("predicted")
  axis.set_ylabel("actual")
  for i in range(len(names)):
    for j in range(len(names)):
      if normalized[i, j] >= 0.05:
        color = "white" if normalized[i, j] > 0.5 else "black"
        axis.text(
          j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color
        )
  figure.colorbar(image, ax=axis, label="share of the actual class")
  axis.set_title(f"Eval split, {int(matrix.sum()):,} examples (rows sum to 1)")
  return _img(figure, "confusion matrix")


def _series(curves, run: str, suffix: str) -> Optional[List[Tuple[int, float]]]:
  for tag, points in curves.get(run, {}).items():
    if tag.endswith(suffix) and not tag.startswith("epoch_"):
      return sorted(points)
  return None


def _section_training(data: RunData) -> str:
  if not data.curves:
    return '<p class="muted">No TensorBoard events of the Trainer in this run.</p>'
  figure, axes = plt.subplots(1, 2, figsize=(11, 4))
  for axis, metric in zip(axes, ("loss", "accuracy"), strict=False):
    train = _series(data.curves, "train", f"_{metric}")
    validation = _series(data.curves, "validation", f"_{metric}_vs_iterations")
    if not train and validation:
      # A run shorter than the TensorBoard callback's update_freq logs the epoch only.
      epoch = data.curves.get("train", {}).get(f"epoch_{metric}")
      train = [(validation[-1][0], epoch[-1][1])] if epoch else None
    if train:
      axis.plot(
        *zip(*train, strict=False), marker=".", label="training (running mean over the epoch)"
      )
    if validation:
      axis.plot(
        *zip(*validation, strict=False), marker="o", linestyle="--", label="validation (eval split)"
      )
    axis.set_xlabel("step")
    axis.set_title(metric)
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
  training = getattr(data.summary, "training", None)
  stopping = ""
  if training is not None:
    for axis in axes:
      axis.axvline(training["best_step"], color="gray", linestyle=":", label="weights kept")
      axis.legend(fontsize=8)
    stopping = f"<p>{html.escape(training_budget.describe(training))}.</p>"
  rows = []
  for run, tags in sorted(data.curves.items()):
    for tag, points in sorted(tags.items()):
      step, value = sorted(points)[-1]
      rows.append([run, tag, step, float(value)])
  return (
    _img(figure, "training and validation curves")
    + stopping
    + "<p>Last value of every scalar (TensorBoard: <code>make tensorboard</code>):</p>"
    + _table(["run", "tag", "step", "value"], rows)
  )


def _features(dataset) -> Dict[str, Any]:
  return {".".join(f.path.step) or f.name: f for f in dataset.features} if dataset else {}


def _categorical(feature) -> Optional[Dict[str, float]]:
  """value -> share of all values, for string (or categorical int) features."""
  if not feature.HasField("string_stats"):
    return None
  stats = feature.string_stats
  buckets = stats.rank_histogram.buckets or stats.top_values
  counts = {}
  for bucket in buckets:
    label = getattr(bucket, "label", "") or getattr(bucket, "value", "")
    counts[label] = getattr(bucket, "sample_count", 0) or getattr(bucket, "frequency", 0)
  total = sum(counts.values()) or 1.0
  return {k: v / total for k, v in counts.items()}


def _histogram(feature):
  """(edges, shares) of a numeric feature's standard histogram."""
  if not feature.HasField("num_stats"):
    return None
  for histogram in feature.num_stats.histograms:
    if histogram.type == histogram.STANDARD and histogram.buckets:
      edges = [b.low_value for b in histogram.buckets] + [histogram.buckets[-1].high_value]
      counts = np.array([b.sample_count for b in histogram.buckets])
      return np.array(edges), counts / (counts.sum() or 1.0)
  return None


def _values_per_example(feature):
  """Quantiles of the number of values per example (list features only)."""
  which = feature.WhichOneof("stats")
  common = getattr(feature, which).common_stats if which else None
  if common is None or common.max_num_values <= 1:
    return None
  buckets = common.num_values_histogram.buckets
  if not buckets:
    return None
  return np.array([b.high_value for b in buckets])


def l_infinity(a: Dict[str, float], b: Dict[str, float]) -> float:
  """Largest difference of one value's share between two distributions (TFDV's L-infinity)."""
  return max((abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b)), default=0.0)


def _compare_features(datasets: Sequence[Tuple[str, Any]]) -> List[str]:
  """One figure per feature comparing `datasets` ((name, DatasetFeatureStatistics) pairs)."""
  by_name = [(name, _features(ds)) for name, ds in datasets]
  feature_names = sorted({f for _, features in by_name for f in features})
  parts = []
  for feature_name in feature_names:
    present = [
      (name, features[feature_name]) for name, features in by_name if feature_name in features
    ]
    if not present:
      continue
    panels = []
    shares = [(name, _categorical(f)) for name, f in present]
    if all(s is not None for _, s in shares):
      panels.append(("categorical", shares))
    else:
      histograms = [(name, _histogram(f)) for name, f in present]
      if all(h is not None for _, h in histograms):
        panels.append(("histogram", histograms))
    lengths = [(name, _values_per_example(f)) for name, f in present]
    if all(v is not None for _, v in lengths):
      panels.append(("lengths", lengths))
    if not panels:
      continue
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.3), squeeze=False)
    captions = []
    for axis, (kind, series) in zip(axes[0], panels, strict=False):
      width = 0.8 / len(series)
      if kind == "categorical":
        values = sorted({k for _, s in series for k in s}, key=lambda k: -series[0][1].get(k, 0))
        values = values[:_MAX_BARS]
        x = np.arange(len(values))
        for i, (name, share) in enumerate(series):
          axis.bar(x + i * width, [share.get(v, 0) for v in values], width=width, label=name)
        axis.set_xticks(
          x + width * (len(series) - 1) / 2, values, rotation=45, ha="right", fontsize=8
        )
        axis.set_ylabel("share of values")
        if len(series) == 2:
          distance = l_infinity(series[0][1], series[1][1])
          captions.append(f"L-infinity distance {distance:.4f}")
        axis.set_title(f"{feature_name}: value mix")
      elif kind == "histogram":
        for name, (edges, share) in series:
          axis.stairs(share, edges, label=name, linewidth=1.5)
        axis.set_ylabel("share of values")
        axis.set_title(f"{feature_name}: value histogram")
      else:
        for name, quantiles in series:
          axis.plot(
            quantiles,
            np.linspace(0, 1, len(quantiles)),
            marker=".",
            drawstyle="steps-post",
            label=name,
          )
        axis.set_xlabel("values per example")
        axis.set_ylabel("share of examples (cumulative)")
        axis.set_title(f"{feature_name}: values per example")
      axis.legend(fontsize=8)
      axis.grid(alpha=0.3)
    parts.append(f"<h3>{html.escape(feature_name)}</h3>")
    if captions:
      parts.append(f"<p>{html.escape('; '.join(captions))}</p>")
    parts.append(_img(figure, f"{feature_name} distributions"))
  return parts


def _section_data(data: RunData) -> str:
  if not data.statistics:
    return '<p class="muted">No statistics in this run.</p>'
  counts = [[split, int(ds.num_examples)] for split, ds in sorted(data.statistics.items())]
  ordered = sorted(data.statistics.items(), key=lambda kv: (kv[0] != "train", kv[0]))
  return "\n".join([_table(["split", "examples"], counts)] + _compare_features(ordered))


def _section_drift(data: RunData) -> str:
  summary = data.summary
  parts = []
  if summary.drift is None:
    return '<p class="muted">The data gate did not record a drift check in this run.</p>'
  span, previous_span, measurements = summary.drift
  if not previous_span:
    return f"<p>Span {span} is the first span: nothing to compare with.</p>"
  if measurements:
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(measurements) + 1.2))
    labels = [f"{m[0]} ({m[1]})" for m in measurements]
    values = [m[2] for m in measurements]
    limits = [m[3] for m in measurements]
    colors = ["#b00020" if v > t else "#4c72b0" for v, t in zip(values, limits, strict=False)]
    y = np.arange(len(labels))
    axis.barh(y, values, color=colors, label="measured")
    axis.scatter(limits, y, marker="|", s=300, color="black", label="threshold")
    axis.set_yticks(y, labels, fontsize=8)
    axis.set_title(f"Drift of span {span} (train split) against span {previous_span}")
    axis.legend(fontsize=8)
    parts.append(_img(figure, "drift measurements"))
    parts.append(
      _table(
        ["feature", "measure", "value", "threshold", "verdict"],
        [[f, m, float(v), float(t), "OVER" if v > t else "ok"] for f, m, v, t in measurements],
      )
    )
  current = data.statistics.get("train")
  if data.previous_statistics is not None and current is not None:
    previous_span, previous = data.previous_statistics
    parts += _compare_features(
      [(f"span {span} (train)", current), (f"span {previous_span}", previous)]
    )
  return "\n".join(parts)


def _section_tuning(data: RunData) -> str:
  if data.best_hyperparameters is None:
    return '<p class="muted">No Tuner in this run (`make run TUNE=1` adds it).</p>'
  names = sorted(data.best_hyperparameters)
  best = ", ".join(f"{name} {data.best_hyperparameters[name]:g}" for name in names)
  rows = [
    [trial.get("trial_id", ""), float(trial.get("score", float("nan")))]
    # As given (a learning rate of 3e-4 would read 0.0003 as a table number).
    + [f"{trial[name]:g}" if name in trial else "" for name in names]
    for trial in data.tuner_trials
  ]
  return (
    f"<p>The Trainer trained with the best values over the preset's: {html.escape(best)}.</p>"
    + _table(["trial", "eval accuracy"] + names, rows)
  )


def _section_tflite(data: RunData) -> str:
  metrics = data.tflite_metrics
  if not metrics:
    return '<p class="muted">No TFLite conversion in this run.</p>'
  figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  sizes = {k: v for k, v in metrics.get("size_bytes", {}).items() if k.endswith("tflite")}
  axes[0].bar(list(sizes), [v / 1024 for v in sizes.values()], color="#4c72b0")
  axes[0].set_ylabel("KiB")
  axes[0].set_title("model size")
  accuracy = metrics.get("accuracy", {}).get("accuracy", {})
  axes[1].bar(list(accuracy), list(accuracy.values()), color="#55a868")
  low = min(accuracy.values(), default=0)
  axes[1].set_ylim(max(0, low - 0.05), min(1, max(accuracy.values(), default=1) + 0.02))
  axes[1].set_title(f"top-1 accuracy ({metrics.get('accuracy', {}).get('examples', '?')} eval ex.)")
  latency = {
    k: v for k, v in metrics.get("latency", {}).items() if isinstance(v, dict) and "p50_us" in v
  }
  x = np.arange(len(latency))
  axes[2].bar(x - 0.2, [v["p50_us"] for v in latency.values()], width=0.4, label="p50")
  axes[2].bar(x + 0.2, [v["p99_us"] for v in latency.values()], width=0.4, label="p99")
  axes[2].set_xticks(x, list(latency), rotation=30, ha="right", fontsize=7)
  axes[2].set_yscale("log")
  axes[2].set_ylabel("microseconds, one example")
  axes[2].set_title("latency")
  axes[2].legend(fontsize=8)
  for axis in axes[:2]:
    axis.tick_params(axis="x", labelrotation=30, labelsize=7)
  verdict_class = "ok" if metrics.get("blessed") else "bad"
  rows = [
    [name, int(size)]
    for name, size in metrics.get("size_bytes", {}).items()
    if name != "int8_to_float_ratio"
  ]
  return (
    f'<p class="{verdict_class}">{html.escape(str(metrics.get("reason", "")))}</p>'
    + _img(figure, "tflite size latency accuracy")
    + _table(["model", "bytes"], rows)
    + _table(
      ["model", "p50 us", "p99 us", "calls"],
      [[k, float(v["p50_us"]), float(v["p99_us"]), int(v["calls"])] for k, v in latency.items()],
    )
  )


def _section_blessing(data: RunData) -> str:
  summary = data.summary
  if summary.blessed is None:
    return '<p class="muted">The model was not evaluated in this run.</p>'
  parts = [
    f'<p class="{"ok" if summary.blessed else "bad"}">'
    f"Model {'blessed' if summary.blessed else 'NOT blessed'}.</p>"
  ]
  if data.baseline_uri:
    parts.append(f"<p>Baseline model: <code>{html.escape(data.baseline_uri)}</code>.</p>")
  else:
    parts.append("<p>No baseline model: no model was serving or blessed before this run.</p>")
  if data.model_uri:
    parts.append(f"<p>Candidate model: <code>{html.escape(data.model_uri)}</code>.</p>")
  validation = data.validation or {}
  failures = validation.get("metricValidationsPerSlice", [])
  if failures:
    rows = []
    for per_slice in failures:
      key = per_slice.get("sliceKey", {}) or "Overall"
      for failure in per_slice.get("failures", []):
        rows.append(
          [
            json.dumps(key) if key != "Overall" else key,
            failure.get("metricKey", {}).get("name", ""),
            str(failure.get("metricValue", {}).get("doubleValue", "")),
            json.dumps(failure.get("metricThreshold", {})),
            failure.get("message", ""),
          ]
        )
    parts.append("<p>Why not: the thresholds it failed:</p>")
    parts.append(_table(["slice", "metric", "value", "threshold", "message"], rows))
  elif summary.blessed:
    thresholds = _thresholds(data.eval_config).get(_ACCURACY, {})
    overall = dict(summary.slice_metrics).get("Overall", {})
    if "lower_bound" in thresholds and _ACCURACY in overall:
      parts.append(
        f"<p>Why: top-1 accuracy {overall[_ACCURACY]:.4f} on the whole eval split is at least "
        f"{thresholds['lower_bound']:g}"
        + (", and no worse than the baseline's." if data.baseline_uri else ".")
        + "</p>"
      )
  return "\n".join(parts)


def _section_push(data: RunData) -> str:
  summary = data.summary
  parts = []
  if summary.pushed_path:
    parts.append(
      f"<p>SavedModel version <b>{html.escape(str(summary.pushed_version))}</b> pushed to "
      f"<code>{html.escape(summary.pushed_path)}</code>.</p>"
    )
  else:
    parts.append("<p>No SavedModel was pushed in this run.</p>")
  tflite = data.tflite_metrics or {}
  if tflite.get("pushed"):
    parts.append(
      f"<p>int8 TFLite version <b>{html.escape(str(tflite.get('pushed_version')))}</b> shipped to "
      f"<code>{html.escape(str(tflite.get('pushed_destination')))}</code>.</p>"
    )
  return "\n".join(parts)


def render(data: RunData, links: Optional[Dict[str, str]] = None) -> str:
  """The whole page as a string."""
  links = links or {}
  sections = {
    "run": lambda: _section_run(data, links),
    "evaluation": lambda: _section_evaluation(data),
    "confusion": lambda: _section_confusion(data),
    "training": lambda: _section_training(data),
    "tuning": lambda: _section_tuning(data),
    "data": lambda: _section_data(data),
    "drift": lambda: _section_drift(data),
    "tflite": lambda: _section_tflite(data),
    "blessing": lambda: _section_blessing(data),
    "push": lambda: _section_push(data),
  }
  body = []
  for section_id, title in SECTIONS:
    body.append(f'<section id="{section_id}"><h2>{html.escape(title)}</h2>')
    body.append(sections[section_id]())
    body.append("</section>")
  run_id = html.escape(data.summary.run_id)
  nav = " ".join(f'<a href="#{i}">{html.escape(t)}</a>' for i, t in SECTIONS)
  return "\n".join(
    [
      "<!DOCTYPE html>",
      '<html lang="en"><head><meta charset="utf-8">',
      f"<title>Run {run_id}</title>",
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>Run {run_id}</h1>",
      f"<nav>{nav}</nav>",
      *body,
      "</body></html>",
      "",
    ]
  )


def write(data: RunData, reports_dir: str, log_path: Optional[str] = None) -> str:
  """Writes `reports_dir/<run id>/index.html`; returns its path.

  The statistics, drift and anomalies pages the data gate wrote beside it,
  and the log file, are linked.
  """
  run_dir = os.path.join(reports_dir, data.summary.run_id)
  os.makedirs(run_dir, exist_ok=True)
  links = {}
  for name in sorted(os.listdir(run_dir)):
    if name.endswith(".html") and name != REPORT_FILE:
      links[name[: -len(".html")]] = name
  if log_path:
    links["log"] = os.path.relpath(log_path, run_dir)
  path = os.path.join(run_dir, REPORT_FILE)
  page = render(data, links)
  with open(path + ".tmp", "w") as f:
    f.write(page)
  os.replace(path + ".tmp", path)
  return path


def write_for_summary(summary, paths) -> str:
  """Writes the report of the run `summary` describes (the runners call this at the end)."""
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.pipeline import configs

  # pylint: enable=g-import-not-at-top
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata_path)
  data = gather(connection, configs.PIPELINE_NAME, summary.run_id)
  return write(data, paths.reports_dir, summary.log_path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_root", default=None, help="The pipeline's OUTPUT_ROOT.")
  parser.add_argument("--run", default=None, help="The run id (default: the latest run).")
  args = parser.parse_args(argv)
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.pipeline import configs
  from next_category.pipeline.run import runner_flags

  # pylint: enable=g-import-not-at-top
  paths = runner_flags.RunPaths(os.path.abspath(args.output_root or configs.OUTPUT_ROOT))
  if not os.path.exists(paths.metadata_path):
    print(
      f"ERROR: no ML Metadata at {paths.metadata_path}; run the pipeline first.", file=sys.stderr
    )
    return 2
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(paths.metadata_path)
  try:
    data = gather(connection, configs.PIPELINE_NAME, args.run)
  except ValueError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  logs = sorted(glob.glob(os.path.join(paths.output_root, "logs", f"{data.summary.run_id}.log")))
  print(write(data, paths.reports_dir, logs[0] if logs else None))
  return 0


if __name__ == "__main__":
  sys.exit(main())
