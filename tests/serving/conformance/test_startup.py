"""Starting the server as TensorFlow Serving's end-to-end tests start tensorflow_model_server.

Each test names what it mirrors, in TensorFlow Serving 2.16.1
(tensorflow_serving/...; `test:N` is model_servers/tensorflow_model_server_test.py,
`base:N` its test_util/tensorflow_model_server_test_base.py). The process
tests share their servers, started together from the upstream command lines
(tfs_server.py); the start-up failures run `next_category.serving.server.main` in this
process, which is what `python -m next_category.serving.server` runs.

Upstream's Predict sends x of shape [1]; until this server's Predict takes it
(issue 20, item 3) the liveness checks here send [1, 1] (`batch_input`, base:263-264).
"""

import logging
import os
import time
import urllib.request

import grpc
import portpicker
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from next_category.serving import model_server
from next_category.serving import server as server_main
from next_category.serving.config import flags
from next_category.serving.models import loader
from tests.serving.conformance import tfs_server

_CHANNEL_ARGS = "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"  # test:428-429
_CONFIG_TEMPLATE = """
model_config_list: {{
  config: {{
    name: "{name}",
    base_path: "{model_path}",
    model_platform: "tensorflow"
  }}
}}
"""  # test:318-327


def _half_plus_three_loads(tfs_testdata) -> bool:
  """Whether this server loads saved_model_half_plus_three (a TF1 SavedModelBundle)."""
  try:
    path = str(tfs_testdata / "saved_model_half_plus_three" / "00000123")
    loader.load_servable("half_plus_three", 123, path).close()
    return True
  except Exception:  # Whatever the loader raises: the model is not served yet.
    return False


@pytest.fixture(scope="module")
def servers(tfs_testdata, tmp_path_factory):
  """The servers of this module's tests, started at once."""
  directory = tmp_path_factory.mktemp("servers")
  data = str(tfs_testdata)
  half_plus_two = os.path.join(data, "saved_model_half_plus_two_cpu")
  started = tfs_server.Servers(str(directory))
  try:
    started.start(
      "default",
      model_name="default",
      model_path=half_plus_two,
      monitoring_config_file=os.path.join(data, "monitoring_config.txt"),
    )
    started.start(
      "channel_args",
      model_name="default",
      model_path=half_plus_two,
      grpc_channel_arguments=_CHANNEL_ARGS,
    )
    started.start(
      "batching",
      model_name="default",
      model_path=half_plus_two,
      batching_parameters_file=os.path.join(data, "batching_config.txt"),
      monitoring_config_file=os.path.join(data, "monitoring_config.txt"),
    )
    started.start("bad_config", model_config_file=os.path.join(data, "bad_model_config.txt"))
    zero_poll_config = directory / "zero_poll_model_config.txt"
    zero_poll_config.write_text(
      _CONFIG_TEMPLATE.format(name="half_plus_two", model_path=half_plus_two)
    )
    started.start(
      "zero_poll", model_config_file=str(zero_poll_config), model_config_file_poll_period=0
    )
    started.start(
      "no_rest",
      rest=False,
      model_name="default",
      model_path=half_plus_two,
      extra_flags=["--no_such_flag=1"],
    )
    if _half_plus_three_loads(tfs_testdata):
      reload_config = directory / "reload_model_config.txt"
      reload_config.write_text(
        _CONFIG_TEMPLATE.format(name="half_plus_two", model_path=half_plus_two)
      )
      started.start("reload", model_config_file=str(reload_config), model_config_file_poll_period=1)
      started.start("good_config", model_config_file=os.path.join(data, "good_model_config.txt"))
    yield started
  finally:
    started.stop_all()


def _needs_half_plus_three(servers):
  try:
    servers["reload"]
  except KeyError:
    pytest.xfail(
      "saved_model_half_plus_three (TF1, ParseExample, main_op) does not load yet: "
      "TF1 SavedModelBundles come with issue 20, item 3."
    )


def test_good_model_config(servers):
  # test:277-298: --model_config_file with good_model_config.txt serves both models.
  _needs_half_plus_three(servers)
  address = servers.ready("good_config").grpc
  for model_name, expected in (("half_plus_two", 3.0), ("half_plus_three", 4.0)):
    for specify_output in (True, False):
      tfs_server.verify_predict(
        address,
        expected,
        model_name=model_name,
        specify_output=specify_output,
        batch_input=True,
      )


def test_bad_model_config(servers):
  # test:300-313: the parse error on stderr. Then main.cc:333-337: the status on
  # stdout, exit status 255; the status is ParseProtoTextFile's (util/proto_util.h:26-40).
  server = servers["bad_config"]
  assert server.process.wait(120) == 255
  assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in server.stderr()
  path = server.command[-1].split("=", 1)[1]
  assert server.stdout().splitlines()[-1] == (
    f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'"
  )


def test_model_config_reload(servers, tfs_testdata):
  # test:315-367: with --model_config_file_poll_wait_seconds=1 a rewritten config
  # is loaded. Upstream sleeps 2 s and checks once; here the check is retried for
  # up to a minute (a shared machine loads more slowly).
  _needs_half_plus_three(servers)
  server = servers.ready("reload")
  tfs_server.verify_predict(
    server.grpc, 3.0, model_name="half_plus_two", specify_output=False, batch_input=True
  )
  config_path = server.command[server.command.index("--model_config_file_poll_wait_seconds=1") - 1]
  with open(config_path.split("=", 1)[1], "w") as f:
    f.write(
      _CONFIG_TEMPLATE.format(
        name="half_plus_three",
        model_path=str(tfs_testdata / "saved_model_half_plus_three"),
      )
    )
  deadline = time.monotonic() + 60
  while True:
    try:
      tfs_server.verify_predict(
        server.grpc, 4.0, model_name="half_plus_three", specify_output=False, batch_input=True
      )
      break
    except grpc.RpcError:
      if time.monotonic() > deadline:
        raise
      time.sleep(0.5)


def test_model_config_reload_with_zero_poll_period(servers, tfs_testdata):
  # test:369-422: with a poll period of 0 the config is read once; a rewrite changes nothing.
  server = servers.ready("zero_poll")
  tfs_server.verify_predict(
    server.grpc, 3.0, model_name="half_plus_two", specify_output=False, batch_input=True
  )
  config_path = [a for a in server.command if a.startswith("--model_config_file=")][0]
  with open(config_path.split("=", 1)[1], "w") as f:
    f.write(
      _CONFIG_TEMPLATE.format(
        name="half_plus_three", model_path=str(tfs_testdata / "saved_model_half_plus_three")
      )
    )
  time.sleep(0 + 1)  # test:411: poll_period + 1.
  tfs_server.verify_predict(
    server.grpc, 3.0, model_name="half_plus_two", specify_output=False, batch_input=True
  )


def test_good_grpc_channel_args(servers):
  # test:424-436: the server starts with --grpc_channel_arguments and answers.
  server = servers.ready("channel_args")
  tfs_server.verify_predict(server.grpc, 3.0, specify_output=False, batch_input=True)


def test_prometheus_endpoint(servers):
  # test:581-601: with monitoring_config.txt the REST port serves metrics with TYPE lines.
  server = servers.ready("default")
  with urllib.request.urlopen(
    f"http://{server.rest}/monitoring/prometheus/metrics", timeout=tfs_server.RPC_TIMEOUT
  ) as response:
    assert response.headers["Content-Type"] == "text/plain"  # http_server.cc:91.
    assert "# TYPE" in response.read().decode("utf-8")


def test_predict_over_unix_socket(servers):
  # test:603-613: --grpc_socket_path serves gRPC on unix:<path> besides the port
  # (server.cc:376-382).
  server = servers.ready("default")
  tfs_server.verify_predict(
    f"unix:{server.socket_path}", 3.0, specify_output=False, batch_input=True
  )
  tfs_server.verify_predict(server.grpc, 3.0, batch_input=True)


def test_batching_parameters_file_with_enable_batching(servers):
  # base:222-224: --enable_batching --batching_parameters_file=batching_config.txt.
  server = servers.ready("batching")
  tfs_server.verify_predict(server.grpc, 3.0, batch_input=True)
  with urllib.request.urlopen(
    f"http://{server.rest}/monitoring/prometheus/metrics", timeout=tfs_server.RPC_TIMEOUT
  ) as response:
    page = response.read().decode("utf-8")
  # batching_util.h:143-153: one batch of one example so far.
  assert ":tensorflow:serving:batching_session:processed_batch_size_count{} 1" in page.splitlines()


def test_unknown_argument_is_reported_and_ignored(servers):
  # main.cc:324-326: the first unknown argument and the usage on stdout; the server starts.
  server = servers.ready("no_rest")
  tfs_server.verify_predict(server.grpc, 3.0, batch_input=True)
  assert server.stdout().startswith(
    "unknown argument: --no_such_flag=1\n"
    "usage: python -m next_category.serving.server\nFlags:\n\t--port=8500"
  )


def test_rest_api_is_off_without_rest_api_port(servers):
  # main.cc:94 / server.h:50 (http_port = 0): no REST unless --rest_api_port (server.cc:430).
  server = servers.ready("no_rest")
  log = server.stderr()
  assert f"Running gRPC ModelServer at 127.0.0.1:{server.port} ..." in log
  assert f"Running gRPC ModelServer at UNIX socket {server.socket_path} ..." in log
  assert "Exporting HTTP/REST API" not in log


def _main(capsys, *argv):
  """`python -m next_category.serving.server ARGV` in this process: (exit status, stdout)."""
  status = server_main.main(list(argv))
  return status, capsys.readouterr().out


@pytest.mark.parametrize(
  "argv, error",
  [
    # server.cc:180-185.
    (
      ["--port=0", "--model_base_path=/m"],
      "INVALID_ARGUMENT: At least one of server_options.grpc_port or "
      "server_options.grpc_socket_path must be set.",
    ),
    # server.cc:187-192.
    (
      ["--use_alts_credentials", "--ssl_config_file=/ssl", "--model_base_path=/m"],
      "INVALID_ARGUMENT: Either use_alts_credentials must be false or ssl_config_file "
      "must be empty.",
    ),
    # server.cc:194-199.
    (
      ["--model_name=m"],
      "INVALID_ARGUMENT: Both server_options.model_base_path and "
      "server_options.model_config_file are empty!",
    ),
    # server.cc:236-240.
    (
      ["--batching_parameters_file=/b", "--model_base_path=/m"],
      "INVALID_ARGUMENT: server_options.batching_parameters_file is set without setting "
      "server_options.enable_batching to true.",
    ),
    # server.cc:253-260.
    (
      [
        "--tensorflow_session_parallelism=2",
        "--tensorflow_intra_op_parallelism=2",
        "--tensorflow_inter_op_parallelism=2",
        "--model_base_path=/m",
      ],
      "INVALID_ARGUMENT: Either configure server_options.tensorflow_session_parallelism or "
      "(server_options.tensorflow_intra_op_parallelism, "
      "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.",
    ),
    # server_core.cc:110-119: --model_base_path must be absolute too.
    (
      ["--model_name=m", "--model_base_path=models/m"],
      "INVALID_ARGUMENT: Expected model m to have an absolute path or URI; "
      "got base_path()=models/m",
    ),
    # util/proto_util.h:30-32: the file system's status (posix: NOT_FOUND).
    (
      ["--model_config_file=/no/such/models.config"],
      "NOT_FOUND: /no/such/models.config; No such file or directory",
    ),
  ],
)
def test_fatal_flag_combinations(capsys, argv, error):
  status, out = _main(capsys, *argv)
  assert status == 255
  assert out == f"Failed to start server. Error: {error}\n"


@pytest.mark.parametrize(
  "config, error",
  [
    # server_core.cc:91-96.
    (
      'config { name: "m" base_path: "/a" model_platform: "tensorflow" } '
      'config { name: "m" base_path: "/b" model_platform: "tensorflow" }',
      "INVALID_ARGUMENT: Illegal to list model m multiple times in config list",
    ),
    # server_core.cc:68-73.
    (
      'config { name: "m" base_path: "/a" }',
      "INVALID_ARGUMENT: Illegal setting neither ModelServerConfig::model_type (deprecated) "
      "nor ModelServerConfig::model_platform, model name is m",
    ),
    # server_core.cc:52-57.
    (
      'config { name: "m" base_path: "/a" model_type: TENSORFLOW model_platform: "tensorflow" }',
      "INVALID_ARGUMENT: Illegal setting both ModelServerConfig::model_type (deprecated) "
      "and ModelServerConfig::model_platform, model name is m",
    ),
    # server_core.cc:575-579.
    (
      'config { name: "m" base_path: "/a" model_platform: "pytorch" }',
      "FAILED_PRECONDITION: PlatformConfigMap has no entry for platform pytorch",
    ),
  ],
)
def test_model_config_errors(capsys, tmp_path, config, error):
  path = tmp_path / "models.config"
  path.write_text(f"model_config_list {{ {config} }}")
  status, out = _main(capsys, f"--model_config_file={path}")
  assert (status, out) == (255, f"Failed to start server. Error: {error}\n")


def test_bad_batching_parameters_file(capsys, tmp_path):
  # server.cc:229-231 parses it with ParseProtoTextFile, as the model config.
  path = tmp_path / "batching.txt"
  path.write_text("max_batch_size { value: many }")
  status, out = _main(
    capsys, "--enable_batching", f"--batching_parameters_file={path}", "--model_base_path=/m"
  )
  assert status == 255
  assert (
    out == f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'\n"
  )


def test_a_model_that_cannot_load_fails_the_start_after_its_retries(capsys, caplog, tfs_testdata):
  # --saved_model_tags picks the MetaGraph (server.cc:278-282); none is tagged
  # {serve, gpu}: TensorFlow's NOT_FOUND (tensorflow/cc/saved_model/reader.cc). The load is
  # retried --max_num_load_retries times, --load_retry_interval_micros apart
  # (util/retrier.cc:26-52), then the start fails (core/load_servables_fast.cc:90-118).
  caplog.set_level(logging.INFO)
  path = str(tfs_testdata / "saved_model_half_plus_two_cpu")
  start = time.monotonic()
  status, out = _main(
    capsys,
    "--model_name=default",
    f"--model_base_path={path}",
    "--saved_model_tags=serve,gpu",
    "--max_num_load_retries=1",
    "--load_retry_interval_micros=300000",
  )
  assert time.monotonic() - start >= 0.3
  assert status == 255
  assert out == (
    "Failed to start server. Error: UNKNOWN: 1 servable(s) did not become available: "
    "{{{name: default version: 123} due to error: NOT_FOUND: Could not find meta graph def "
    "matching supplied tags: { gpu serve }. To inspect available tag-sets in the SavedModel, "
    "please use the SavedModel CLI: `saved_model_cli`}, }\n"
  )
  assert "Retrying of Loading servable: {name: default version: 123} retry: 1" in caplog.text


def test_rest_port_equal_to_grpc_port_skips_rest(tfs_testdata, tmp_path, caplog):
  # server.cc:447-451: logged, REST skipped, the server still starts.
  port = portpicker.pick_unused_port()
  server = model_server.ModelServer(
    flags.ServerOptions(
      port=port,
      rest_api_port=port,
      model_base_path=str(tfs_testdata / "saved_model_half_plus_two_cpu"),
      file_system_poll_wait_seconds=0,
    )
  )
  server.start()
  try:
    assert server.rest_port == 0
    assert "server_options.http_port cannot be same as grpc_port." in caplog.text
    tfs_server.verify_predict(f"127.0.0.1:{port}", 3.0, batch_input=True)
  finally:
    server.stop()


def test_an_empty_model_config_starts_a_server_with_no_models(tmp_path):
  # server_core.cc:454-457: "Taking no action for empty config."
  config = tmp_path / "empty.config"
  config.write_text("")
  server = model_server.ModelServer(
    flags.ServerOptions(port=portpicker.pick_unused_port(), model_config_file=str(config))
  )
  server.start()
  try:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
      with pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
  finally:
    server.stop()


def test_version(capsys):
  # main.cc:318-322: before the unknown arguments are reported and before the server
  # is built; exit status 0.
  status, out = _main(capsys, "--version", "--no_such_flag")
  assert status == 0
  assert out == f"TensorFlow ModelServer: 2.16.1+python\nTensorFlow Library: {tf.__version__}\n"


def test_a_value_that_does_not_parse_prints_the_usage(capsys, caplog):
  # main.cc:307-311 after TensorFlow's Flags::Parse fails (command_line_flags.cc): the
  # value is logged, the usage goes to stdout, exit status 255.
  status, out = _main(capsys, "--port=8500x", "--model_base_path=/m")
  assert status == 255
  assert out.startswith("usage: python -m next_category.serving.server\nFlags:\n")
  assert "Couldn't interpret value 8500x for flag port." in caplog.text
