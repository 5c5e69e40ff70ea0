"""The server (`serving/server.py`) and the client (`serving/client.py`) as processes."""

import os
import subprocess
import sys

import portpicker
import pytest
import tensorflow as tf

from next_category.serving.config import flags
from tests.serving import conftest

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flags_have_tf_serving_names_and_defaults():
  options = flags.parse_flags(
    [
      "--model_base_path=/m",
      "--enable_batching",
      "--prefer_tflite_model=false",
    ]
  )
  assert (options.port, options.rest_api_port, options.model_name) == (8500, 0, "default")
  assert options.enable_batching and not options.prefer_tflite_model
  assert options.file_system_poll_wait_seconds == 1
  assert not options.enable_signature_method_name_check
  assert flags.parse_flags(
    ["--model_base_path=/m", "--enable_signature_method_name_check=true"]
  ).enable_signature_method_name_check
  with pytest.raises(flags.FlagError, match="Couldn't interpret value =1 for flag enable_batching"):
    flags.parse_flags(["--enable_batching=1"])


@pytest.mark.e2e
def test_server_and_client_processes(canned, examples, tmp_path):
  grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  log = open(tmp_path / "server.log", "w")
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "next_category.serving.server",
      f"--port={grpc_port}",
      f"--rest_api_port={rest_port}",
      "--host=127.0.0.1",
      f"--model_name={conftest.MODEL_NAME}",
      f"--model_base_path={canned.base_path}",
    ],
    cwd=_REPO_ROOT,
    env=env,
    stdout=log,
    stderr=subprocess.STDOUT,
  )
  try:
    conftest.wait_for_server_ready(f"127.0.0.1:{grpc_port}")
    examples_file = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(examples_file)) as writer:
      for example in examples[:3]:
        writer.write(example)
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "next_category.serving.client",
        f"--server=127.0.0.1:{grpc_port}",
        f"--examples={examples_file}",
      ],
      cwd=_REPO_ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
  finally:
    server.terminate()
    assert server.wait(60) == 0  # SIGTERM shuts down gracefully.
    log.close()
  assert (
    "Unloaded servable version {name: next_category version: 1}"
    in (tmp_path / "server.log").read_text()
  )


def test_help():
  # --help makes TensorFlow's Flags::Parse fail: the usage on stdout, exit status 255
  # (model_servers/main.cc:307-311).
  result = subprocess.run(
    [sys.executable, "-m", "next_category.serving.server", "--help"],
    cwd=_REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 255
  assert result.stdout.startswith("usage: python -m next_category.serving.server\nFlags:\n")
  for flag in (
    "--port",
    "--rest_api_port",
    "--model_config_file",
    "--enable_batching",
    "--batching_parameters_file",
    "--monitoring_config_file",
    "--ssl_config_file",
    "--file_system_poll_wait_seconds",
  ):
    assert flag in result.stdout


def test_sigterm_ends_the_wait_for_a_first_version_at_once(tmp_path):
  # Issue 21: SIGTERM was ignored while the server waited for a first version
  # (60 s by default, longer than Kubernetes' 30 s grace).
  base_path = tmp_path / conftest.MODEL_NAME
  base_path.mkdir()  # No version yet.
  log_path = tmp_path / "server.log"
  with open(log_path, "w") as log:
    server = subprocess.Popen(
      [
        sys.executable,
        "-m",
        "next_category.serving.server",
        f"--port={portpicker.pick_unused_port()}",
        f"--model_name={conftest.MODEL_NAME}",
        f"--model_base_path={base_path}",
        "--model_load_timeout_seconds=600",
      ],
      cwd=_REPO_ROOT,
      env=dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2"),
      stdout=log,
      stderr=subprocess.STDOUT,
    )
  try:
    # The first poll found nothing: the server waits, its signal handlers in place.
    conftest.wait_until(
      lambda: "No versions of servable next_category found" in log_path.read_text()
    )
    server.terminate()
    assert server.wait(5) == 0
  finally:
    if server.poll() is None:
      server.kill()
      server.wait()
  text = log_path.read_text()
  assert "Stopped before serving" in text and "Failed to start server" not in text
