"""Tests of the TFLite predict entry point."""

import numpy as np
import pytest
import tensorflow as tf

from next_category.components.tflite_converter import conversion
from next_category.components.tflite_converter import examples as examples_lib
from next_category.components.tflite_converter import executor
from next_category.components.tflite_converter import predict
from tests.testing import model_checks


@pytest.fixture(scope="module")
def float_model_path(trained, tmp_path_factory):
  path = tmp_path_factory.mktemp("predict") / "model.tflite"
  path.write_bytes(conversion.convert(trained.model, trained.data_contract))
  (path.parent / executor.CONTRACT_FILE).write_text(trained.data_contract.to_json())
  return str(path)


def test_predict_matches_keras_and_scores_labels(trained, float_model_path):
  result = predict.predict(float_model_path, [trained.eval_dir], max_examples=40)
  encoded = examples_lib.read(trained.data_contract, [trained.eval_dir], 40)
  expected = trained.model(encoded.inputs, training=False).numpy()
  np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
  np.testing.assert_array_equal(result.labels, encoded.labels)
  assert result.accuracy(1) == pytest.approx(np.mean(expected.argmax(1) == encoded.labels))
  assert result.accuracy(10) == 1.0
  # No labels.txt beside this model: the contract's class names.
  assert result.category_names == list(trained.data_contract.label.class_names)


def test_cli_prints_top_categories_and_accuracy(trained, float_model_path, capsys):
  flags = f"--tflite {float_model_path} --examples {trained.eval_dir} --max_examples 25"
  assert predict.main(flags.split() + ["--show", "2", "--top_k", "2"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("example 0: category_") and "(label category_" in lines[0]
  assert lines[2] == "25 examples"
  accuracy = predict.predict(float_model_path, [trained.eval_dir], max_examples=25).accuracy(1)
  assert lines[3] == f"top-1 accuracy {accuracy:.4f}"
  assert lines[4].startswith("top-2 accuracy ")


def test_cli_without_labels_prints_no_accuracy(float_model_path, tmp_path, capsys):
  examples = tmp_path / "unlabeled.tfrecord"
  with tf.io.TFRecordWriter(str(examples)) as writer:
    for serialized in model_checks.serialized_examples(3):
      writer.write(serialized)
  labels = tmp_path / "names.txt"
  labels.write_text("".join(f"name_{i}\n" for i in range(10)))
  flags = f"--tflite {float_model_path} --examples {examples} --labels {labels}"
  assert predict.main(flags.split()) == 0
  out = capsys.readouterr().out
  assert "example 2: name_" in out and "3 examples" in out and "accuracy" not in out


def test_cli_reports_missing_examples(float_model_path, tmp_path, capsys):
  assert predict.main(["--tflite", float_model_path, "--examples", str(tmp_path / "none-*")]) == 2
  assert "No TFRecord files match" in capsys.readouterr().err


def test_cli_reports_a_model_without_its_contract(tmp_path, capsys):
  (tmp_path / "model.tflite").write_bytes(b"")
  assert predict.main(["--tflite", str(tmp_path / "model.tflite"), "--examples", "x"]) == 2
  assert "data_contract.json does not exist" in capsys.readouterr().err
