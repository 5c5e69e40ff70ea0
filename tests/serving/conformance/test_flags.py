"""tensorflow_model_server's flags: names, types, defaults, parsing, and what they do here.

Pinned against TensorFlow Serving 2.16.1: the flag list of
tensorflow_serving/model_servers/main.cc (line of each flag below), the defaults of
model_servers/server.h:39-108 and server.cc:150-152, TensorFlow's flag parser
(tensorflow/core/util/command_line_flags.cc, now tsl/util/command_line_flags.cc)
and what model_servers/server.cc does with the values.
"""

import json
import logging
import os
import shutil
import urllib.error
import urllib.request

import grpc
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from next_category.serving import model_server
from next_category.serving.apis.grpc import health
from next_category.serving.apis.grpc import server as grpc_server
from next_category.serving.config import flags
from next_category.serving.config import server_config
from next_category.serving.config import session_bundle
from next_category.serving.models import warmup

_CPUS = len(os.sched_getaffinity(0))

# (main.cc line, name, type, default): every tensorflow_model_server flag of 2.16.1.
UPSTREAM_FLAGS = [
  (87, "port", "int32", 8500),
  (90, "grpc_socket_path", "string", ""),
  (94, "rest_api_port", "int32", 0),
  (98, "rest_api_num_threads", "int32", 4 * _CPUS),
  (101, "rest_api_timeout_in_ms", "int32", 30000),
  (103, "rest_api_enable_cors_support", "bool", False),
  (106, "enable_batching", "bool", False),
  (109, "allow_version_labels_for_unavailable_models", "bool", False),
  (113, "batching_parameters_file", "string", ""),
  (119, "enable_per_model_batching_parameters", "bool", False),
  (130, "model_config_file", "string", ""),
  (137, "model_config_file_poll_wait_seconds", "int32", 0),
  (144, "model_name", "string", "default"),
  (147, "model_base_path", "string", ""),
  (150, "num_load_threads", "int32", 0),
  (156, "num_unload_threads", "int32", 0),
  (162, "max_num_load_retries", "int32", 5),
  (167, "load_retry_interval_micros", "int64", 60_000_000),
  (172, "file_system_poll_wait_seconds", "int32", 1),
  (181, "flush_filesystem_caches", "bool", True),
  (190, "tensorflow_session_parallelism", "int64", 0),
  (197, "tensorflow_session_config_file", "string", ""),
  (204, "tensorflow_intra_op_parallelism", "int64", 0),
  (210, "tensorflow_inter_op_parallelism", "int64", 0),
  (216, "use_alts_credentials", "bool", False),
  (219, "ssl_config_file", "string", ""),
  (222, "platform_config_file", "string", ""),
  (228, "per_process_gpu_memory_fraction", "float", 0.0),
  (234, "saved_model_tags", "string", "serve"),
  (237, "grpc_channel_arguments", "string", ""),
  (242, "grpc_max_threads", "int32", 4 * _CPUS),
  (244, "enable_model_warmup", "bool", True),
  (248, "num_request_iterations_for_warmup", "int32", 0),
  (252, "version", "bool", False),
  (254, "monitoring_config_file", "string", ""),
  (258, "remove_unused_fields_from_bundle_metagraph", "bool", True),
  (262, "prefer_tflite_model", "bool", False),
  (270, "num_tflite_pools", "int32", _CPUS),
  (276, "num_tflite_interpreters_per_pool", "int32", 1),
  (283, "enable_signature_method_name_check", "bool", False),
  (288, "xla_cpu_compilation_enabled", "bool", False),
  # main.cc:293 defaults to true; off here on purpose (serving/apis/grpc/profiler.py):
  # Profile writes files at a path the client names.
  (293, "enable_profiler", "bool", False),
  (295, "thread_pool_factory_config_file", "string", ""),
  (299, "mixed_precision", "string", ""),
  (301, "skip_initialize_tpu", "bool", False),
  (303, "enable_grpc_healthcheck_service", "bool", False),
]


def test_every_upstream_flag_with_its_type_and_default_in_main_cc_order():
  upstream = [flag for flag in flags.FLAGS if flag.upstream]
  assert [(f.name, f.kind) for f in upstream] == [(n, k) for _, n, k, _ in UPSTREAM_FLAGS]
  defaults = flags.ServerOptions()
  for _, name, _, default in UPSTREAM_FLAGS:
    assert getattr(defaults, name) == default, name


def test_usage_lines_are_laid_out_as_flags_usage():
  # Flags::Usage: "usage: <argv0>\nFlags:\n" then "\t%-33s\t<type>\t<help>\n" per flag,
  # strings quoted, floats %f.
  text = flags.usage("tensorflow_model_server")
  lines = text.splitlines()
  assert lines[:2] == ["usage: tensorflow_model_server", "Flags:"]
  assert lines[2].startswith("\t--port=8500" + " " * 22 + "\tint32\t")
  assert '\t--saved_model_tags="serve"' + " " * 7 + "\tstring\t" in text
  assert "\t--per_process_gpu_memory_fraction=0.000000\tfloat\t" in text  # Longer than 33.
  assert "\t--enable_model_warmup=true" + " " * 7 + "\tbool\t" in text


@pytest.mark.parametrize(
  "arg, field, value",
  [
    ("--enable_batching", "enable_batching", True),
    ("--enable_batching=true", "enable_batching", True),
    ("--enable_model_warmup=false", "enable_model_warmup", False),
    ("--port=+9000", "port", 9000),
    ("--port= 9000", "port", 9000),  # sscanf skips white space.
    ("--load_retry_interval_micros=-1", "load_retry_interval_micros", -1),
    ("--per_process_gpu_memory_fraction=.5", "per_process_gpu_memory_fraction", 0.5),
    ("--grpc_socket_path=/tmp/a=b", "grpc_socket_path", "/tmp/a=b"),
    ("--saved_model_tags=", "saved_model_tags", ""),
  ],
)
def test_values_parse_as_tensorflow_parses_them(arg, field, value):
  command_line = flags.parse_command_line([arg])
  assert command_line.ok and not command_line.unknown
  assert getattr(command_line.options, field) == value


@pytest.mark.parametrize(
  "arg, error",
  [
    # ParseBoolFlag: only the name, =true and =false.
    ("--enable_batching=1", "Couldn't interpret value =1 for flag enable_batching."),
    ("--enable_batching=True", "Couldn't interpret value =True for flag enable_batching."),
    ("--enable_batchingx", "Couldn't interpret value x for flag enable_batching."),
    # ParseInt32Flag: sscanf("%d%c") == 1, nothing after the number.
    ("--port=8500x", "Couldn't interpret value 8500x for flag port."),
    ("--port=1.5", "Couldn't interpret value 1.5 for flag port."),
    ("--port=", "Couldn't interpret value  for flag port."),
    ("--port=2147483648", "Couldn't interpret value 2147483648 for flag port."),
  ],
)
def test_values_that_do_not_parse(arg, error):
  command_line = flags.parse_command_line([arg, "--model_base_path=/m"])
  assert not command_line.ok
  assert command_line.errors == [error]
  assert command_line.options.model_base_path == "/m"  # Parsing goes on.


def test_arguments_no_flag_takes_are_left_over_in_order():
  # Flags::Parse: `--port 9000` is two unknown arguments (only --name=value sets an int);
  # `--` and everything after it are left over.
  command_line = flags.parse_command_line(["--port", "9000", "-port=1", "--", "--model_name=x"])
  assert command_line.ok
  assert command_line.unknown == ["--port", "9000", "-port=1", "--", "--model_name=x"]
  assert command_line.options.port == 8500 and command_line.options.model_name == "default"


def test_help_first_among_the_leftovers_fails_the_parse():
  assert not flags.parse_command_line(["--help"]).ok
  assert flags.parse_command_line(["--nosuch", "--help"]).ok


def test_flags_of_the_cpp_binary_are_logged_once_as_without_effect(caplog):
  options = flags.parse_flags(
    ["--num_load_threads=4", "--flush_filesystem_caches=false", "--grpc_max_threads=8"]
  )
  with caplog.at_level(logging.WARNING):
    names = flags.log_flags_without_effect(options)
  assert names == ["num_load_threads", "flush_filesystem_caches"]  # 8 is the default here.
  assert caplog.text.count("--num_load_threads has no effect in this server") == 1


@pytest.mark.parametrize(
  "text, arguments",
  [
    # server.cc:98-109, 391-403: split on "," then "=", int32 values as ints.
    (
      "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
      [("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb")],
    ),
    ("a=1=2", [("a", 1)]),
    ("a= 7", [("a", 7)]),
    ("a=99999999999", [("a", "99999999999")]),
    ("a=", [("a", "")]),
    (" a=x", [(" a", "x")]),
    ("", []),
  ],
)
def test_grpc_channel_arguments(text, arguments):
  assert grpc_server.channel_arguments(text) == arguments


@pytest.mark.parametrize("text", ["grpc.x", "a=1,", "a=1,,b=2"])
def test_grpc_channel_arguments_without_equals_are_refused(text):
  # Undefined behaviour upstream (server.cc:106 reads key_val[1]); a clear error here.
  with pytest.raises(ValueError, match="is not key=value"):
    grpc_server.channel_arguments(text)


@pytest.mark.parametrize(
  "tags, expected",
  [
    ("serve", ("serve",)),
    ("serve,gpu", ("serve", "gpu")),
    ("serve, gpu", ("serve", " gpu")),  # str_util::Split does not trim.
    ("", ("serve",)),  # saved_model_bundle_factory.cc:121-127.
  ],
)
def test_saved_model_tags(tags, expected):
  settings = session_bundle.load_settings(flags.ServerOptions(saved_model_tags=tags))
  assert settings.saved_model_tags == expected


def test_session_parallelism_sets_both_pools_unless_one_is_set():
  # server.cc:253-276.
  load = session_bundle.load_settings
  settings = load(flags.ServerOptions(tensorflow_session_parallelism=3))
  assert (settings.intra_op_threads, settings.inter_op_threads) == (3, 3)
  settings = load(
    flags.ServerOptions(tensorflow_session_parallelism=3, tensorflow_intra_op_parallelism=2)
  )
  assert (settings.intra_op_threads, settings.inter_op_threads) == (2, 0)


def test_enable_batching_without_a_file_uses_the_model_server_thread_pool():
  # server.cc:224-228.
  settings = session_bundle.load_settings(flags.ServerOptions(enable_batching=True))
  assert settings.batching_parameters.thread_pool_name.value == "model_server_batch_threads"
  assert session_bundle.load_settings(flags.ServerOptions()).batching_parameters is None


def test_platform_config_file_replaces_the_loading_flags(tmp_path):
  # server.cc:300-305: a PlatformConfigMap; --enable_batching and the session flags are
  # ignored, its SavedModelBundleSourceAdapterConfig's SessionBundleConfig is used.
  path = tmp_path / "platform.config"
  path.write_text(
    """
platform_configs {
  key: "tensorflow"
  value {
    source_adapter_config {
      [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {
        legacy_config {
          session_config { intra_op_parallelism_threads: 3 }
          batching_parameters { max_batch_size { value: 16 } }
          saved_model_tags: "serve"
          saved_model_tags: "tpu"
          model_warmup_options { num_request_iterations { value: 4 } }
        }
      }
    }
  }
}
"""
  )
  settings = session_bundle.load_settings(
    flags.ServerOptions(platform_config_file=str(path), tensorflow_intra_op_parallelism=9)
  )
  assert settings.platforms == {"tensorflow"}
  assert settings.batching_parameters.max_batch_size.value == 16
  assert (settings.intra_op_threads, settings.saved_model_tags) == (3, ("serve", "tpu"))
  # proto3 defaults: warmup off unless the config turns it on.
  assert not settings.enable_model_warmup
  assert settings.num_request_iterations_for_warmup == 4


def test_platform_config_file_with_another_adapter_is_refused(tmp_path):
  path = tmp_path / "platform.config"
  path.write_text(
    'platform_configs { key: "tensorflow" value { source_adapter_config { '
    "[type.googleapis.com/google.protobuf.Int64Value] { value: 1 } } } }"
  )
  with pytest.raises(server_config.ConfigError, match="Int64Value is not supported"):
    session_bundle.load_settings(flags.ServerOptions(platform_config_file=str(path)))


def _with_warmup(tfs_testdata, tmp_path, records: int) -> str:
  """half_plus_two_cpu, with `records` Predict warmup records (x = [[2.0]])."""
  base_path = tmp_path / "half_plus_two"
  shutil.copytree(tfs_testdata / "saved_model_half_plus_two_cpu", base_path)
  path = warmup.warmup_file(str(base_path / "00000123"))
  os.makedirs(os.path.dirname(path))
  log = prediction_log_pb2.PredictionLog()
  log.predict_log.request.model_spec.name = "default"
  log.predict_log.request.inputs["x"].CopyFrom(tf.make_tensor_proto([[2.0]], tf.float32))
  with tf.io.TFRecordWriter(path) as writer:
    for _ in range(records):
      writer.write(log.SerializeToString())
  return str(base_path)


class _CountingService:
  """The real InferenceService, counting the warmup requests it answers."""

  def __init__(self, service):
    self.service = service
    self.predictions = 0

  def predict(self, request, servable=None):
    self.predictions += 1
    return self.service.predict(request, servable=servable)


@pytest.fixture(scope="module")
def flagged_server(tfs_testdata, tmp_path_factory):
  """A server with the flags below, and a warmup file of two records."""
  base_path = _with_warmup(tfs_testdata, tmp_path_factory.mktemp("warmup"), 2)
  server = model_server.ModelServer(
    flags.ServerOptions(
      port=portpicker.pick_unused_port(),
      rest_api_port=portpicker.pick_unused_port(),
      model_base_path=base_path,
      file_system_poll_wait_seconds=0,
      monitoring_config_file=str(tfs_testdata / "monitoring_config.txt"),
      rest_api_enable_cors_support=True,
      enable_grpc_healthcheck_service=True,
      num_request_iterations_for_warmup=3,
      rest_api_timeout_in_ms=0,
    )
  )
  counting = _CountingService(server.service)
  server._loader.service = counting  # pylint: disable=protected-access (counts the replays)
  server.start()
  yield server, counting, base_path
  server.stop()


def test_warmup_replays_each_record_num_request_iterations_times(flagged_server):
  # server.cc:283-289 -> saved_model_warmup_util.cc:117-120.
  server, counting, base_path = flagged_server
  assert counting.predictions == 2 * 3
  page = server.metrics.exposition().decode()
  assert (
    f':tensorflow:serving:model_warmup_latency_count{{model_path="{base_path}/00000123",'
    'status="OK"} 1'
  ) in page.splitlines()


def test_enable_model_warmup_false_skips_the_warmup(tfs_testdata, tmp_path):
  # server.cc:283-284: SessionBundleConfig.enable_model_warmup.
  base_path = _with_warmup(tfs_testdata, tmp_path, 1)
  server = model_server.ModelServer(
    flags.ServerOptions(
      port=portpicker.pick_unused_port(),
      model_base_path=base_path,
      file_system_poll_wait_seconds=0,
      enable_model_warmup=False,
    )
  )
  counting = _CountingService(server.service)
  server._loader.service = counting  # pylint: disable=protected-access
  server.start()
  server.stop()
  assert counting.predictions == 0
  assert "model_warmup_latency_count" not in server.metrics.exposition().decode()


def _rest(server, method, path, headers=None):
  request = urllib.request.Request(
    f"http://127.0.0.1:{server.rest_port}{path}", method=method, headers=headers or {}
  )
  try:
    with urllib.request.urlopen(request, timeout=10) as response:
      return response.status, dict(response.headers), response.read()
  except urllib.error.HTTPError as e:
    return e.code, dict(e.headers), e.read()


def test_cors_support(flagged_server):
  # http_server.cc:170-185, http_rest_api_util.cc:40-44: a preflight with an http(s)
  # Origin is 200 with an empty body, without one 400 (FAILED_PRECONDITION), and
  # --rest_api_enable_cors_support adds the CORS headers to /v1/ answers.
  server, _, _ = flagged_server
  status, headers, body = _rest(server, "OPTIONS", "/v1/models/default", {"Origin": "https://a"})
  assert (status, body) == (200, b"")
  assert headers["Access-Control-Allow-Origin"] == "*"
  assert headers["Access-Control-Allow-Methods"] == "POST, GET"
  assert headers["Access-Control-Allow-Headers"] == "Content-Type"
  status, headers, body = _rest(server, "OPTIONS", "/v1/models/default")
  assert (status, body) == (400, b"")
  status, headers, _ = _rest(server, "GET", "/v1/models/default")
  assert status == 200 and headers["Access-Control-Allow-Origin"] == "*"


def test_grpc_health_check_service(flagged_server):
  # server.cc:405-417: the default health service, ModelService and PredictionService SERVING.
  server, _, _ = flagged_server
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    check = channel.unary_unary(
      f"/{health.SERVICE}/Check",
      request_serializer=health.HealthCheckRequest.SerializeToString,
      response_deserializer=health.HealthCheckResponse.FromString,
    )
    for service in ("", "ModelService", "PredictionService"):
      response = check(health.HealthCheckRequest(service=service), timeout=10)
      assert response.status == health.SERVING
    with pytest.raises(grpc.RpcError) as raised:
      check(health.HealthCheckRequest(service="Nope"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    watch = channel.unary_stream(
      f"/{health.SERVICE}/Watch",
      request_serializer=health.HealthCheckRequest.SerializeToString,
      response_deserializer=health.HealthCheckResponse.FromString,
    )
    responses = watch(health.HealthCheckRequest(service="Nope"), timeout=10)
    assert next(responses).status == health.SERVICE_UNKNOWN
    responses.cancel()


def test_rest_api_timeout_zero_means_no_timeout(flagged_server):
  # http_rest_api_handler.cc:56-61: the RunOptions timeout is set only when positive,
  # so --rest_api_timeout_in_ms=0 waits for the model as long as it takes.
  server, _, _ = flagged_server
  request = urllib.request.Request(
    f"http://127.0.0.1:{server.rest_port}/v1/models/default:predict",
    data=b'{"instances": [[2.0]]}',
    method="POST",
  )
  with urllib.request.urlopen(request, timeout=10) as response:
    assert json.loads(response.read()) == {"predictions": [[3.0]]}
