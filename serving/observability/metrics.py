"""Prometheus metrics, written exactly as TensorFlow Serving 2.16 writes them.

TensorFlow Serving keeps its metrics in TensorFlow's monitoring registry and
`PrometheusExporter::GeneratePage` (tensorflow_serving/util/prometheus_exporter.cc:
the line numbers below are of tag 2.16.1) turns them into text: metrics in
the order of their TensorFlow names, a `# TYPE` line each and no `# HELP`;
names with every character outside `[a-zA-Z0-9_]` made `:`
(`/tensorflow/serving/request_count` -> `:tensorflow:serving:request_count`,
no `_total`, no `_created`); label values with `\\` and `"` escaped; `{}`
when a metric has no labels; integer counters; histograms with TensorFlow's
bucket limits written as `absl::StrCat` writes a double (six significant
digits, `%g`), the last one `+Inf`, and TensorFlow's bucket semantics: a
value goes to the first bucket whose limit is *above* it (`std::upper_bound`),
so `le="10"` does not count a 10 (prometheus_exporter_test.cc:62-88).

The metrics are those TensorFlow Serving registers that this server can
produce honestly (see `ServingMetrics`), plus three of its own, named in the
same namespace and marked below. The exposition is written here rather than
with prometheus_client, whose format differs (HELP lines, `_total`,
`_created`, float counters); recording a request takes one lock and a few
dictionary lookups.
"""

import bisect
import math
import threading
from typing import Dict
from typing import FrozenSet
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

from tensorflow_serving.apis import get_model_status_pb2

_State = get_model_status_pb2.ModelVersionStatus.State

# Requests naming a model the server does not serve are counted under this
# label: a client's model names never become label values (memory, scrapes).
UNKNOWN_MODEL = "<unknown>"
# TensorFlow Serving counts and times these gRPC calls (prediction_service_impl.cc:52-59,
# 92-99, 121-128); MultiInference, GetModelMetadata and GetModelStatus are not counted.
_GRPC_COUNTED_APIS = frozenset(("Predict", "Classify", "Regress"))
# Its REST latency's API label is the URL's verb; "" for status and metadata
# (http_server.cc:194-196; http_rest_api_handler.cc captures the verb).
_REST_API_LABELS = {"Predict": "predict", "Classify": "classify", "Regress": "regress"}
# runtime_latency's `runtime` label: "TF1" for every SavedModel session (predict_util.cc:111-113).
_RUNTIME = "TF1"


def exponential_buckets(scale: float, growth_factor: float, bucket_count: int) -> Tuple[float, ...]:
  """TensorFlow's `monitoring::Buckets::Exponential` limits, without the last one (DBL_MAX)."""
  limits = []
  bound = scale
  for _ in range(bucket_count):
    limits.append(bound)
    bound *= growth_factor
  return tuple(limits)


# "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)", in microseconds
# (servables/tensorflow/util.cc:70-89, saved_model_warmup_util.cc:40-47).
LATENCY_BUCKETS = exponential_buckets(10, 1.8, 33)
# Batch sizes: Exponential(1, 2, 14) (batching/batching_util.h:117-153).
BATCH_SIZE_BUCKETS = exponential_buckets(1, 2, 14)


def _number(value: float) -> str:
  """A double as `absl::StrCat` writes it: six significant digits."""
  if math.isinf(value):
    return "inf" if value > 0 else "-inf"
  return "%.6g" % value


def _label_value(value: str) -> str:
  return value.replace("\\", "\\\\").replace('"', '\\"')


def _label_name(name: str) -> str:
  sanitized = "".join(c if c.isascii() and c.isalnum() else "_" for c in name)
  return "_" + sanitized if sanitized[:1].isdigit() else sanitized


def prometheus_name(tf_name: str) -> str:
  """A TensorFlow metric name as Prometheus sees it (prometheus_exporter.cc:53-63)."""
  sanitized = "".join(c if (c.isascii() and c.isalnum()) or c == "_" else ":" for c in tf_name)
  return "_" + sanitized if sanitized[:1].isdigit() else sanitized


class _Metric:
  """One metric: its cells by label values. Its owner's lock guards `cells`."""

  kind = ""

  def __init__(self, tf_name: str, label_names: Sequence[str]):
    self.tf_name = tf_name
    self.name = prometheus_name(tf_name)
    self.label_names = tuple(_label_name(name) for name in label_names)
    self.cells: Dict[Tuple[str, ...], list] = {}

  def _labels(self, values: Tuple[str, ...]) -> List[str]:
    return [f'{n}="{_label_value(v)}"' for n, v in zip(self.label_names, values, strict=True)]

  def lines(self, cells: List[Tuple[Tuple[str, ...], list]]) -> List[str]:
    """The metric's lines, from a snapshot of its cells."""
    raise NotImplementedError


class Counter(_Metric):
  """A cumulative int64 (TensorFlow's `monitoring::Counter`)."""

  kind = "counter"

  def increment(self, labels: Tuple[str, ...], amount: int = 1) -> None:
    cell = self.cells.get(labels)
    if cell is None:
      cell = self.cells[labels] = [0]
    cell[0] += amount

  def lines(self, cells: List[Tuple[Tuple[str, ...], list]]) -> List[str]:
    # SerializeScalar (prometheus_exporter.cc:113-142).
    lines = [f"# TYPE {self.name} {self.kind}"]
    for values, cell in sorted(cells):
      lines.append(f"{self.name}{{{','.join(self._labels(values))}}} {int(cell[0])}")
    return lines


class Gauge(Counter):
  """An int64 gauge (TensorFlow's `monitoring::Gauge<int64_t>`)."""

  kind = "gauge"

  def set(self, labels: Tuple[str, ...], value: int) -> None:
    self.cells[labels] = [value]


class Histogram(_Metric):
  """A distribution (TensorFlow's `monitoring::Sampler`) with TensorFlow's buckets."""

  kind = "histogram"

  def __init__(self, tf_name: str, label_names: Sequence[str], limits: Sequence[float]):
    super().__init__(tf_name, label_names)
    self.limits = tuple(limits)

  def observe(self, labels: Tuple[str, ...], value: float) -> None:
    cell = self.cells.get(labels)
    if cell is None:
      # Bucket counts (the limits' and DBL_MAX's), then the sum.
      cell = self.cells[labels] = [0] * (len(self.limits) + 1) + [0.0]
    # TensorFlow's Histogram::Add: the first bucket whose limit is above the value.
    cell[bisect.bisect_right(self.limits, value)] += 1
    cell[-1] += value

  def lines(self, cells: List[Tuple[Tuple[str, ...], list]]) -> List[str]:
    # SerializeHistogram (prometheus_exporter.cc:65-111).
    lines = [f"# TYPE {self.name} histogram"]
    for values, cell in sorted(cells):
      labels = ",".join(self._labels(values))
      prefix = f"{self.name}_bucket{{{labels}{',' if labels else ''}"
      cumulative = 0
      for i, limit in enumerate(self.limits + (None,)):
        cumulative += cell[i]
        bound = "+Inf" if limit is None else _number(limit)
        lines.append(f'{prefix}le="{bound}"}} {cumulative}')
      lines.append(f"{self.name}_sum{{{labels}}} {_number(cell[-1])}")
      lines.append(f"{self.name}_count{{{labels}}} {cumulative}")
    return lines


class ServingMetrics:
  """The server's metrics (one set per server) and their Prometheus page.

  TensorFlow Serving's, with what records them there and here:

  - `/tensorflow/serving/request_count` {model_name, status}: every gRPC
    Predict, Classify and Regress and every REST `/v1/` request
    (servables/tensorflow/util.cc:66-68, 117-122).
  - `/tensorflow/serving/request_latency` {model_name, API, entrypoint}: the
    same requests that succeeded, in microseconds (util.cc:80-89).
  - `/tensorflow/serving/runtime_latency` {model_name, API, runtime}: from
    handing a request to the model to its outputs (batching queue included,
    as a BatchingSession's Run includes it), runtime "TF1" (util.cc:70-78).
  - `/tensorflow/serving/model_warmup_latency` {model_path, status}: each
    warmed-up version (saved_model_warmup_util.cc:40-47, 213-224).
  - `/tensorflow/cc/saved_model/load_attempt_count` {model_path, status} and
    `load_latency` {model_path}, in microseconds: each SavedModel load
    (TensorFlow's tensorflow/cc/saved_model/loader.cc, which TensorFlow
    Serving's loads go through; status "success" or "fail").
  - `/tensorflow/serving/batching_session/processed_batch_size` {},
    `padding_size` {execution_batch_size} and `wrapped_run_count` {}: each
    batch (batching/batching_util.h:117-153, batching_session.cc:66-68);
    the first two appear with the first batch, as function-local statics do
    there.

  This server's own: `/tensorflow/serving/model_version_loaded` {model_name,
  model_version} (a gauge, 1 while a version serves),
  `/tensorflow/serving/model_verification_failure_count` {model_name} and
  `/tensorflow/serving/log_records_dropped` {log, reason}.

  Attributes:
    known_models: the model names that are label values as they are; others
      are counted as `UNKNOWN_MODEL`.
  """

  def __init__(self, known_models: FrozenSet[str] = frozenset()):
    self.known_models = frozenset(known_models)
    self._lock = threading.Lock()
    self._metrics: Dict[str, _Metric] = {}
    self._request_count = self.register(
      Counter("/tensorflow/serving/request_count", ("model_name", "status"))
    )
    self._request_latency = self.register(
      Histogram(
        "/tensorflow/serving/request_latency", ("model_name", "API", "entrypoint"), LATENCY_BUCKETS
      )
    )
    self._runtime_latency = self.register(
      Histogram(
        "/tensorflow/serving/runtime_latency", ("model_name", "API", "runtime"), LATENCY_BUCKETS
      )
    )
    self._warmup_latency = self.register(
      Histogram(
        "/tensorflow/serving/model_warmup_latency", ("model_path", "status"), LATENCY_BUCKETS
      )
    )
    self._load_attempts = self.register(
      Counter("/tensorflow/cc/saved_model/load_attempt_count", ("model_path", "status"))
    )
    self._load_latency = self.register(
      Counter("/tensorflow/cc/saved_model/load_latency", ("model_path",))
    )
    self._wrapped_runs = self.register(
      Counter("/tensorflow/serving/batching_session/wrapped_run_count", ())
    )
    self._processed_batch_size: Optional[Histogram] = None
    self._padding_size: Optional[Histogram] = None
    self._loaded = self.register(
      Gauge("/tensorflow/serving/model_version_loaded", ("model_name", "model_version"))
    )
    self._verification_failures = self.register(
      Counter("/tensorflow/serving/model_verification_failure_count", ("model_name",))
    )
    self._dropped = self.register(
      Counter("/tensorflow/serving/log_records_dropped", ("log", "reason"))
    )

  def register(self, metric: _Metric) -> _Metric:
    """Adds a metric to the page (TensorFlow's metrics register themselves so)."""
    with self._lock:
      self._metrics[metric.tf_name] = metric
    return metric

  def record_request(
    self,
    model_name: str,
    api: str,
    entrypoint: str,
    status: str,
    latency_seconds: float,
    runtime_seconds: float = 0.0,
  ) -> None:
    """Counts and times one finished request as TensorFlow Serving does.

    Args:
      model_name: the model the request named.
      api: "Predict", "Classify", "Regress", "GetModelMetadata", ...
      entrypoint: "GRPC" or "REST".
      status: the status code's name ("OK", "NOT_FOUND", ...).
      latency_seconds: from the request's arrival to its response.
      runtime_seconds: the model's part of it (0: the model did not run).
    """
    if entrypoint == "GRPC":
      if api not in _GRPC_COUNTED_APIS:
        return
      latency_api = api
    else:
      latency_api = _REST_API_LABELS.get(api, "")
    if model_name not in self.known_models and model_name:
      model_name = UNKNOWN_MODEL
    with self._lock:
      self._request_count.increment((model_name, status))
      if status == "OK":
        self._request_latency.observe((model_name, latency_api, entrypoint), latency_seconds * 1e6)
        if runtime_seconds > 0:
          self._runtime_latency.observe((model_name, api, _RUNTIME), runtime_seconds * 1e6)

  def record_warmup(self, model_path: str, status: str, seconds: float) -> None:
    """A version's warmup (`warmup.replay_warmup_requests`' `on_warmed_up`)."""
    with self._lock:
      self._warmup_latency.observe((model_path, status), seconds * 1e6)

  def record_saved_model_load(self, model_path: str, succeeded: bool, seconds: float) -> None:
    """A SavedModel load (`loader.load_servable`'s `on_saved_model_load`)."""
    with self._lock:
      self._load_attempts.increment((model_path, "success" if succeeded else "fail"))
      self._load_latency.increment((model_path,), int(seconds * 1e6))

  def record_verification_failure(self, model_name: str) -> None:
    with self._lock:
      self._verification_failures.increment((model_name,))

  def record_dropped(self, log: str, reason: str) -> None:
    """Counts a log record that could not be written (the request itself succeeded)."""
    with self._lock:
      self._dropped.increment((log, reason))

  def batch_observer(self, model_name: str, model_version: int):
    """A `BatchObserver` recording a version's batches (TensorFlow Serving's are not per model)."""

    def observe(size: int, padding_rows: int) -> None:
      processed = size + padding_rows
      with self._lock:
        if self._processed_batch_size is None:
          self._padding_size = Histogram(
            "/tensorflow/serving/batching_session/padding_size",
            ("execution_batch_size",),
            BATCH_SIZE_BUCKETS,
          )
          self._processed_batch_size = Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size", (), BATCH_SIZE_BUCKETS
          )
          for metric in (self._padding_size, self._processed_batch_size):
            self._metrics[metric.tf_name] = metric
        self._padding_size.observe((str(processed),), padding_rows)
        self._processed_batch_size.observe((), processed)
        self._wrapped_runs.increment(())

    return observe

  def observe_state(self, model_name: str, model_version: int, state: int, error) -> None:
    """A `model_manager.StateObserver` keeping the loaded-versions gauge."""
    labels = (model_name, str(model_version))
    with self._lock:
      if state == _State.AVAILABLE:
        self._loaded.set(labels, 1)
      elif state in (_State.UNLOADING, _State.END) and labels in self._loaded.cells:
        self._loaded.set(labels, 0)

  def exposition(self) -> bytes:
    """The Prometheus page (`PrometheusExporter::GeneratePage`, prometheus_exporter.cc:162-190)."""
    with self._lock:
      snapshot = [
        (metric, [(labels, list(cell)) for labels, cell in metric.cells.items()])
        for _, metric in sorted(self._metrics.items())
      ]
    lines = []
    for metric, cells in snapshot:
      lines.extend(metric.lines(cells))
    return ("\n".join(lines) + "\n").encode("utf-8")
