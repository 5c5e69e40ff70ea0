"""Tests of the curated schemas: generated data fits them, TFDV catches bad examples.

What the schema says (names, domains, limits) is read by `contract` and tested
in tests/contract; here TFDV checks data against the schema files themselves.
"""

import os

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2

from next_category import contract
from next_category.dataset import clickstream

_SCHEMAS = [
  contract.DEFAULT_SCHEMA_PATH,
  os.path.join(os.path.dirname(contract.DEFAULT_SCHEMA_PATH), "examples", "departments.pbtxt"),
]


def _stats_of(examples, tmp_path):
  path = str(tmp_path / "examples.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  return tfdv.generate_statistics_from_tfrecord(data_location=path)


def _anomaly_kinds(anomalies):
  return {
    name: {anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason}
    for name, info in anomalies.anomaly_info.items()
  }


@pytest.mark.parametrize("schema_path", _SCHEMAS, ids=os.path.basename)
def test_generated_data_fits_its_schema_and_broken_examples_do_not(schema_path, tmp_path):
  data_contract = contract.load(schema_path)
  good = list(clickstream.generate_examples(200, seed=2, data_contract=data_contract))
  broken = clickstream.make_example(
    data_contract,
    history=[],
    context=["vip"] + [f.vocabulary[0] for f in data_contract.context[1:]],
    label=data_contract.label.num_classes,
  )
  schema = tfdv.load_schema_text(schema_path)
  clean = tfdv.validate_statistics(_stats_of(good, tmp_path), schema, environment="TRAINING")
  assert dict(clean.anomaly_info) == {}
  stats = _stats_of(good + [broken], tmp_path)
  kinds = _anomaly_kinds(tfdv.validate_statistics(stats, schema, environment="TRAINING"))
  first_context = data_contract.context[0].name
  assert "ENUM_TYPE_UNEXPECTED_STRING_VALUES" in kinds[first_context]
  assert "INT_TYPE_BIG_INT" in kinds[data_contract.label.name]
  assert "FEATURE_TYPE_LOW_NUMBER_VALUES" in kinds[data_contract.sequence.name]
  assert set(kinds) == {first_context, data_contract.label.name, data_contract.sequence.name}


def test_label_is_not_required_at_serving(tmp_path):
  examples = list(clickstream.generate_examples(50, seed=2))
  for example in examples:
    del example.features.feature["label"]
  schema = tfdv.load_schema_text(contract.DEFAULT_SCHEMA_PATH)
  stats = _stats_of(examples, tmp_path)
  serving = tfdv.validate_statistics(stats, schema, environment="SERVING")
  training = tfdv.validate_statistics(stats, schema, environment="TRAINING")
  assert dict(serving.anomaly_info) == {}
  assert "label" in training.anomaly_info
