"""The audit trail under attack: it cannot be wiped by what a request names, nor blinded.

Each test stands for a finding of issue 21: capped fields, the refused
principal, config reloads, a deleted file, as an attacker or operator meets
them on a real server.
"""

import base64
import datetime
import glob
import http.client
import json
import os
import time

import grpc
import jwt
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving.observability import log_writer
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME
from tests.serving.conftest import TFLITE_MODEL_NAME

TOKENS = "alice-secret-1 alice\nbob-secret-2 bob other_model\n"
JWT_SECRET = "j" * 40
HUGE = 1024 * 1024


def _predict(server, examples, token=None, model=MODEL_NAME):
  """One gRPC Predict; its status code."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples[:1], dtype=tf.string))
  metadata = [("authorization", f"Bearer {token}")] if token else None
  with grpc.insecure_channel(
    f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_send_message_length", 8 * HUGE)]
  ) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      stub.Predict(request, timeout=DEADLINE_SECONDS, metadata=metadata)
      return grpc.StatusCode.OK
    except grpc.RpcError as e:
      return e.code()


def _rest_predict(server, examples, token=None, model=MODEL_NAME, **body):
  """One REST Predict; its HTTP status."""
  body.setdefault("instances", [{"b64": base64.b64encode(examples[0]).decode()}])
  connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=DEADLINE_SECONDS)
  headers = {"Authorization": f"Bearer {token}"} if token else {}
  try:
    connection.request("POST", f"/v1/models/{model}:predict", json.dumps(body), headers)
    response = connection.getresponse()
    response.read()
    return response.status
  finally:
    connection.close()


def _lines(pattern):
  """Every JSON line of the files matching `pattern`."""
  lines = []
  for path in sorted(glob.glob(pattern)):
    with open(path) as f:
      lines += [json.loads(line) for line in f]
  return lines


def _metrics(server):
  return server.metrics.exposition().decode()


def _audited_server(canned, tmp_path, **options):
  """A server of the canned model with an audit log; the server and its audit file."""
  audit_file = tmp_path / "audit.jsonl"
  server = conftest.start_server(
    model_base_path=canned.base_path,
    file_system_poll_wait_seconds=0,
    audit_log_file=str(audit_file),
    **options,
  )
  return server, audit_file


def test_requests_naming_a_megabyte_cannot_rotate_the_legitimate_lines_away(
  canned, examples, tmp_path
):
  # Issue 21: 3 requests with a 1 MB model name replaced all 3 audit files.
  server, audit_file = _audited_server(
    canned, tmp_path, audit_log_max_bytes=64 * 1024, audit_log_backup_count=2
  )
  try:
    for _ in range(20):
      assert _predict(server, examples) == grpc.StatusCode.OK
    for index in range(3):
      assert _predict(server, examples, model=f"{index}" + "m" * HUGE) == grpc.StatusCode.NOT_FOUND
    assert _rest_predict(server, examples, signature_name="s" * HUGE) == 400
  finally:
    server.stop()

  lines = _lines(str(audit_file) + "*")
  lines = [line for line in lines if line["api"] == "Predict"]  # Not the readiness checks.
  legitimate = [line for line in lines if line["model"] == MODEL_NAME and line["status"] == "OK"]
  assert len(legitimate) == 20
  attacks = [line for line in lines if line not in legitimate]
  assert len(attacks) == 4
  for line in attacks[:3]:
    assert line["status"] == "NOT_FOUND"
    assert len(line["model"]) <= log_writer.MAX_FIELD_CHARS
    assert line["model"].endswith(f"...[cut from {HUGE + 1} characters]")
  assert attacks[3]["signature"].endswith(f"...[cut from {HUGE} characters]")
  assert len(attacks[3]["signature"]) == log_writer.MAX_FIELD_CHARS
  # Every line is small; the files stay far below one rotation.
  assert os.path.getsize(audit_file) < 64 * 1024 and not os.path.exists(f"{audit_file}.1")


@pytest.fixture(scope="module")
def secured(canned, tmp_path_factory):
  """A server with tokens, HS256 JWTs, reload enabled and an audit log; its audit file."""
  tmp_path = tmp_path_factory.mktemp("secured-audit")
  tokens, secret = tmp_path / "tokens", tmp_path / "jwt.secret"
  tokens.write_text(TOKENS)
  secret.write_text(JWT_SECRET)
  audit_file = tmp_path / "audit.jsonl"
  server = conftest.start_server(
    wait_for=(),
    model_base_path=canned.base_path,
    file_system_poll_wait_seconds=0,
    auth_tokens_file=str(tokens),
    jwt_secret_file=str(secret),
    audit_log_file=str(audit_file),
    enable_model_config_reload=True,
  )
  yield server, audit_file
  server.stop()


def _audited(audit_file, count):
  """Waits for `count` audit lines of requests that arrive from now on, and returns them."""
  since = datetime.datetime.now(datetime.timezone.utc)

  def written():
    lines = audit_file.read_text().splitlines() if audit_file.exists() else []
    lines = [json.loads(line) for line in lines]
    lines = [line for line in lines if _arrived(line) >= since]
    return len(lines) >= count and lines

  return written


def _arrived(line):
  return datetime.datetime.fromisoformat(line["time"].replace("Z", "+00:00"))


def _jwt(key=JWT_SECRET, **claims):
  claims.setdefault("exp", int(time.time()) + 60)
  return jwt.encode(claims, key, algorithm="HS256")


def test_refused_callers_are_recorded_by_the_principal_they_claim_never_a_token(secured, examples):
  server, audit_file = secured
  audit_file.touch()
  forged = _jwt("f" * 40, sub="mallory")
  long_claim = _jwt("f" * 40, sub="z" * 5000)
  calls = [
    ("alice-secret-1", grpc.StatusCode.OK, "alice", True),
    ("bob-secret-2", grpc.StatusCode.PERMISSION_DENIED, "bob", True),
    ("not-a-listed-token", grpc.StatusCode.UNAUTHENTICATED, "", False),
    (forged, grpc.StatusCode.UNAUTHENTICATED, "mallory", False),
    (_jwt(sub="carol", exp=int(time.time()) - 5), grpc.StatusCode.UNAUTHENTICATED, "carol", False),
    (_jwt(sub="carol", models=["other_model"]), grpc.StatusCode.PERMISSION_DENIED, "carol", True),
    (None, grpc.StatusCode.UNAUTHENTICATED, "", False),
  ]
  wait = _audited(audit_file, len(calls) * 2 + 1)
  for token, code, _, _ in calls:
    assert _predict(server, examples, token) == code
  for token, code, _, _ in calls:
    assert (
      _rest_predict(server, examples, token)
      == {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.PERMISSION_DENIED: 403,
        grpc.StatusCode.UNAUTHENTICATED: 401,
      }[code]
    )
  assert _predict(server, examples, long_claim) == grpc.StatusCode.UNAUTHENTICATED
  lines = conftest.wait_until(wait, timeout=10)

  expected = [(code.name, principal, authenticated) for _, code, principal, authenticated in calls]
  recorded = [(line["status"], line["principal"], line["authenticated"]) for line in lines]
  assert recorded[: len(calls)] == expected  # gRPC
  assert recorded[len(calls) : 2 * len(calls)] == expected  # REST
  assert [line["entrypoint"] for line in lines[:-1]] == ["GRPC"] * len(calls) + ["REST"] * len(
    calls
  )
  claimed = lines[-1]["principal"]
  assert claimed.startswith("z" * 200) and claimed.endswith("z...[cut from 5000 characters]")
  assert len(claimed) == log_writer.MAX_FIELD_CHARS
  assert not lines[-1]["authenticated"]
  text = audit_file.read_text()
  for secret in ("alice-secret-1", "bob-secret-2", "not-a-listed-token", forged, JWT_SECRET):
    assert secret not in text


@pytest.mark.parametrize(
  "claims, message",
  [
    ({"sub": "carol", "models": None}, "'models' claim must be a list"),
    ({"sub": ""}, "'sub' claim must name a principal"),
    ({"sub": "  "}, "'sub' claim must name a principal"),
  ],
)
def test_a_jwt_with_null_models_or_an_empty_sub_is_refused_over_grpc_and_rest(
  secured, examples, claims, message
):
  # Issue 21: `"models": null` was allowed every model and the reload RPC; `"sub": ""` passed.
  server, _ = secured
  token = _jwt(**claims)
  assert _predict(server, examples, token) == grpc.StatusCode.UNAUTHENTICATED
  assert _rest_predict(server, examples, token) == 401
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name=MODEL_NAME, base_path="/etc")
    with pytest.raises(grpc.RpcError) as raised:
      stub.HandleReloadConfigRequest(
        request, timeout=DEADLINE_SECONDS, metadata=[("authorization", f"Bearer {token}")]
      )
  assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
  assert message in raised.value.details()
  assert server.manager.config.model_config_list.config[0].base_path != "/etc"


def _models_config(*models):
  """A config of (name, base path[, "all"]) models; "all": every version is served."""
  config = model_server_config_pb2.ModelServerConfig()
  for name, base_path, *policy in models:
    model = config.model_config_list.config.add(
      name=name, base_path=base_path, model_platform="tensorflow"
    )
    if policy:
      model.model_version_policy.all.SetInParent()
  return config


def test_config_reloads_are_audited_with_who_what_and_the_result(secured, canned):
  # Issue 21: HandleReloadConfigRequest was never audited.
  server, audit_file = secured
  audit_file.touch()
  tflite = (TFLITE_MODEL_NAME, canned.tflite_base_path)
  main = (MODEL_NAME, canned.base_path)
  attempts = [
    (None, _models_config(main), grpc.StatusCode.UNAUTHENTICATED),
    ("bob-secret-2", _models_config(main), grpc.StatusCode.PERMISSION_DENIED),
    ("alice-secret-1", _models_config((*main, "all"), tflite), grpc.StatusCode.OK),
    ("alice-secret-1", _models_config(tflite), grpc.StatusCode.OK),
    ("alice-secret-1", _models_config((MODEL_NAME, "relative")), grpc.StatusCode.INVALID_ARGUMENT),
    ("alice-secret-1", _models_config(main), grpc.StatusCode.OK),
  ]
  wait = _audited(audit_file, len(attempts))
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    for token, config, code in attempts:
      metadata = [("authorization", f"Bearer {token}")] if token else None
      try:
        stub.HandleReloadConfigRequest(
          model_management_pb2.ReloadConfigRequest(config=config), timeout=60, metadata=metadata
        )
        answered = grpc.StatusCode.OK
      except grpc.RpcError as e:
        answered = e.code()
      assert answered == code
  lines = conftest.wait_until(wait, timeout=10)

  assert [line["api"] for line in lines] == ["HandleReloadConfigRequest"] * len(attempts)
  assert [line["status"] for line in lines] == [code.name for _, _, code in attempts]
  assert [(line["principal"], line["authenticated"]) for line in lines] == [
    ("", False),
    ("bob", True),
    ("alice", True),
    ("alice", True),
    ("alice", True),
    ("alice", True),
  ]
  assert all(line["entrypoint"] == "GRPC" and line["peer"] for line in lines)
  changes = [
    {key: line.get(key) for key in ("added", "removed", "changed") if key in line} for line in lines
  ]
  assert changes == [
    {},
    {},
    {"added": [TFLITE_MODEL_NAME], "removed": [], "changed": [MODEL_NAME]},
    {"added": [], "removed": [MODEL_NAME], "changed": []},
    {},
    {"added": [MODEL_NAME], "removed": [TFLITE_MODEL_NAME], "changed": []},
  ]
  assert "absolute path" in lines[4]["error"]
  assert "may not reload" in lines[1]["error"]


def test_config_file_reloads_are_audited(canned, tmp_path):
  config_file = tmp_path / "models.config"
  config_file.write_text(str(_models_config((MODEL_NAME, canned.base_path))))
  audit_file = tmp_path / "audit.jsonl"
  server = conftest.start_server(
    model_config_file=str(config_file),
    model_config_file_poll_wait_seconds=1,
    file_system_poll_wait_seconds=0,
    audit_log_file=str(audit_file),
  )
  try:
    wait = _audited(audit_file, 1)
    config_file.write_text(
      str(
        _models_config((MODEL_NAME, canned.base_path), (TFLITE_MODEL_NAME, canned.tflite_base_path))
      )
    )
    [line] = conftest.wait_until(wait, timeout=30)
  finally:
    server.stop()
  assert line["api"] == "HandleReloadConfigRequest" and line["status"] == "OK"
  assert line["entrypoint"] == "CONFIG_FILE" and line["peer"] == f"file:{config_file}"
  assert (line["principal"], line["authenticated"]) == ("", False)
  assert (line["added"], line["removed"], line["changed"]) == ([TFLITE_MODEL_NAME], [], [])


def test_a_deleted_audit_file_is_opened_again_and_the_lines_lost_are_counted_and_stated(
  canned, examples, tmp_path
):
  # Issue 21: deleting audit.log while running lost every later line, 0 counted.
  server, audit_file = _audited_server(canned, tmp_path)
  try:
    wait = _audited(audit_file, 3)
    for _ in range(3):
      assert _predict(server, examples) == grpc.StatusCode.OK
    conftest.wait_until(wait, timeout=10)
    # The readiness checks' GetModelStatus calls are audited too.
    written = len(audit_file.read_text().splitlines())
    audit_file.unlink()
    for _ in range(2):
      assert _predict(server, examples) == grpc.StatusCode.OK
    conftest.wait_until(
      lambda: audit_file.exists() and len(audit_file.read_text().splitlines()) == 3
    )
    counted = f'log_records_dropped{{log="audit_log",reason="file_deleted"}} {written}'
    conftest.wait_until(
      lambda: any(line.endswith(counted) for line in _metrics(server).splitlines()), timeout=10
    )
  finally:
    server.stop()
  notice, *requests = [json.loads(line) for line in audit_file.read_text().splitlines()]
  assert notice["event"] == "audit_log_reopened"
  assert (notice["reason"], notice["lines_lost"]) == ("deleted", written)
  assert [line["status"] for line in requests] == ["OK", "OK"]
