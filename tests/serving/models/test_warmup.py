"""Warmup request files in TensorFlow Serving's format."""

import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from next_category.serving.models import warmup


def _write(path, records):
  tf.io.gfile.makedirs(str(path / "assets.extra"))
  with tf.io.TFRecordWriter(warmup.warmup_file(str(path))) as writer:
    for record in records:
      writer.write(record)


def test_read_warmup_requests(tmp_path):
  logs = []
  for name in ("a", "b"):
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = name
    log.predict_log.request.inputs["examples"].CopyFrom(tf.make_tensor_proto([b"x"]))
    logs.append(log)
  _write(tmp_path, [log.SerializeToString() for log in logs])

  assert warmup.warmup_file(str(tmp_path)) == str(
    tmp_path / "assets.extra" / "tf_serving_warmup_requests"
  )
  assert warmup.read_warmup_requests(str(tmp_path)) == logs


def test_limits(tmp_path):
  assert warmup.read_warmup_requests(str(tmp_path)) == []
  _write(tmp_path, [b"\xff not a PredictionLog"])
  with pytest.raises(ValueError, match="is not a PredictionLog"):
    warmup.read_warmup_requests(str(tmp_path))
  _write(tmp_path, [prediction_log_pb2.PredictionLog().SerializeToString()] * 1001)
  with pytest.raises(ValueError, match="exceeds the maximum"):
    warmup.read_warmup_requests(str(tmp_path))
