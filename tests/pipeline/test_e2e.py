"""End to end: the real pipeline with the Beam runner on a tiny dataset.

Checks executions through ML Metadata, the pushed model's serving signature,
a second run served from cache that evaluates against the pushed model and,
after a simulated kill, pushes nothing again, a third, unchanged run served
wholly from cache (the Evaluator included), and a failing component's exit
status.
"""

import json
import os
import re
import shutil
import time

import pytest
import tensorflow as tf

from next_category.components import serving_versions
from next_category.dataset import clickstream
from next_category.pipeline import configs
from tests.pipeline import pipelines
from tests.pipeline import report_checks
from tests.testing import model_checks

pytestmark = pytest.mark.e2e

_NODES = {
  "TFLiteConverter",
  "ImportExampleGen",
  "StatisticsGen",
  "ImportSchemaGen",
  "ExampleValidator",
  "AnomalyGate",
  "Trainer",
  "ServingBaseline",
  "Evaluator",
  "InfraValidator",
  "Pusher",
}


def _run_pipeline(data_root, output_root, *flags):
  return pipelines.run_beam_runner(
    data_root,
    output_root,
    "--train_steps=60",
    "--eval_steps=4",
    # A real two-process MultiWorkerMirroredStrategy cluster on loopback.
    "--num_workers=2",
    *flags,
  )


_summary = pipelines.summary


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  data_root, output_root = str(root / "data"), str(root / "out")
  clickstream.write_span(data_root, num_examples=1500, seed=11)
  # A bar any trained model clears; test_unblessed_model_is_not_pushed raises it.
  result = _run_pipeline(data_root, output_root, "--accuracy_threshold=0.05")
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
  return data_root, output_root, result


def test_every_component_ran_and_a_model_was_pushed(first_run):
  _, output_root, result = first_run
  summary = _summary(output_root)
  assert {c.node_id for c in summary.components} == _NODES
  assert {c.state for c in summary.components} == {"COMPLETE"}
  assert summary.anomalies == {"train": [], "eval": []}
  assert summary.blessed is True
  overall = dict(summary.slice_metrics)["Overall"]
  assert overall["example_count"] > 200
  assert 0.05 <= overall["sparse_categorical_accuracy"] <= 1.0
  slices = {name for name, _ in summary.slice_metrics}
  assert {"user_segment=new", "city_tier=tier4", "city_tier=tier1, user_segment=new"} <= slices
  # The canary served the model and every answer matched.
  assert summary.infra_validation[0] is True, summary.infra_validation
  assert "Canary (InfraValidator): Blessed: loaded and warmed up" in result.stdout
  # The report the user sees ends with where the model went.
  assert f"Pushed: {summary.pushed_path} (version {summary.pushed_version})" in result.stdout
  base = os.path.join(output_root, "serving", configs.SERVING_MODEL_NAME)
  assert summary.pushed_path == os.path.join(base, summary.pushed_version)
  # Nothing was serving: no baseline, blessed on the absolute threshold alone.
  (baseline,) = summary.component("ServingBaseline").outputs["baseline_model"]
  assert baseline.custom_properties["has_model"].int_value == 0
  (blessing,) = summary.component("Evaluator").outputs["blessing"]
  assert "baseline_model" not in blessing.custom_properties


def test_tflite_model_was_converted_and_checked(first_run):
  _, output_root, _ = first_run
  (converter,) = [c for c in _summary(output_root).components if c.node_id == "TFLiteConverter"]
  (artifact,) = converter.outputs["tflite_model"]
  with open(os.path.join(artifact.uri, "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["size_bytes"]["int8_to_float_ratio"] < 0.3
  pushed = artifact.custom_properties["pushed"].int_value
  tflite_base = os.path.join(output_root, "tflite", configs.SERVING_MODEL_NAME)
  if pushed:
    version = artifact.custom_properties["pushed_version"].string_value
    assert os.path.exists(os.path.join(tflite_base, version, "model.tflite"))
  else:
    assert artifact.custom_properties["reason"].string_value


def test_pushed_model_answers_serving_default(first_run):
  _, output_root, _ = first_run
  base = os.path.join(output_root, "serving", configs.SERVING_MODEL_NAME)
  (version,) = os.listdir(base)
  assert version.isdigit()
  serving = tf.saved_model.load(os.path.join(base, version)).signatures["serving_default"]
  probabilities = serving(examples=tf.constant(model_checks.serialized_examples(5)))
  assert probabilities["probabilities"].shape == (5, 10)


def _children(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_second_run_after_a_kill_is_cached_compares_with_the_served_model_and_pushes_nothing(
  first_run,
):
  data_root, output_root, _ = first_run
  serving_base = os.path.join(output_root, "serving", configs.SERVING_MODEL_NAME)
  tflite_base = os.path.join(output_root, "tflite", configs.SERVING_MODEL_NAME)
  (version,) = _children(serving_base)
  tflite_shipped = _children(tflite_base) == [version]
  # What a run killed during the TFLiteConverter's shipping, two hours ago,
  # left: no TFLite copy yet, a half-written staging directory.
  shutil.rmtree(tflite_base, ignore_errors=True)
  stale = os.path.join(tflite_base, f"{serving_versions.STAGING_PREFIX}{int(time.time()) - 7200}-0")
  os.makedirs(stale)
  result = _run_pipeline(data_root, output_root, "--accuracy_threshold=0.05")
  assert result.returncode == 0, result.stderr[-5000:]
  summary = _summary(output_root)
  states = {c.node_id: c.state for c in summary.components}
  for node in (
    "ImportExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "Trainer",
  ):
    assert states[node] == "CACHED", states
  # The push destination changed (the first run pushed): a new baseline.
  assert states["ServingBaseline"] == "COMPLETE", states
  (baseline,) = summary.component("ServingBaseline").outputs["baseline_model"]
  assert baseline.custom_properties["serving_version"].int_value == int(version)
  assert baseline.custom_properties["source_path"].string_value == os.path.join(
    serving_base, version
  )
  (blessing,) = summary.component("Evaluator").outputs["blessing"]
  assert blessing.custom_properties["baseline_model"].string_value == baseline.uri
  # The same model, no worse than itself: blessed, and not pushed again.
  assert summary.blessed is True
  (pushed,) = summary.component("Pusher").outputs["pushed_model"]
  assert pushed.custom_properties["already_pushed"].int_value == 1
  assert summary.pushed_version == version
  assert f"(version {version}, already serving: not copied again)" in result.stdout
  assert _children(serving_base) == [version]
  # The TFLite copy was shipped beside the one version, the stale staging gone.
  assert _children(tflite_base) == ([version] if tflite_shipped else [os.path.basename(stale)])
  if tflite_shipped:
    assert os.path.exists(os.path.join(tflite_base, version, "model.tflite"))


def test_an_unchanged_rerun_evaluates_nothing_again(first_run):
  # After the second run: the same candidate and the same serving version.
  data_root, output_root, _ = first_run
  serving_base = os.path.join(output_root, "serving", configs.SERVING_MODEL_NAME)
  versions = _children(serving_base)
  before = _summary(output_root)
  (baseline_before,) = before.component("ServingBaseline").outputs["baseline_model"]
  (blessing_before,) = before.component("Evaluator").outputs["blessing"]
  result = _run_pipeline(data_root, output_root, "--accuracy_threshold=0.05")
  assert result.returncode == 0, result.stderr[-5000:]
  summary = _summary(output_root)
  states = {c.node_id: c.state for c in summary.components}
  # The baseline step's driver found the same version serving: every step,
  # the Evaluator included, is served from cache.
  assert states == {node: "CACHED" for node in _NODES}, states
  (baseline,) = summary.component("ServingBaseline").outputs["baseline_model"]
  (blessing,) = summary.component("Evaluator").outputs["blessing"]
  assert (baseline.id, blessing.id) == (baseline_before.id, blessing_before.id)
  assert summary.blessed is True and _children(serving_base) == versions


def test_unblessed_model_is_not_pushed(first_run):
  data_root, output_root, _ = first_run
  serving_base = os.path.join(output_root, "serving", configs.SERVING_MODEL_NAME)
  versions = sorted(os.listdir(serving_base))
  result = _run_pipeline(data_root, output_root, "--accuracy_threshold=0.99")
  assert result.returncode == 0, result.stderr[-5000:]
  summary = _summary(output_root)
  states = {c.node_id: c.state for c in summary.components}
  assert states["Trainer"] == "CACHED" and states["Evaluator"] == "COMPLETE"
  assert summary.blessed is False and summary.pushed_path is None
  assert "Model blessed: no" in result.stdout and "Pushed: nothing" in result.stdout
  assert sorted(os.listdir(serving_base)) == versions


def test_failing_component_exits_non_zero_and_names_it(first_run):
  data_root, output_root, _ = first_run
  result = _run_pipeline(data_root, output_root, "--preset=no_such_preset")
  assert result.returncode == 1
  error_line, log_line = result.stderr.strip().splitlines()[-2:]
  assert error_line.startswith("ERROR: pipeline next_category failed in Trainer")
  assert "Unknown model preset 'no_such_preset'" in error_line
  # The console's line of the component ends with the error too; the log is named last.
  assert re.search(r"  Trainer +FAILED .*Unknown model preset 'no_such_preset'", result.stdout)
  log_path = log_line[len("Log: ") :]
  assert log_line.startswith("Log: ") and os.path.isfile(log_path)
  assert "Traceback" in open(log_path).read() or "no_such_preset" in open(log_path).read()


def test_console_shows_components_progress_and_the_run_report(first_run):
  _, output_root, result = first_run
  console, _, _ = result.stdout.partition("\nRun ")
  lines = console.splitlines()
  # Not a terminal: plain lines, no control characters; a short console.
  assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.stdout)
  assert len(lines) <= 30, console
  for node in _NODES:
    assert any(re.match(rf"\d\d:\d\d:\d\d  {node} +started$", line) for line in lines), node
    assert any(re.match(rf"\d\d:\d\d:\d\d  {node} +COMPLETE ", line) for line in lines), node
  # The Trainer's progress comes from its worker subprocess (--num_workers=2).
  assert any(re.match(r"  Trainer: step \d+/60 ", line) for line in lines), console
  assert any("Data gate passed: no blocking anomalies" in line for line in lines)
  assert "WARNING" not in result.stdout and result.stderr == ""
  # Other tests run the pipeline again: this run's id is in its summary.
  run_id = re.search(r"^Run (\S+)$", result.stdout, re.MULTILINE).group(1)
  log_path = os.path.join(output_root, "logs", f"{run_id}.log")
  assert f"Log: {log_path}" in result.stdout
  assert "WARNING" in open(log_path).read()
  report = os.path.join(output_root, "reports", run_id, "index.html")
  assert f"Run report: {report}" in result.stdout
  images = report_checks.check_report(open(report).read())
  for section in ("run", "evaluation", "confusion", "training", "data", "tflite"):
    assert images[section], section
