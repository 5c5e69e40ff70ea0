"""Request logs (a model's logging_config) and the audit log, written off the request path."""

import base64
import glob
import http.client
import json
import os
import time

import grpc
import pytest
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2
from tensorflow_serving.config import logging_config_pb2

from next_category.serving import model_server
from next_category.serving.config import flags
from next_category.serving.observability import audit
from next_category.serving.observability import request_log
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME


def _config(base_path, prefix, rate=1.0):
  return f"""
model_config_list {{
  config {{
    name: "{MODEL_NAME}" base_path: "{base_path}" model_platform: "tensorflow"
    logging_config {{
      sampling_config {{ sampling_rate: {rate} }}
      log_collector_config {{ type: "tfrecord" filename_prefix: "{prefix}" }}
    }}
  }}
}}
"""


def _start(tmp_path, base_path, rate=1.0, **options):
  (tmp_path / "logs").mkdir(exist_ok=True)
  config = tmp_path / "models.config"
  config.write_text(_config(base_path, tmp_path / "logs" / MODEL_NAME, rate))
  # `start` returns once every model has a version (GetModelStatus needs a token here).
  return conftest.start_server(
    wait_for=(),
    model_config_file=str(config),
    file_system_poll_wait_seconds=0,
    monitoring_config_file=conftest.MONITORING_CONFIG,
    **options,
  )


def _predict(server, examples, metadata=None):
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL_NAME
  request.inputs["examples"].CopyFrom(tf.make_tensor_proto(examples, dtype=tf.string))
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Predict(request, timeout=DEADLINE_SECONDS, metadata=metadata)


def _classify(server, examples):
  request = classification_pb2.ClassificationRequest()
  request.model_spec.name = MODEL_NAME
  request.model_spec.signature_name = "classification"
  for example in examples:
    request.input.example_list.examples.add().ParseFromString(example)
  with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    return stub.Classify(request, timeout=DEADLINE_SECONDS)


def _sample_messages(api):
  """A request and response of `api` with every field the log keeps set."""
  if api == "Predict":
    request, response = predict_pb2.PredictRequest(), predict_pb2.PredictResponse()
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b"a", b"bc"], dtype=tf.string))
    request.output_filter.append("scores")
    response.outputs["scores"].CopyFrom(tf.make_tensor_proto([[0.25, 0.75]] * 2))
  elif api == "Classify":
    request = classification_pb2.ClassificationRequest()
    response = classification_pb2.ClassificationResponse()
    request.input.example_list.examples.add().features.feature["x"].int64_list.value.append(3)
    response.result.classifications.add().classes.add(label="shoes", score=0.5)
  else:
    request, response = regression_pb2.RegressionRequest(), regression_pb2.RegressionResponse()
    request.input.example_list.examples.add().features.feature["x"].float_list.value.append(1.5)
    response.result.regressions.add(value=2.5)
  request.model_spec.name = MODEL_NAME
  response.model_spec.name = MODEL_NAME
  response.model_spec.version.value = 7
  response.model_spec.signature_name = "serving_default"
  return request, response


@pytest.mark.parametrize("api", ["Predict", "Classify", "Regress"])
@pytest.mark.parametrize("rate,timestamp", [(0.25, 1_790_000_000), (0.0, 0)])
def test_prediction_log_from_bytes_equals_the_message(api, rate, timestamp):
  """The record put together from serialized parts is the PredictionLog built field by field."""
  request, response = _sample_messages(api)
  sampling = logging_config_pb2.SamplingConfig(sampling_rate=rate)
  expected = prediction_log_pb2.PredictionLog()
  expected.log_metadata.model_spec.CopyFrom(response.model_spec)
  expected.log_metadata.sampling_config.CopyFrom(sampling)
  expected.log_metadata.timestamp_secs = timestamp
  field = {"Predict": "predict_log", "Classify": "classify_log", "Regress": "regress_log"}[api]
  entry = getattr(expected, field)
  entry.request.CopyFrom(request)
  entry.response.CopyFrom(response)

  record = request_log.prediction_log(
    api, request, response, sampling.SerializeToString(), timestamp
  )

  assert prediction_log_pb2.PredictionLog.FromString(record) == expected
  assert record == expected.SerializeToString(deterministic=True)
  # From the bytes as received and as sent (the gRPC path).
  from_bytes = request_log.prediction_log(
    api,
    request.SerializeToString(),
    response,
    sampling.SerializeToString(),
    timestamp,
    response_bytes=response.SerializeToString(),
  )
  assert from_bytes == record


def _example_json(serialized):
  """A tf.Example as the REST API's JSON object of features."""
  features = {}
  for key, feature in example_pb2.Example.FromString(serialized).features.feature.items():
    kind = feature.WhichOneof("kind")
    values = list(getattr(feature, kind).value)
    features[key] = [v.decode() for v in values] if kind == "bytes_list" else values
  return features


def _rest(server, verb, body, token=None):
  """POSTs `body` to the model's `:verb` and returns the HTTP status."""
  connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=DEADLINE_SECONDS)
  headers = {"Authorization": f"Bearer {token}"} if token else {}
  connection.request("POST", f"/v1/models/{MODEL_NAME}:{verb}", json.dumps(body), headers)
  code = connection.getresponse().status
  connection.close()
  return code


def _call(server, transport, api, examples, token=None):
  """One Predict or Classify of serialized `examples` over gRPC or REST; True when answered."""
  if transport == "grpc":
    metadata = [("authorization", f"Bearer {token}")] if token else None
    try:
      if api == "Predict":
        _predict(server, examples, metadata)
      else:
        _classify(server, examples)
    except grpc.RpcError:
      return False
    return True
  if api == "Predict":
    body = {"instances": [{"b64": base64.b64encode(e).decode()} for e in examples]}
    return _rest(server, "predict", body, token) == 200
  body = {
    "signature_name": "classification",
    "examples": [_example_json(e) for e in examples],
  }
  return _rest(server, "classify", body) == 200


def _logs(pattern):
  records = []
  for path in sorted(glob.glob(pattern)):
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
      records.append(prediction_log_pb2.PredictionLog.FromString(record.numpy()))
  return records


def _metrics(server):
  connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=DEADLINE_SECONDS)
  connection.request("GET", "/monitoring/prometheus/metrics")
  text = connection.getresponse().read().decode()
  connection.close()
  return text


def test_sampled_requests_become_prediction_logs_and_audit_lines(canned, examples, tmp_path):
  tokens = tmp_path / "tokens"
  tokens.write_text("alice-token alice\n")
  audit_file = tmp_path / "audit.jsonl"
  server = _start(
    tmp_path,
    canned.base_path,
    auth_tokens_file=str(tokens),
    audit_log_file=str(audit_file),
    request_log_max_file_bytes=3000,
    request_log_max_files=3,
  )
  try:
    for _ in range(6):
      assert _call(server, "grpc", "Predict", examples[:4], "alice-token")
    # No token: refused, audited, not logged.
    assert not _call(server, "grpc", "Predict", examples[:1])
    assert _call(server, "rest", "Predict", examples[:1], "alice-token")
  finally:
    server.stop()

  files = glob.glob(str(tmp_path / "logs" / f"{MODEL_NAME}-*.tfrecord.gz"))
  # Each record is over 1 KB: files rotate at 3000 bytes, at most 3 are kept.
  assert 2 <= len(files) <= 3
  logs = _logs(str(tmp_path / "logs" / f"{MODEL_NAME}-*.tfrecord.gz"))
  assert logs and all(log.WhichOneof("log_type") == "predict_log" for log in logs)
  first = logs[0]
  assert first.log_metadata.model_spec.name == MODEL_NAME
  assert first.log_metadata.model_spec.version.value == 1
  assert first.log_metadata.sampling_config.sampling_rate == 1.0
  assert list(first.predict_log.request.inputs["examples"].string_val) == examples[:4]
  assert "probabilities" in first.predict_log.response.outputs

  lines = [json.loads(line) for line in audit_file.read_text().splitlines()]
  assert len(lines) == 8
  assert lines[0]["principal"] == "alice" and lines[0]["model"] == MODEL_NAME
  assert lines[0]["version"] == "1" and lines[0]["api"] == "Predict"
  assert lines[0]["entrypoint"] == "GRPC" and lines[0]["examples"] == 4
  assert lines[0]["status"] == "OK" and lines[0]["signature"] == ""
  assert lines[0]["peer"].startswith(("ipv4:127.0.0.1:", "ipv6:")) and lines[0]["latency_ms"] > 0
  assert lines[0]["time"].endswith("Z")
  assert lines[6]["status"] == "UNAUTHENTICATED" and lines[6]["principal"] == ""
  assert lines[0]["authenticated"] and not lines[6]["authenticated"]
  assert lines[7]["entrypoint"] == "REST" and lines[7]["examples"] == 1
  assert lines[7]["peer"].startswith("127.0.0.1:")
  text = audit_file.read_text()
  # Never the payload.
  assert base64.b64encode(examples[0]).decode()[:16] not in text
  assert "item_history" not in text


def test_rest_calls_write_the_records_their_grpc_calls_write(canned, examples, tmp_path):
  server = _start(tmp_path, canned.base_path)
  calls = [(api, transport) for api in ("Predict", "Classify") for transport in ("grpc", "rest")]
  try:
    for api, transport in calls:
      assert _call(server, transport, api, examples[:2]), (api, transport)
  finally:
    server.stop()
  logs = _logs(str(tmp_path / "logs" / f"{MODEL_NAME}-*.tfrecord.gz"))
  kinds = ["predict_log", "predict_log", "classify_log", "classify_log"]
  assert [log.WhichOneof("log_type") for log in logs] == kinds
  for log in logs:
    log.log_metadata.ClearField("timestamp_secs")
  predict_grpc, predict_rest, classify_grpc, classify_rest = logs
  assert predict_rest == predict_grpc
  assert list(predict_rest.predict_log.request.inputs["examples"].string_val) == examples[:2]
  assert predict_rest.predict_log.response.model_spec.signature_name == "serving_default"
  assert classify_rest == classify_grpc
  assert len(classify_rest.classify_log.request.input.example_list.examples) == 2
  assert len(classify_rest.classify_log.response.result.classifications) == 2


def test_zero_rate_logs_nothing(canned, examples, tmp_path):
  server = _start(tmp_path, canned.base_path, rate=0.0)
  try:
    for transport in ("grpc", "rest"):
      for api in ("Predict", "Classify"):
        assert _call(server, transport, api, examples[:2])
  finally:
    server.stop()
  assert not glob.glob(str(tmp_path / "logs" / "*"))


def test_unwritable_logs_drop_and_count_without_failing_requests(canned, examples, tmp_path):
  audit_file = tmp_path / "audit.jsonl"
  server = _start(tmp_path, canned.base_path, audit_log_file=str(audit_file))
  try:
    # The disk "fills": both log locations become unwritable under the server.
    os.rmdir(tmp_path / "logs")
    (tmp_path / "logs").write_text("now a file")
    audit_file.unlink(missing_ok=True)
    audit_file.mkdir()
    for transport in ("grpc", "grpc", "rest"):
      assert _call(server, transport, "Predict", examples[:1])
    counted = (
      'log="request_log",reason="write_error"} 3\n',
      'log="audit_log",reason="write_error"} 3\n',
    )
    # Each log's writer process reports its drops when its round fails.
    conftest.wait_until(lambda: all(line in _metrics(server) for line in counted), timeout=10)
  finally:
    server.stop()


def test_audit_log_rotates(tmp_path):
  path = tmp_path / "audit.jsonl"
  log = audit.AuditLog(str(path), max_bytes=1000, backup_count=2)
  record = audit.AuditRecord(
    time=time.time(),
    peer="ipv4:127.0.0.1:1",
    principal="p",
    authenticated=True,
    model="m",
    version="1",
    api="Predict",
    entrypoint="GRPC",
    signature="",
    examples=1,
    status="OK",
    latency_ms=1.0,
  )
  for _ in range(40):
    log.record(record)
  log.close()
  names = sorted(os.listdir(tmp_path))
  assert names == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
  for name in names:
    assert os.path.getsize(tmp_path / name) <= 1000
    assert all(json.loads(line)["model"] == "m" for line in open(tmp_path / name))


@pytest.mark.parametrize(
  "collector, message",
  [
    ('type: "kafka" filename_prefix: "/tmp/x"', "type 'kafka' is not supported"),
    ('type: "tfrecord"', "needs a filename_prefix"),
    ('type: "tfrecord" filename_prefix: "/no/such/dir/x"', "does not exist"),
  ],
)
def test_bad_logging_configs_are_refused(canned, tmp_path, collector, message):
  config = tmp_path / "models.config"
  config.write_text(
    f'model_config_list {{ config {{ name: "m" base_path: "{canned.base_path}" '
    'model_platform: "tensorflow" '
    f"logging_config {{ log_collector_config {{ {collector} }} }} }} }}"
  )
  with pytest.raises(ValueError, match=message):
    model_server.ModelServer(flags.ServerOptions(model_config_file=str(config)))


def test_two_models_logging_to_one_prefix_are_refused(canned, tmp_path):
  # Each model's writer deletes its oldest files: sharing a prefix, they would delete each other's.
  config = tmp_path / "models.config"
  logging_config = (
    'logging_config { sampling_config { sampling_rate: 1 } log_collector_config { type: "tfrecord" '
    f'filename_prefix: "{tmp_path}/logs" }} }}'
  )
  config.write_text(
    "model_config_list { "
    + "".join(
      f'config {{ name: "{name}" base_path: "{canned.base_path}" model_platform: "tensorflow" '
      f"{logging_config} }} "
      for name in ("next_category", "next_category_canary")
    )
    + "}"
  )
  with pytest.raises(
    ValueError, match="'next_category' and 'next_category_canary' log to the same"
  ):
    model_server.ModelServer(flags.ServerOptions(model_config_file=str(config)))
