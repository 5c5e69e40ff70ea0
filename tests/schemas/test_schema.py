"""Tests of the curated schema: it parses and it catches bad examples."""

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from dataset import clickstream
from pipeline import configs


def _stats_of(examples, tmp_path):
  path = str(tmp_path / "examples.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  return tfdv.generate_statistics_from_tfrecord(data_location=path)


def test_schema_parses_with_the_contracted_features():
  schema = tfdv.load_schema_text(configs.SCHEMA_PATH)
  features = {f.name: f for f in schema.feature}
  assert sorted(features) == ["city_tier", "item_history", "label", "user_segment"]
  assert (features["label"].int_domain.min, features["label"].int_domain.max) == (0, 9)
  assert (features["item_history"].int_domain.min, features["item_history"].int_domain.max) == (
    1,
    9999,
  )
  assert (features["item_history"].value_count.min, features["item_history"].value_count.max) == (
    1,
    50,
  )
  assert list(features["label"].not_in_environment) == ["SERVING"]
  assert {d.name: list(d.value) for d in schema.string_domain} == {
    "user_segment": ["new", "returning"],
    "city_tier": ["tier1", "tier2", "tier3", "tier4"],
  }


def test_broken_example_is_reported_as_anomalous(tmp_path):
  good = list(clickstream.generate_examples(50, seed=2))
  broken = clickstream._to_example(history=[], user_segment="vip", city_tier="tier1", label=42)
  stats = _stats_of(good + [broken], tmp_path)
  schema = tfdv.load_schema_text(configs.SCHEMA_PATH)
  anomalies = tfdv.validate_statistics(stats, schema, environment="TRAINING")
  kinds = {
    name: {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason}
    for name, info in anomalies.anomaly_info.items()
  }
  assert "ENUM_TYPE_UNEXPECTED_STRING_VALUES" in kinds["user_segment"]
  assert "INT_TYPE_BIG_INT" in kinds["label"]
  assert "FEATURE_TYPE_LOW_NUMBER_VALUES" in kinds["item_history"]
  assert set(kinds) == {"user_segment", "label", "item_history"}


def test_label_is_not_required_at_serving(tmp_path):
  examples = list(clickstream.generate_examples(50, seed=2))
  for example in examples:
    del example.features.feature["label"]
  schema = tfdv.load_schema_text(configs.SCHEMA_PATH)
  stats = _stats_of(examples, tmp_path)
  serving = tfdv.validate_statistics(stats, schema, environment="SERVING")
  training = tfdv.validate_statistics(stats, schema, environment="TRAINING")
  assert dict(serving.anomaly_info) == {}
  assert "label" in training.anomaly_info
