"""Prometheus metrics of the model server, named as TensorFlow Serving names them.

Exposed on the REST port at the path of the `--monitoring_config_file`
(`/monitoring/prometheus/metrics` by default). Latencies are in microseconds,
as TensorFlow Serving reports them.
"""

from typing import Dict
from typing import FrozenSet

import prometheus_client
from tensorflow_serving.apis import get_model_status_pb2

_State = get_model_status_pb2.ModelVersionStatus.State

_LATENCY_BUCKETS_MICROS = (
  100,
  250,
  500,
  1_000,
  2_500,
  5_000,
  10_000,
  25_000,
  50_000,
  100_000,
  250_000,
  500_000,
  1_000_000,
  2_500_000,
  5_000_000,
  10_000_000,
)
# Requests naming a model the server does not know are counted under this
# label: a client's model names never become label values (memory, scrapes).
UNKNOWN_MODEL = "<unknown>"
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServingMetrics:
  """The server's metrics, in a registry of their own (one per server)."""

  def __init__(self, known_models: FrozenSet[str] = frozenset()):
    self.registry = prometheus_client.CollectorRegistry(auto_describe=True)
    self.known_models = frozenset(known_models)
    self._request_children: Dict[tuple, tuple] = {}
    self._requests = prometheus_client.Counter(
      ":tensorflow:serving:request_count",
      "Requests by model, version, API, entrypoint (GRPC or REST) and status.",
      ["model_name", "model_version", "API", "entrypoint", "status"],
      registry=self.registry,
    )
    self._latency = prometheus_client.Histogram(
      ":tensorflow:serving:request_latency",
      "Request latency in microseconds, by model, API and entrypoint.",
      ["model_name", "API", "entrypoint"],
      buckets=_LATENCY_BUCKETS_MICROS,
      registry=self.registry,
    )
    self._batch_size = prometheus_client.Histogram(
      ":tensorflow:serving:batching_session:processed_batch_size",
      "Examples per processed batch (padding included).",
      ["model_name", "model_version"],
      buckets=_BATCH_SIZE_BUCKETS,
      registry=self.registry,
    )
    self._padding = prometheus_client.Histogram(
      ":tensorflow:serving:batching_session:padding_size",
      "Padding rows added to reach an allowed batch size.",
      ["model_name", "model_version"],
      buckets=(0,) + _BATCH_SIZE_BUCKETS,
      registry=self.registry,
    )
    self._loaded = prometheus_client.Gauge(
      ":tensorflow:serving:model_version_loaded",
      "1 for each model version that is loaded and serving.",
      ["model_name", "model_version"],
      registry=self.registry,
    )
    self._loads = prometheus_client.Counter(
      ":tensorflow:cc:saved_model:load_attempt_count",
      "Model version load attempts by status.",
      ["model_name", "model_version", "status"],
      registry=self.registry,
    )
    self._verification_failures = prometheus_client.Counter(
      ":tensorflow:serving:model_verification_failure_count",
      "Model versions refused: their signature did not verify (--model_verification_key_file).",
      ["model_name"],
      registry=self.registry,
    )
    self._dropped = prometheus_client.Counter(
      ":tensorflow:serving:log_records_dropped",
      "Request log and audit log records dropped (queue full or write error), by log and reason.",
      ["log", "reason"],
      registry=self.registry,
    )

  def record_verification_failure(self, model_name: str) -> None:
    self._verification_failures.labels(model_name).inc()

  def record_dropped(self, log: str, reason: str) -> None:
    """Counts a log record that could not be written (the request itself succeeded)."""
    self._dropped.labels(log, reason).inc()

  def record_request(
    self,
    model_name: str,
    model_version: str,
    api: str,
    entrypoint: str,
    status: str,
    latency_seconds: float,
  ) -> None:
    if model_name not in self.known_models:
      model_name = UNKNOWN_MODEL
    key = (model_name, model_version, api, entrypoint, status)
    children = self._request_children.get(key)
    if children is None:
      # `labels()` locks and validates on every call; each request would pay that twice.
      children = self._request_children[key] = (
        self._requests.labels(*key),
        self._latency.labels(model_name, api, entrypoint),
      )
    children[0].inc()
    children[1].observe(latency_seconds * 1e6)

  def batch_observer(self, model_name: str, model_version: int):
    """A `BatchObserver` recording the batches of one model version."""
    batch_size = self._batch_size.labels(model_name, str(model_version))
    padding = self._padding.labels(model_name, str(model_version))

    def observe(size: int, padding_rows: int) -> None:
      batch_size.observe(size + padding_rows)
      padding.observe(padding_rows)

    return observe

  def observe_state(self, model_name: str, model_version: int, state: int, error) -> None:
    """A `model_manager.StateObserver` keeping the loaded-versions gauge."""
    version = str(model_version)
    if state == _State.AVAILABLE:
      self._loaded.labels(model_name, version).set(1)
      self._loads.labels(model_name, version, "OK").inc()
    elif state == _State.END and error is not None:
      self._loads.labels(model_name, version, error.code.name).inc()
    elif state in (_State.UNLOADING, _State.END):
      self._loaded.labels(model_name, version).set(0)

  def exposition(self) -> bytes:
    """The metrics in Prometheus text format."""
    return prometheus_client.generate_latest(self.registry)
