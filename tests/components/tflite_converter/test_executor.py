"""Tests of the TFLiteConverter executor: conversion, checks, gate and push."""

import json
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from next_category.components import serving_versions
from next_category.components.tflite_converter import component
from next_category.components.tflite_converter import conversion
from next_category.components.tflite_converter import examples as examples_lib
from next_category.components.tflite_converter import executor
from tests.testing import model_checks

_EVAL_EXAMPLES = 150


def _run(trained, root, pushed_version=None, **exec_properties):
  output = component.TFLiteModel()
  output.uri = str(root / "tflite_model")
  input_dict = {
    executor.MODEL_KEY: [trained.model_artifact],
    executor.EXAMPLES_KEY: [trained.examples_artifact],
  }
  if pushed_version is not None:
    pushed_model = standard_artifacts.PushedModel()
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_string_custom_property(executor.PUSHED_VERSION_PROPERTY, pushed_version)
    input_dict[executor.PUSHED_MODEL_KEY] = [pushed_model]
  properties = {
    executor.MAX_ACCURACY_DROP_KEY: 1.0,
    executor.NUM_REPRESENTATIVE_EXAMPLES_KEY: 100,
    executor.MAX_EVAL_EXAMPLES_KEY: _EVAL_EXAMPLES,
    executor.NUM_LATENCY_EXAMPLES_KEY: 10,
    executor.PUSH_BASE_DIRECTORY_KEY: str(root / "push"),
    **exec_properties,
  }
  executor.Executor().Do(input_dict, {executor.TFLITE_MODEL_KEY: [output]}, properties)
  with open(os.path.join(output.uri, executor.METRICS_FILE)) as f:
    return output, json.load(f)


@pytest.fixture(scope="module")
def blessed(trained, tmp_path_factory):
  root = tmp_path_factory.mktemp("blessed")
  output, metrics = _run(trained, root, pushed_version="1234")
  return root, output, metrics


def _read(path, mode="r"):
  with open(path, mode) as f:
    return f.read()


def test_writes_and_pushes_a_blessed_int8_model_under_the_pushers_version(blessed):
  root, output, metrics = blessed
  assert metrics["blessed"] and metrics["pushed"], metrics["reason"]
  assert output.get_int_custom_property(executor.BLESSED_PROPERTY) == 1
  assert output.get_int_custom_property(executor.PUSHED_PROPERTY) == 1
  assert output.get_string_custom_property(executor.PUSHED_VERSION_PROPERTY) == "1234"
  destination = str(root / "push" / "1234")
  assert output.get_string_custom_property(executor.PUSHED_DESTINATION_PROPERTY) == destination
  assert "within the bound of 1 points" in output.get_string_custom_property("reason")
  # The pushed version holds exactly the artifact's files; no staging left.
  assert os.listdir(root / "push") == ["1234"]
  for name in (
    executor.MODEL_FILE,
    executor.LABELS_FILE,
    executor.CONTRACT_FILE,
    executor.METRICS_FILE,
  ):
    assert _read(os.path.join(destination, name), "rb") == _read(
      os.path.join(output.uri, name), "rb"
    )
  labels = _read(os.path.join(output.uri, executor.LABELS_FILE)).splitlines()
  assert labels == [f"category_{i}" for i in range(10)]


def test_metrics_compare_size_accuracy_and_latency(blessed):
  _, _, metrics = blessed
  size = metrics["size_bytes"]
  assert size["int8_to_float_ratio"] == pytest.approx(size[executor.INT8] / size[executor.FLOAT])
  # The tiny model's 10001 x 8 item embedding dominates both files.
  assert size["int8_to_float_ratio"] < 0.3
  accuracy = metrics["accuracy"]
  assert accuracy["examples"] == _EVAL_EXAMPLES
  assert set(accuracy["accuracy"]) == {executor.INT8, executor.FLOAT, executor.SAVED_MODEL}
  assert set(accuracy["slices"]) == {"user_segment", "city_tier"}
  assert set(accuracy["slices"]["user_segment"]) == {"new", "returning"}
  assert sum(s["examples"] for s in accuracy["slices"]["city_tier"].values()) == _EVAL_EXAMPLES
  latency = metrics["latency"]
  for name in (
    executor.INT8,
    executor.FLOAT,
    executor.INT8_BUILTIN_KERNELS,
    executor.FLOAT_BUILTIN_KERNELS,
    executor.SAVED_MODEL,
  ):
    assert latency[name]["calls"] == 10 * 5
    assert 0 < latency[name]["p50_us"] <= latency[name]["p99_us"]
  # The int8 model is compared with the float model under its faster option.
  fastest = latency["fastest_float"]
  assert latency[fastest]["p50_us"] == min(
    latency[executor.FLOAT]["p50_us"], latency[executor.FLOAT_BUILTIN_KERNELS]["p50_us"]
  )
  assert latency["int8_speedup_vs_float_p50"] == pytest.approx(
    latency[fastest]["p50_us"] / latency[executor.INT8]["p50_us"]
  )
  assert metrics["quantization"]["representative_examples"] == 100


def test_int8_model_is_fully_integer(blessed):
  _, output, metrics = blessed
  assert metrics["quantization"]["non_integer_tensors"] == []
  interpreter = tf.lite.Interpreter(model_path=os.path.join(output.uri, executor.MODEL_FILE))
  interpreter.allocate_tensors()
  inputs = {d["name"]: d for d in interpreter.get_input_details()}
  assert {d["dtype"] for d in inputs.values()} == {np.int64}
  [output_details] = interpreter.get_output_details()
  assert output_details["dtype"] == np.float32 and list(output_details["shape"]) == [1, 10]
  tensors = interpreter.get_tensor_details()
  others = [d for d in tensors if d["index"] != output_details["index"]]
  assert {d["dtype"] for d in others} <= {np.int8, np.int32, np.int64, np.bool_}
  # Every matmul multiplies int8 activations by int8 weights.
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  matmuls = [op for op in ops if op["op_name"] in ("FULLY_CONNECTED", "BATCH_MATMUL")]
  assert len(matmuls) >= 8
  for op in matmuls:
    assert [tensors[i]["dtype"] for i in op["inputs"][:2]] == [np.int8, np.int8], op
  # The item embedding (10001 rows) is stored as int8, with one scale.
  [embedding] = [d for d in tensors if list(d["shape"]) == [10001, 8]]
  assert embedding["dtype"] == np.int8 and len(embedding["quantization_parameters"]["scales"]) == 1


def test_int8_encoder_has_no_softmax_or_rsqrt(blessed):
  # XNNPACK has no int8 SOFTMAX or RSQRT in TFLite 2.16, and TFLite's own
  # int8 kernels for them are slower than float: attention is a sigmoid
  # (LOGISTIC) and normalization a tanh (TANH). The one SOFTMAX is the output.
  _, output, _ = blessed
  interpreter = tf.lite.Interpreter(model_path=os.path.join(output.uri, executor.MODEL_FILE))
  interpreter.allocate_tensors()
  ops = [op["op_name"] for op in interpreter._get_ops_details()]  # pylint: disable=protected-access
  assert "RSQRT" not in ops and "MEAN" not in ops
  assert ops.count("SOFTMAX") == 1
  assert ops.count("LOGISTIC") == 1 and ops.count("TANH") == 2  # The tiny preset has one block.


def test_int8_accuracy_matches_the_saved_model(blessed, trained):
  _, output, metrics = blessed
  accuracy = metrics["accuracy"]
  # The barely trained tiny model is close to uniform, so a few examples flip
  # either way: at most two of the eval examples may (0.67 points each), and
  # the drop stays within the default gate bound of 1 point.
  assert accuracy["drop_points"][executor.INT8] <= 1.0
  assert abs(accuracy["drop_points"][executor.INT8]) <= 2 * 100 / _EVAL_EXAMPLES + 1e-9
  assert accuracy["drop_points"][executor.FLOAT] == 0.0
  eval_examples = examples_lib.read(trained.data_contract, [trained.eval_dir], 60)
  model_checks.assert_tflite_matches(
    _read(os.path.join(output.uri, executor.MODEL_FILE), "rb"),
    trained.model,
    (eval_examples.row(i) for i in range(60)),
    # Int8 probabilities are multiples of 1/256; the tiny model's largest
    # difference on these 600 probabilities is ~0.05.
    atol=0.06,
    min_top1_agreement=0.95,
  )


def test_float_conversion_reproduces_keras(trained):
  eval_examples = examples_lib.read(trained.data_contract, [trained.eval_dir], 20)
  model_checks.assert_tflite_matches(
    conversion.convert(trained.model, trained.data_contract),
    trained.model,
    (eval_examples.row(i) for i in range(20)),
    atol=1e-5,
  )


def test_gate_trips_on_an_impossible_bound(trained, tmp_path):
  output, metrics = _run(trained, tmp_path, pushed_version="99", max_accuracy_drop=-100.0)
  assert not metrics["blessed"] and not metrics["pushed"]
  assert output.get_int_custom_property(executor.BLESSED_PROPERTY) == 0
  assert output.get_int_custom_property(executor.PUSHED_PROPERTY) == 0
  reason = output.get_string_custom_property(executor.REASON_PROPERTY)
  assert reason.startswith("Not shipped:") and "more than the bound of -100 points" in reason
  assert metrics["reason"] == reason
  # The checked model is kept in the artifact, but nothing is pushed.
  assert os.path.exists(os.path.join(output.uri, executor.MODEL_FILE))
  assert not os.path.exists(tmp_path / "push")


def _write_files(directory, prefix):
  """The artifact's four files with placeholder contents `<prefix> <file name>`."""
  directory.mkdir(parents=True)
  for name in (
    executor.MODEL_FILE,
    executor.LABELS_FILE,
    executor.CONTRACT_FILE,
    executor.METRICS_FILE,
  ):
    (directory / name).write_text(f"{prefix} {name}")
  return directory


def test_push_replaces_a_partial_version_atomically(tmp_path):
  source = _write_files(tmp_path / "source", "new")
  base = tmp_path / "base"
  (base / "7").mkdir(parents=True)
  (base / "7" / "stale.txt").write_text("old")
  destination = executor.push(str(source), str(base), "7")
  assert destination == str(base / "7")
  assert sorted(os.listdir(base)) == ["7"]
  assert sorted(os.listdir(base / "7")) == sorted(
    [executor.LABELS_FILE, executor.CONTRACT_FILE, executor.METRICS_FILE, executor.MODEL_FILE]
  )
  assert (base / "7" / executor.MODEL_FILE).read_text() == "new model.tflite"


def test_push_keeps_a_shipped_version_and_removes_stale_staging(tmp_path):
  source = _write_files(tmp_path / "source", "new")
  base = tmp_path / "base"
  shipped = _write_files(base / "7", "first")
  # Left by a run killed while shipping, two hours ago.
  stale = base / f"{serving_versions.STAGING_PREFIX}{int(time.time()) - 7200}-0dead"
  stale.mkdir()
  (stale / executor.MODEL_FILE).write_text("half")
  assert executor.push(str(source), str(base), "7") == str(shipped)
  assert sorted(os.listdir(base)) == ["7"]
  # A re-run ships nothing again: the first copy stays.
  assert (shipped / executor.MODEL_FILE).read_text() == "first model.tflite"


def test_version_is_the_pushers_or_the_current_time_without_a_pusher():
  unpushed = standard_artifacts.PushedModel()
  unpushed.set_int_custom_property("pushed", 0)
  pushed = standard_artifacts.PushedModel()
  pushed.set_int_custom_property("pushed", 1)
  pushed.set_string_custom_property(executor.PUSHED_VERSION_PROPERTY, "1234")
  assert executor._push_version([pushed]) == "1234"  # pylint: disable=protected-access
  # The Pusher did not push the SavedModel: the TFLite copy is not shipped either.
  assert executor._push_version([unpushed]) is None  # pylint: disable=protected-access
  before = int(time.time())
  for pushed_models in (None, []):
    version = int(executor._push_version(pushed_models))  # pylint: disable=protected-access
    assert before <= version <= int(time.time())
