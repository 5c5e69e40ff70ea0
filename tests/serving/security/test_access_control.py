"""Access control (tokens file, JWTs), TLS on both ports, and the reload RPC switch."""

import base64
import concurrent.futures
import http.client
import json
import ssl
import time

import grpc
import jwt
import portpicker
import pytest
import tensorflow as tf
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from tensorflow_serving.apis import model_management_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.serving import model_server
from next_category.serving import status
from next_category.serving.config import flags
from next_category.serving.security import auth
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME
from tests.testing import tls

TOKENS = """
# token          principal  models
alice-secret-1   alice
bob-secret-2     bob        other_model
"""


def _pem(key) -> bytes:
  return key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
  )


@pytest.fixture(scope="module")
def rsa_key():
  return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwt(key, algorithm="RS256", **claims):
  claims.setdefault("sub", "carol")
  claims.setdefault("exp", int(time.time()) + 60)
  return jwt.encode(claims, key, algorithm=algorithm)


def _code(call):
  with pytest.raises(status.ServingError) as raised:
    call()
  return raised.value.code


def test_tokens_file_principals_and_models(tmp_path):
  path = tmp_path / "tokens"
  path.write_text(TOKENS)
  authenticator = auth.Authenticator(tokens_file=str(path))
  assert authenticator.authorize("Bearer alice-secret-1", "anything").name == "alice"
  assert authenticator.authorize("bearer bob-secret-2", "other_model").name == "bob"
  assert _code(lambda: authenticator.authorize("Bearer bob-secret-2", MODEL_NAME)) == (
    grpc.StatusCode.PERMISSION_DENIED
  )
  for bad in (None, "", "Bearer nope", "Basic YWxpY2U=", "Bearer alice-secret-"):
    assert _code(lambda bad=bad: authenticator.authorize(bad, MODEL_NAME)) == (
      grpc.StatusCode.UNAUTHENTICATED
    )


@pytest.mark.parametrize(
  "text, message",
  [
    ("lonely-token\n", "expected TOKEN PRINCIPAL"),
    ("t a m1, m2\n", "separate the models with commas"),
    ("t a\nt b\n", "already listed"),
    ("# only a comment\n", "lists no token"),
  ],
)
def test_bad_tokens_files(tmp_path, text, message):
  path = tmp_path / "tokens"
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    auth.Authenticator(tokens_file=str(path))


def test_jwt_rs256_es256_hs256(tmp_path, rsa_key):
  rsa_file = tmp_path / "rsa.pem"
  rsa_file.write_bytes(_pem(rsa_key))
  authenticator = auth.Authenticator(jwt_public_key_file=str(rsa_file), jwt_audience="serving")
  token = _jwt(rsa_key, aud="serving", models=[MODEL_NAME])
  assert authenticator.authorize(f"Bearer {token}", MODEL_NAME).name == "carol"
  assert _code(lambda: authenticator.authorize(f"Bearer {token}", "other")) == (
    grpc.StatusCode.PERMISSION_DENIED
  )
  expired = _jwt(rsa_key, aud="serving", exp=int(time.time()) - 10)
  wrong_audience = _jwt(rsa_key, aud="elsewhere")
  no_exp = jwt.encode({"sub": "carol", "aud": "serving"}, rsa_key, algorithm="RS256")
  other_key = _jwt(rsa.generate_private_key(public_exponent=65537, key_size=2048), aud="serving")
  for bad, message in (
    (expired, "expired"),
    (wrong_audience, "audience"),
    (no_exp, "'exp'"),
    (other_key, "not valid"),
  ):
    with pytest.raises(status.ServingError, match=message) as raised:
      authenticator.authorize(f"Bearer {bad}", MODEL_NAME)
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED

  ec_key = ec.generate_private_key(ec.SECP256R1())
  ec_file = tmp_path / "ec.pem"
  ec_file.write_bytes(_pem(ec_key))
  es256 = auth.Authenticator(jwt_public_key_file=str(ec_file))
  assert es256.authorize(f"Bearer {_jwt(ec_key, 'ES256')}", MODEL_NAME).name == "carol"
  # An HS256 token must not pass as signed by the public key (algorithm confusion).
  confused = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "k" * 32, algorithm="HS256")
  assert _code(lambda: es256.authorize(f"Bearer {confused}", MODEL_NAME)) == (
    grpc.StatusCode.UNAUTHENTICATED
  )

  secret_file = tmp_path / "secret"
  secret_file.write_text("s" * 40 + "\n")
  hs256 = auth.Authenticator(jwt_secret_file=str(secret_file))
  assert hs256.authorize(f"Bearer {_jwt('s' * 40, 'HS256', sub='dave')}", MODEL_NAME).name == "dave"
  secret_file.write_text("short")
  with pytest.raises(ValueError, match="at least 32 bytes"):
    auth.Authenticator(jwt_secret_file=str(secret_file))


def test_remembered_credentials_keep_every_check(tmp_path, rsa_key, monkeypatch):
  """Remembered credentials: a JWT only until its exp, with the model list still applied.

  A credential that failed is checked in full every time.
  """
  rsa_file = tmp_path / "rsa.pem"
  rsa_file.write_bytes(_pem(rsa_key))
  tokens = tmp_path / "tokens"
  tokens.write_text(TOKENS)
  authenticator = auth.Authenticator(tokens_file=str(tokens), jwt_public_key_file=str(rsa_file))
  now = time.time()
  token = _jwt(rsa_key, exp=int(now) + 30, models=[MODEL_NAME])
  checks = []
  full_check = authenticator._check  # pylint: disable=protected-access
  monkeypatch.setattr(
    authenticator, "_check", lambda value: checks.append(value) or full_check(value)
  )

  for _ in range(3):
    assert authenticator.authorize(f"Bearer {token}", MODEL_NAME).name == "carol"
    assert _code(lambda: authenticator.authorize(f"Bearer {token}", "other")) == (
      grpc.StatusCode.PERMISSION_DENIED
    )
    assert authenticator.authorize("Bearer alice-secret-1", MODEL_NAME).name == "alice"
    assert _code(lambda: authenticator.authorize("Bearer wrong", MODEL_NAME)) == (
      grpc.StatusCode.UNAUTHENTICATED
    )
  assert checks == [f"Bearer {token}", "Bearer alice-secret-1"] + ["Bearer wrong"] * 3

  # Past its exp the JWT is no longer remembered: it goes through PyJWT again
  # (whose own clock, not patched here, decides; test_jwt_rs256_es256_hs256 covers refusing it).
  monkeypatch.setattr(time, "time", lambda: now + 31)
  authenticator.authorize(f"Bearer {token}", MODEL_NAME)
  assert checks[-1] == f"Bearer {token}" and len(checks) == 6


@pytest.fixture(scope="module")
def secured(canned, tmp_path_factory, rsa_key):
  """A server with tokens, JWTs, protected metrics, TLS on both ports and reload enabled."""
  tmp_path = tmp_path_factory.mktemp("secured")
  tokens = tmp_path / "tokens"
  tokens.write_text(TOKENS)
  cert_file, key_file = tls.self_signed(tmp_path)
  ssl_config = tmp_path / "ssl.config"
  ssl_config.write_text(
    f"server_key: {json.dumps(open(key_file).read())}\n"
    f"server_cert: {json.dumps(open(cert_file).read())}\n"
  )
  server = model_server.ModelServer(
    flags.ServerOptions(
      port=portpicker.pick_unused_port(),
      rest_api_port=portpicker.pick_unused_port(),
      model_name=MODEL_NAME,
      model_base_path=canned.base_path,
      file_system_poll_wait_seconds=0,
      monitoring_config_file=conftest.MONITORING_CONFIG,
      auth_tokens_file=str(tokens),
      protect_metrics=True,
      rest_ssl_cert_file=cert_file,
      rest_ssl_key_file=key_file,
      ssl_config_file=str(ssl_config),
      enable_model_config_reload=True,
    )
  )
  server.start()
  credentials = grpc.ssl_channel_credentials(root_certificates=open(cert_file, "rb").read())
  channel = grpc.secure_channel(
    f"127.0.0.1:{server.grpc_port}",
    credentials,
    options=[("grpc.ssl_target_name_override", "localhost")],
  )
  context = ssl.create_default_context(cafile=cert_file)
  yield server, channel, context
  channel.close()
  server.stop()


def _predict(channel, examples, token=None, model=MODEL_NAME):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples[:1], dtype=tf.string))
  metadata = [("authorization", f"Bearer {token}")] if token else None
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  try:
    stub.Predict(request, timeout=DEADLINE_SECONDS, metadata=metadata)
    return grpc.StatusCode.OK
  except grpc.RpcError as e:
    return e.code()


def test_grpc_over_tls_needs_a_token_for_the_model(secured, examples):
  _, channel, _ = secured
  assert _predict(channel, examples) == grpc.StatusCode.UNAUTHENTICATED
  assert _predict(channel, examples, "wrong") == grpc.StatusCode.UNAUTHENTICATED
  assert _predict(channel, examples, "bob-secret-2") == grpc.StatusCode.PERMISSION_DENIED
  assert _predict(channel, examples, "alice-secret-1") == grpc.StatusCode.OK


def test_calls_in_flight_together_each_keep_their_own_credentials(secured, examples):
  # Batched calls wait together on the server; each must be judged on its own
  # metadata (grpc_service hands it to the handler through the call's task).
  _, channel, _ = secured
  tokens = [None, "alice-secret-1", "bob-secret-2", "wrong"] * 24
  expected = {
    None: grpc.StatusCode.UNAUTHENTICATED,
    "alice-secret-1": grpc.StatusCode.OK,
    "bob-secret-2": grpc.StatusCode.PERMISSION_DENIED,
    "wrong": grpc.StatusCode.UNAUTHENTICATED,
  }
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    codes = list(pool.map(lambda token: _predict(channel, examples, token), tokens))
  assert codes == [expected[token] for token in tokens]


def _https(secured, method, path, token=None, body=None):
  server, _, context = secured
  connection = http.client.HTTPSConnection(
    "localhost", server.rest_port, timeout=DEADLINE_SECONDS, context=context
  )
  headers = {"Authorization": f"Bearer {token}"} if token else {}
  try:
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()
  finally:
    connection.close()


def test_rest_over_https_401_403_200_and_protected_metrics(secured, examples):
  path = f"/v1/models/{MODEL_NAME}"
  body = json.dumps({"instances": [{"b64": base64.b64encode(examples[0]).decode()}]})
  assert _https(secured, "GET", path)[0] == 401
  assert _https(secured, "POST", path + ":predict", "bob-secret-2", body)[0] == 403
  code, answer = _https(secured, "POST", path + ":predict", "alice-secret-1", body)
  assert code == 200 and b"predictions" in answer
  assert _https(secured, "GET", "/monitoring/prometheus/metrics")[0] == 401
  code, metrics = _https(secured, "GET", "/monitoring/prometheus/metrics", "bob-secret-2")
  assert code == 200 and b'status="UNAUTHENTICATED"' in metrics
  # Plain HTTP on the TLS port gets no answer.
  plain = http.client.HTTPConnection("127.0.0.1", secured[0].rest_port, timeout=DEADLINE_SECONDS)
  with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
    plain.request("GET", path)
    plain.getresponse()
  plain.close()


def test_reload_needs_a_principal_allowed_every_model(secured):
  server, channel, _ = secured
  stub = model_service_pb2_grpc.ModelServiceStub(channel)
  request = model_management_pb2.ReloadConfigRequest()
  request.config.model_config_list.config.add(name=MODEL_NAME, base_path="/etc")
  for metadata, code in (
    (None, grpc.StatusCode.UNAUTHENTICATED),
    ([("authorization", "Bearer bob-secret-2")], grpc.StatusCode.PERMISSION_DENIED),
  ):
    with pytest.raises(grpc.RpcError) as raised:
      stub.HandleReloadConfigRequest(request, timeout=DEADLINE_SECONDS, metadata=metadata)
    assert raised.value.code() == code
  assert server.manager.config.model_config_list.config[0].base_path != "/etc"


def test_reload_rpc_is_off_by_default(canned):
  server = conftest.start_server(model_base_path=canned.base_path, file_system_poll_wait_seconds=0)
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
      stub = model_service_pb2_grpc.ModelServiceStub(channel)
      request = model_management_pb2.ReloadConfigRequest()
      request.config.model_config_list.config.add(name=MODEL_NAME, base_path="/etc")
      with pytest.raises(grpc.RpcError) as raised:
        stub.HandleReloadConfigRequest(request, timeout=DEADLINE_SECONDS)
      assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
      assert "--enable_model_config_reload" in raised.value.details()
    assert conftest.version_states(f"127.0.0.1:{server.grpc_port}") == {1: "AVAILABLE"}
  finally:
    server.stop()


def _refusal(authenticator, authorization, model=MODEL_NAME):
  with pytest.raises(auth.AccessDenied) as raised:
    authenticator.authorize(authorization, model)
  return raised.value.code, raised.value.principal, raised.value.authenticated


def test_a_refusal_names_the_principal_refused_or_claimed_never_the_token(tmp_path):
  tokens, secret = tmp_path / "tokens", tmp_path / "secret"
  tokens.write_text(TOKENS)
  secret.write_text("s" * 40)
  authenticator = auth.Authenticator(tokens_file=str(tokens), jwt_secret_file=str(secret))
  denied, unauthenticated = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
  forged = _jwt("f" * 40, "HS256", sub="mallory")
  assert _refusal(authenticator, "Bearer bob-secret-2") == (denied, "bob", True)
  assert _refusal(authenticator, f"Bearer {forged}") == (unauthenticated, "mallory", False)
  expired = _jwt("s" * 40, "HS256", sub="carol", exp=int(time.time()) - 5)
  assert _refusal(authenticator, f"Bearer {expired}") == (unauthenticated, "carol", False)
  # A token that matches no line, or no JWT at all, claims nobody: nothing of it is kept.
  for nothing in (None, "", "Basic YWxpY2U=", "Bearer alice-secret-", "Bearer a.b.c"):
    assert _refusal(authenticator, nothing) == (unauthenticated, "", False)
  no_sub = jwt.encode({"exp": int(time.time()) + 60}, "s" * 40, algorithm="HS256")
  assert _refusal(authenticator, f"Bearer {no_sub}") == (unauthenticated, "", False)


@pytest.mark.parametrize(
  "claims, message",
  [
    ({"models": None}, "'models' claim must be a list"),
    ({"models": {"next_category": True}}, "'models' claim must be a list"),
    ({"sub": ""}, "'sub' claim must name a principal"),
    ({"sub": " \t"}, "'sub' claim must name a principal"),
  ],
)
def test_a_jwt_with_null_models_or_an_empty_sub_is_refused(tmp_path, claims, message):
  secret = tmp_path / "secret"
  secret.write_text("s" * 40)
  authenticator = auth.Authenticator(jwt_secret_file=str(secret))
  token = f"Bearer {_jwt('s' * 40, 'HS256', **claims)}"
  for check in (
    lambda: authenticator.authorize(token, MODEL_NAME),
    lambda: authenticator.authorize_admin(token),
  ):
    with pytest.raises(auth.AccessDenied, match=message) as raised:
      check()
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED
  # Left out, `models` still means every model; an empty list, none.
  assert authenticator.authorize_admin(f"Bearer {_jwt('s' * 40, 'HS256')}").name == "carol"
  empty = f"Bearer {_jwt('s' * 40, 'HS256', models=[])}"
  assert _refusal(authenticator, empty)[0] == grpc.StatusCode.PERMISSION_DENIED
