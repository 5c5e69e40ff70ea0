"""The Prometheus page, as TensorFlow Serving 2.16.1 writes it.

The format tests mirror tensorflow_serving/util/prometheus_exporter_test.cc
(line numbers below), which checks `PrometheusExporter::GeneratePage`
(util/prometheus_exporter.cc) on metrics it registers itself; here they are
registered on a `ServingMetrics`. The other tests pin which metrics TensorFlow
Serving registers and what records them (servables/tensorflow/util.cc,
prediction_service_impl.cc, http_server.cc, ...).
"""

import re
import urllib.request

import grpc
import portpicker
import pytest
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from next_category.serving import model_server
from next_category.serving.config import flags
from next_category.serving.observability import metrics as metrics_lib
from tests.serving.conformance import tfs_server


def _page(metrics) -> str:
  return metrics.exposition().decode("utf-8")


def test_counter():
  # prometheus_exporter_test.cc:30-44.
  metrics = metrics_lib.ServingMetrics()
  counter = metrics.register(metrics_lib.Counter("/test/path/total", ("name",)))
  counter.increment(("abc",), 2)
  assert '# TYPE :test:path:total counter\n:test:path:total{name="abc"} 2\n' in _page(metrics)


def test_gauge():
  # prometheus_exporter_test.cc:46-59.
  metrics = metrics_lib.ServingMetrics()
  gauge = metrics.register(metrics_lib.Gauge("/test/path/gague", ("x", "y")))
  gauge.set(("abc", "def"), 5)
  assert '# TYPE :test:path:gague gauge\n:test:path:gague{x="abc",y="def"} 5\n' in _page(metrics)


def test_histogram():
  # prometheus_exporter_test.cc:61-88: TensorFlow's buckets count a value in the first
  # bucket whose limit is above it, so 2 is not under le="2".
  metrics = metrics_lib.ServingMetrics()
  histogram = metrics.register(
    metrics_lib.Histogram(
      "/test/path/histogram", ("status",), metrics_lib.exponential_buckets(1, 2, 10)
    )
  )
  for value in (2, 20, 200):
    histogram.observe(("good",), value)
  expected = "\n".join(
    [
      "# TYPE :test:path:histogram histogram",
      ':test:path:histogram_bucket{status="good",le="1"} 0',
      ':test:path:histogram_bucket{status="good",le="2"} 0',
      ':test:path:histogram_bucket{status="good",le="4"} 1',
      ':test:path:histogram_bucket{status="good",le="8"} 1',
      ':test:path:histogram_bucket{status="good",le="16"} 1',
      ':test:path:histogram_bucket{status="good",le="32"} 2',
      ':test:path:histogram_bucket{status="good",le="64"} 2',
      ':test:path:histogram_bucket{status="good",le="128"} 2',
      ':test:path:histogram_bucket{status="good",le="256"} 3',
      ':test:path:histogram_bucket{status="good",le="512"} 3',
      ':test:path:histogram_bucket{status="good",le="+Inf"} 3',
      ':test:path:histogram_sum{status="good"} 222',
      ':test:path:histogram_count{status="good"} 3',
    ]
  )
  assert expected + "\n" in _page(metrics)


def test_sanitize_label_value():
  # prometheus_exporter_test.cc:90-105.
  metrics = metrics_lib.ServingMetrics()
  counter = metrics.register(metrics_lib.Counter("/test/path/total", ("name",)))
  counter.increment(('"abc\\"',), 2)
  assert ':test:path:total{name="\\"abc\\\\\\""} 2\n' in _page(metrics)


def test_sanitize_label_name():
  # prometheus_exporter_test.cc:107-121.
  metrics = metrics_lib.ServingMetrics()
  counter = metrics.register(metrics_lib.Counter("/test/path/total", ("my-name+1",)))
  counter.increment(("abc",), 2)
  assert '# TYPE :test:path:total counter\n:test:path:total{my_name_1="abc"} 2\n' in _page(metrics)


def test_sanitize_metric_name():
  # prometheus_exporter_test.cc:123-137.
  metrics = metrics_lib.ServingMetrics()
  counter = metrics.register(metrics_lib.Counter("0/path-total_count", ("name",)))
  counter.increment(("abc",), 2)
  assert '# TYPE _0:path:total_count counter\n_0:path:total_count{name="abc"} 2\n' in _page(metrics)


def test_metrics_in_name_order_without_help_total_or_created():
  # prometheus_exporter.cc:162-190: every registered metric, ordered by its TensorFlow
  # name, a TYPE line even without cells, "{}" without labels, a final newline.
  metrics = metrics_lib.ServingMetrics()
  metrics.batch_observer("m", 1)(3, 1)
  page = _page(metrics)
  assert page.endswith("\n") and "# HELP" not in page
  assert "_created" not in page and "request_count_total" not in page
  assert [line.split()[2] for line in page.splitlines() if line.startswith("# TYPE")] == [
    ":tensorflow:cc:saved_model:load_attempt_count",
    ":tensorflow:cc:saved_model:load_latency",
    ":tensorflow:serving:batching_session:padding_size",
    ":tensorflow:serving:batching_session:processed_batch_size",
    ":tensorflow:serving:batching_session:wrapped_run_count",
    ":tensorflow:serving:log_records_dropped",
    ":tensorflow:serving:model_verification_failure_count",
    ":tensorflow:serving:model_version_loaded",
    ":tensorflow:serving:model_warmup_latency",
    ":tensorflow:serving:request_count",
    ":tensorflow:serving:request_latency",
    ":tensorflow:serving:runtime_latency",
  ]
  lines = page.splitlines()
  # batching_util.h:117-153: padding by execution batch size, processed size, one run.
  assert ':tensorflow:serving:batching_session:padding_size_sum{execution_batch_size="4"} 1' in (
    lines
  )
  assert ":tensorflow:serving:batching_session:processed_batch_size_sum{} 4" in lines
  assert ":tensorflow:serving:batching_session:wrapped_run_count{} 1" in lines


def test_latency_buckets_are_tensorflow_serving_s():
  # util.cc:70-89: Exponential(10, 1.8, 33) microseconds, written by absl::StrCat.
  metrics = metrics_lib.ServingMetrics(known_models=frozenset(["m"]))
  metrics.record_request("m", "Predict", "GRPC", "OK", 0.001)
  limits = re.findall(r'request_latency_bucket\{[^}]*le="([^"]+)"\}', _page(metrics))
  assert (
    limits
    == (
      "10 18 32.4 58.32 104.976 188.957 340.122 612.22 1102 1983.59 3570.47 6426.84 11568.3 "
      "20823 37481.3 67466.4 121440 218591 393464 708235 1.27482e+06 2.29468e+06 4.13043e+06 "
      "7.43477e+06 1.33826e+07 2.40887e+07 4.33596e+07 7.80473e+07 1.40485e+08 2.52873e+08 "
      "4.55172e+08 8.19309e+08 1.47476e+09 +Inf"
    ).split()
  )


def test_what_is_counted_and_timed():
  metrics = metrics_lib.ServingMetrics(known_models=frozenset(["m"]))
  # prediction_service_impl.cc:52-59: gRPC Predict, Classify, Regress; latency only on OK.
  metrics.record_request("m", "Predict", "GRPC", "OK", 0.001, runtime_seconds=0.0005)
  metrics.record_request("m", "Classify", "GRPC", "INVALID_ARGUMENT", 0.001)
  # ... but not GetModelMetadata, GetModelStatus (nor MultiInference).
  metrics.record_request("m", "GetModelStatus", "GRPC", "OK", 0.001)
  # http_server.cc:192-201: every REST request, latency labelled with the URL's verb.
  metrics.record_request("m", "Regress", "REST", "OK", 0.001, runtime_seconds=0.0005)
  metrics.record_request("m", "GetModelStatus", "REST", "OK", 0.001)
  metrics.record_request("", "", "REST", "INVALID_ARGUMENT", 0.001)
  lines = _page(metrics).splitlines()
  assert [line for line in lines if line.startswith(":tensorflow:serving:request_count")] == [
    ':tensorflow:serving:request_count{model_name="",status="INVALID_ARGUMENT"} 1',
    ':tensorflow:serving:request_count{model_name="m",status="INVALID_ARGUMENT"} 1',
    ':tensorflow:serving:request_count{model_name="m",status="OK"} 3',
  ]
  counts = [line for line in lines if line.startswith(":tensorflow:serving:request_latency_count")]
  assert counts == [
    ':tensorflow:serving:request_latency_count{model_name="m",API="",entrypoint="REST"} 1',
    ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 1',
    ':tensorflow:serving:request_latency_count{model_name="m",API="regress",entrypoint="REST"} 1',
  ]
  # predict_util.cc:111-113, regressor.cc:77: the model's run, runtime "TF1".
  runtimes = [line for line in lines if line.startswith(":tensorflow:serving:runtime_latency_sum")]
  assert runtimes == [
    ':tensorflow:serving:runtime_latency_sum{model_name="m",API="Predict",runtime="TF1"} 500',
    ':tensorflow:serving:runtime_latency_sum{model_name="m",API="Regress",runtime="TF1"} 500',
  ]


@pytest.fixture(scope="module")
def served(tfs_testdata):
  server = model_server.ModelServer(
    flags.ServerOptions(
      port=portpicker.pick_unused_port(),
      rest_api_port=portpicker.pick_unused_port(),
      model_base_path=str(tfs_testdata / "saved_model_half_plus_two_cpu"),
      file_system_poll_wait_seconds=0,
      monitoring_config_file=str(tfs_testdata / "monitoring_config.txt"),
    )
  )
  server.start()
  yield server
  server.stop()


def _served_page(server) -> str:
  url = f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics"
  with urllib.request.urlopen(url, timeout=10) as response:
    return response.read().decode("utf-8")


def _value(page: str, prefix: str) -> float:
  values = [line.rsplit(" ", 1)[1] for line in page.splitlines() if line.startswith(prefix + " ")]
  return float(values[0]) if values else 0.0


def test_a_served_model_s_metrics(served, tfs_testdata):
  model_path = tfs_testdata / "saved_model_half_plus_two_cpu" / "00000123"
  before = _served_page(served)
  tfs_server.verify_predict(f"127.0.0.1:{served.grpc_port}", 3.0, batch_input=True)
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "default"
  with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
    model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
  page = _served_page(served)
  ok = ':tensorflow:serving:request_count{model_name="default",status="OK"}'
  assert _value(page, ok) - _value(before, ok) == 1  # GetModelStatus is not counted.
  runtime = (
    ':tensorflow:serving:runtime_latency_count{model_name="default",API="Predict",runtime="TF1"}'
  )
  assert _value(page, runtime) - _value(before, runtime) == 1
  # TensorFlow's SavedModel loader counts loads (tensorflow/cc/saved_model/loader.cc).
  assert (
    f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{model_path}",status="success"}} 1'
    in page.splitlines()
  )
  assert _value(page, f':tensorflow:cc:saved_model:load_latency{{model_path="{model_path}"}}') > 0
