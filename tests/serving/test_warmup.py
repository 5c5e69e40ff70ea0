"""Warmup request files in TensorFlow Serving's format."""

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving import warmup


def test_write_then_read_warmup_requests(tmp_path):
  path = warmup.write_warmup_requests(str(tmp_path), [b"a", b"b"], model_name="m")

  assert path == str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
  records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
  assert len(records) == 2
  log = prediction_log_pb2.PredictionLog.FromString(records[1])
  request = log.predict_log.request
  assert request.model_spec.name == "m"
  assert request.model_spec.signature_name == "serving_default"
  assert tf.make_ndarray(request.inputs["examples"]).tolist() == [b"b"]
  assert [log.predict_log.request for log in warmup.read_warmup_requests(str(tmp_path))] == [
    prediction_log_pb2.PredictionLog.FromString(r).predict_log.request for r in records
  ]


def test_limits(tmp_path):
  assert warmup.read_warmup_requests(str(tmp_path)) == []
  with pytest.raises(ValueError, match="at least one example"):
    warmup.write_warmup_requests(str(tmp_path), [])
  with pytest.raises(ValueError, match="at most 1000"):
    warmup.write_warmup_requests(str(tmp_path), [b"x"] * 1001)
