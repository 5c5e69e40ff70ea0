"""Tests of the model server process wrapper that need no server."""

from next_category.components.infra_validator import model_server


def test_log_excerpt_quotes_the_servers_errors_not_tensorflows_noise(tmp_path):
  log = tmp_path / "server.log"
  log.write_text(
    "2026-11-30 10:03:37.626861: E external/local_xla/xla/stream_executor/cuda_fft.cc:479] noise\n"
    "2026-11-30 10:03:45,929 INFO Loading tensorflow model m version 1 from /tmp/m/1\n"
    "2026-11-30 10:03:47,384 ERROR Loading servable: {name: m version: 1} failed: truncated\n"
    "Failed to start server. Error: DEADLINE_EXCEEDED: No servable version after 60 s\n"
  )
  server = model_server.ModelServer("m", str(tmp_path / "m"), str(log))
  assert server.log_excerpt() == (
    "2026-11-30 10:03:47,384 ERROR Loading servable: {name: m version: 1} failed: truncated\n"
    "Failed to start server. Error: DEADLINE_EXCEEDED: No servable version after 60 s"
  )
  # Without error lines, the end of the log.
  log.write_text("one\ntwo\nthree\nfour\n")
  assert server.log_excerpt() == "two\nthree\nfour"


def test_stage_model_copies_the_version_under_a_base_path(tmp_path):
  model = tmp_path / "model"
  (model / "variables").mkdir(parents=True)
  (model / "saved_model.pb").write_bytes(b"pb")
  (model / "variables" / "variables.index").write_bytes(b"index")
  base_path = model_server.stage_model(str(model), str(tmp_path / "root"), "m", 1)
  assert base_path == str(tmp_path / "root" / "m")
  assert (tmp_path / "root" / "m" / "1" / "variables" / "variables.index").read_bytes() == b"index"
  assert (tmp_path / "root" / "m" / "1" / "saved_model.pb").read_bytes() == b"pb"


def test_the_server_is_started_as_a_process_on_loopback():
  server = model_server.ModelServer("m", "/models/m", "/tmp/log")
  command = server.command
  assert command[1:3] == ["-m", "next_category.serving.server"]
  assert f"--port={server.port}" in command and "--host=127.0.0.1" in command
  assert "--rest_api_port=0" in command and "--model_base_path=/models/m" in command
  assert server.hostport == f"127.0.0.1:{server.port}"
