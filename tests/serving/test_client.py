"""The Predict client: reading examples, predict(), and its command line."""

import json

import numpy as np
import pytest
import tensorflow as tf

from next_category.serving import client
from next_category.serving.testdata import make_canned_models as canned_models
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
  path.write_text('{"item_history": [1]}\n{"oops"\n')
  with pytest.raises(ValueError, match="Line 2 of .* is not valid JSON"):
    client.read_examples(str(path))


def test_serialize_example_leaves_out_excluded_features(examples):
  with_label = canned_models.make_examples(2, seed=3, with_label=True)
  assert client.serialize_example(with_label[0], ["label"]) == examples[0]
  assert (
    client.serialize_example(tf.train.Example.FromString(with_label[1]), ["label"]) == (examples[1])
  )
  assert client.serialize_example(examples[0]) is examples[0]
  from_json = tf.train.Example.FromString(
    client.serialize_example(
      {"item_history": [3, 4], "user_segment": "new", "label": 2}, ["label", "absent"]
    )
  )
  features = from_json.features.feature
  assert sorted(features) == ["item_history", "user_segment"]
  assert list(features["item_history"].int64_list.value) == [3, 4]
  assert features["user_segment"].bytes_list.value == [b"new"]
  with pytest.raises(ValueError, match="unexpected JSON type: Null"):
    client.serialize_example({"user_segment": None})


def test_classify_returns_the_models_class_names(server, canned, examples):
  hostport = f"127.0.0.1:{server.grpc_port}"
  with_label = canned_models.make_examples(len(examples), seed=3, with_label=True)

  results = client.classify(hostport, with_label, exclude_features=["label"])

  expected = conftest.reference(canned.version_1, "classification", "scores", inputs=examples)
  np.testing.assert_array_equal(
    np.array([[score for _, score in r.classes] for r in results], np.float32), expected
  )
  assert [label for label, _ in results[0].classes] == list(canned_models.CLASS_NAMES)
  assert {r.model_version for r in results} == {1}
  assert [name for name, _ in results[0].top_k(3)] == [
    canned_models.CLASS_NAMES[i] for i in np.argsort(-expected[0], kind="stable")[:3]
  ]


def test_predict_returns_exact_outputs(server, canned, examples):
  hostport = f"127.0.0.1:{server.grpc_port}"
  as_protos = [tf.train.Example.FromString(e) for e in examples]
  predictions = client.predict(hostport, as_protos)

  expected = conftest.reference(canned.version_1, examples=examples)
  np.testing.assert_array_equal(
    np.array([p.probabilities for p in predictions], np.float32), expected
  )
  assert {p.model_version for p in predictions} == {1}
  assert [index for index, _ in predictions[0].top_k(3)] == (
    np.argsort(-expected[0], kind="stable")[:3].tolist()
  )


def test_main_prints_top_k(server, record_files, capsys):
  code = client.main(
    [
      f"--server=127.0.0.1:{server.grpc_port}",
      f"--examples={record_files['gzip']}",
      "--num_examples=2",
      "--top_k=2",
      "--exclude_features=label",
    ]
  )
  lines = capsys.readouterr().out.splitlines()
  assert code == 0
  assert len(lines) == 2
  assert lines[0].startswith("example 0 (model version 1): category_")
  assert lines[0].count("category_") == 2
  code = client.main(
    [
      f"--server=127.0.0.1:{server.grpc_port}",
      f"--examples={record_files['gzip']}",
      "--num_examples=1",
      "--api=predict",
    ]
  )
  [line] = capsys.readouterr().out.splitlines()
  assert code == 0
  assert line.startswith("example 0 (model version 1): ")
  assert len(line.split(": ", 1)[1].split(", ")) == 3


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
