"""The Predict client: reading examples, predict(), and its command line."""

import json

import numpy as np
import pytest
import tensorflow as tf

from components.trainer import constants
from serving import client
from tests.serving import conftest


@pytest.fixture
def record_files(examples, tmp_path):
  paths = {}
  for name, options in (("plain", None), ("gzip", "GZIP")):
    paths[name] = str(tmp_path / f"{name}.tfrecord")
    with tf.io.TFRecordWriter(paths[name], options=options) as writer:
      for example in examples:
        writer.write(example)
  return paths


def test_read_examples_from_tfrecords(record_files, examples):
  for path in record_files.values():
    assert client.read_examples(path) == examples
    assert client.read_examples(path, limit=3) == examples[:3]


def test_read_examples_from_json_lines(tmp_path):
  path = tmp_path / "raw.jsonl"
  rows = [
    {"item_history": [1, 2], "user_segment": "new", "city_tier": "tier1"},
    {"item_history": [], "user_segment": "returning", "city_tier": "tier4"},
  ]
  path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
  assert client.read_examples(str(path)) == rows


def test_raw_features_to_example():
  example = client.raw_features_to_example(
    {"item_history": [3, 4], "user_segment": "new", "city_tier": "tier2"}
  )
  features = example.features.feature
  assert list(features[constants.ITEM_HISTORY_KEY].int64_list.value) == [3, 4]
  assert features[constants.CITY_TIER_KEY].bytes_list.value == [b"tier2"]
  with pytest.raises(ValueError, match="need 'city_tier'"):
    client.raw_features_to_example({"item_history": [], "user_segment": "new"})


def test_predict_returns_exact_probabilities(server, canned, examples):
  hostport = f"127.0.0.1:{server.grpc_port}"
  as_protos = [tf.train.Example.FromString(e) for e in examples]
  predictions = client.predict(hostport, as_protos)

  expected = conftest.reference(canned.version_1, examples=examples)
  np.testing.assert_array_equal(
    np.array([p.probabilities for p in predictions], np.float32), expected
  )
  assert {p.model_version for p in predictions} == {1}
  top = predictions[0].top_k(3)
  assert [name for name, _ in top] == [
    constants.CATEGORY_NAMES[i] for i in np.argsort(-expected[0], kind="stable")[:3]
  ]


def test_main_prints_top_k(server, record_files, capsys):
  code = client.main(
    [
      f"--server=127.0.0.1:{server.grpc_port}",
      f"--examples={record_files['gzip']}",
      "--num_examples=2",
      "--top_k=2",
    ]
  )
  lines = capsys.readouterr().out.splitlines()
  assert code == 0
  assert len(lines) == 2
  assert lines[0].startswith("example 0 (model version 1): category_")
  assert lines[0].count("category_") == 2


def test_main_reports_errors(server, record_files, capsys):
  code = client.main(
    [
      f"--server=127.0.0.1:{server.grpc_port}",
      "--model_name=missing",
      f"--examples={record_files['plain']}",
    ]
  )
  assert code == 1
  assert "NOT_FOUND" in capsys.readouterr().err
