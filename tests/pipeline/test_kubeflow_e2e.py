"""End to end: every step of the compiled package run here, as open-source KFP 2.x and as Vertex AI.

The package `make kubeflow` writes is run twice on a tiny dataset by
`tests.pipeline.kfp_emulator`, each step a process running the executor's
`command` + `args` with the ExecutorInput its backend would build: first as
open-source KFP 2.x builds it (untyped upstream artifacts, an extra
`executor-logs` output, no pre-cache check), then, after a new span arrives,
as Vertex AI does (typed artifacts, the pre-cache check run first), this time
the package compiled with `--tune`, whose Tuner step hands its best values to
the Trainer. The second run must evaluate its model against the one the first
pushed, and both push.
"""

import json
import os

import pytest
import tensorflow as tf

from next_category.components.trainer import layers  # noqa: F401  (registers the layers load_model needs)
from next_category.dataset import clickstream
from next_category.pipeline import configs
from next_category.pipeline.kubeflow import kubeflow_runner
from next_category.pipeline.kubeflow import package as kubeflow_package
from tests.pipeline import kfp_emulator

pytestmark = pytest.mark.e2e

_EXAMPLES_PER_SPAN = 600


def _write_span(data_root, span):
  clickstream.write_span(data_root, span=span, num_examples=_EXAMPLES_PER_SPAN, seed=span)


def _compile(root, storage_root, *flags):
  """Compiles the package `make kubeflow` writes, with `flags`; returns its job."""
  code = kubeflow_runner.main(
    [
      f"--output_root={root}",
      f"--storage_root={storage_root}",
      # The image keeps the schema at kubeflow_runner.IMAGE_SCHEMA_PATH; here
      # the project root stands in for the image's /pipeline.
      f"--schema_path={configs.SCHEMA_PATH}",
      "--preset=tiny",
      "--train_steps=20",
      "--eval_steps=2",
      "--accuracy_threshold=0.01",
      "--direct_running_mode=in_memory",
      "--direct_num_workers=1",
      # A Beam worker image, as remote runners are given one: without any
      # dependency flag, every Beam step first builds an sdist of TFX itself
      # (tfx/utils/dependency_utils.py, make_beam_dependency_flags).
      "--sdk_container_image=next-category-beam-worker:0.1.0",
      *flags,
    ]
  )
  assert code == 0
  with open(kubeflow_package.package_path(str(root))) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """`(job, tuned job, storage root, open-source run, Vertex AI run)`, steps by task name.

  The open-source run runs the default package; the Vertex AI run, the same
  pipeline compiled with `--tune` (a Tuner step before the Trainer).
  """
  root = tmp_path_factory.mktemp("kfp")
  storage_root = str(root / "storage")
  data_root = os.path.join(storage_root, "data")
  _write_span(data_root, 1)
  _write_span(data_root, 2)
  job = _compile(root / "out", storage_root)
  tuned_job = _compile(
    root / "out-tuned", storage_root, "--tune", "--tune_trials=2", "--tune_steps=5"
  )

  work = str(root / "pods")
  open_source = kfp_emulator.Backend(kfp_emulator.OPEN_SOURCE, work, configs.PROJECT_ROOT).run(job)

  # A new span arrives; this run also trains longer, so its model is better
  # than the one serving and is pushed too.
  _write_span(data_root, 3)
  vertex = kfp_emulator.Backend(kfp_emulator.VERTEX, work, configs.PROJECT_ROOT).run(
    tuned_job, {kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(150)}
  )
  # Wall time on this machine, and the steps' CPU time (about the wall time
  # on an idle one).
  print("\nstep: open-source KFP wall/CPU s, Vertex AI wall/CPU s")
  for name in [*vertex, "total"]:
    steps = [
      list(run.values()) if name == "total" else [run[name]] if name in run else []
      for run in (open_source, vertex)
    ]
    times = [sum(getattr(s, f) for s in ss) for ss in steps for f in ("seconds", "cpu_seconds")]
    print(f"{name:<20}" + "".join(f"{t:>9.1f}" for t in times))
  return job, tuned_job, storage_root, open_source, vertex


def _tasks(job):
  return set(job["pipelineSpec"]["root"]["dag"]["tasks"])


def test_every_step_ran_on_both_backends(runs):
  job, tuned_job, _, open_source, vertex = runs
  assert set(open_source) == _tasks(job)
  assert set(vertex) == _tasks(tuned_job) == _tasks(job) | {"Tuner"}


def test_open_source_steps_got_untyped_inputs_and_the_launchers_log_output(runs):
  _, _, _, open_source, _ = runs
  for name, step in open_source.items():
    assert "executor-logs" in step.executor_input["outputs"]["artifacts"], name
    for artifact_list in step.executor_input["inputs"]["artifacts"].values():
      assert artifact_list["artifacts"][0]["type"] == {"instanceSchema": ""}, name


def test_example_gen_ingests_the_latest_span_with_or_without_the_pre_cache_check(runs):
  *_, open_source, vertex = runs
  for run, span, checked in ((open_source, 2, False), (vertex, 3, True)):
    example_gen = run["ImportExampleGen"]
    assert example_gen.pre_cache_check_ran is checked
    # The driver's span, as TFX's entry point writes a custom property that
    # shares a name with a type property.
    assert example_gen.outputs["examples"]["metadata"]["custom:span"] == span
    assert sorted(os.listdir(example_gen.outputs["examples"]["uri"])) == [
      "Split-eval",
      "Split-train",
    ]
    # The gate saw the span, and measured drift against the one before it.
    assert run["AnomalyGate"].outputs["validation"]["metadata"]["previous_span"] == span - 1


def _pushed_version(run):
  metadata = run["Pusher"].outputs["pushed_model"]["metadata"]
  assert metadata["pushed"] == 1, metadata
  return int(metadata["pushed_version"])


def test_both_runs_push_and_the_second_evaluates_against_the_first(runs):
  _, _, storage_root, open_source, vertex = runs
  first, second = _pushed_version(open_source), _pushed_version(vertex)
  assert second > first
  # Nothing served before the first run.
  assert open_source["ServingBaseline"].outputs["baseline_model"]["metadata"]["has_model"] == 0
  baseline = vertex["ServingBaseline"].outputs["baseline_model"]["metadata"]
  assert (baseline["has_model"], baseline["serving_version"]) == (1, first)
  evaluated = vertex["Evaluator"].executor_input["inputs"]["artifacts"]["baseline_model"]
  assert (
    evaluated["artifacts"][0]["uri"] == vertex["ServingBaseline"].outputs["baseline_model"]["uri"]
  )
  serving = os.path.join(storage_root, "serving", configs.SERVING_MODEL_NAME)
  tflite = os.path.join(storage_root, "tflite", configs.SERVING_MODEL_NAME)
  assert sorted(int(v) for v in os.listdir(serving)) == [first, second]
  for run, version in ((open_source, first), (vertex, second)):
    assert os.path.isfile(os.path.join(serving, str(version), "saved_model.pb"))
    # The int8 copy ships beside the version unless it lost more accuracy
    # than the converter allows (a tiny model may).
    converted = run["TFLiteConverter"].outputs["tflite_model"]["metadata"]
    shipped = os.path.isfile(os.path.join(tflite, str(version), "model.tflite"))
    assert shipped == (converted["blessed"] == 1), converted


def test_the_tuned_package_runs_the_tuner_step_and_the_trainer_trains_with_its_best_values(runs):
  """`--tune`, run as Vertex AI runs it: the Tuner's output reaches the Trainer."""
  *_, run = runs
  assert list(run).index("Tuner") < list(run).index("Trainer")
  best_uri = run["Tuner"].outputs["best_hyperparameters"]["uri"]
  with open(os.path.join(best_uri, "best_hyperparameters.txt")) as f:
    best = json.load(f)["values"]
  with open(os.path.join(run["Tuner"].outputs["tuner_results"]["uri"], "tuner_results.json")) as f:
    assert len(json.load(f)) == 2
  (given,) = run["Trainer"].executor_input["inputs"]["artifacts"]["hyperparameters"]["artifacts"]
  assert given["uri"] == best_uri
  # The trained model has the best width and depth.
  model = tf.keras.models.load_model(
    os.path.join(run["Trainer"].outputs["model"]["uri"], "Format-Serving")
  )
  assert model.get_layer("head").units == best["hidden_dim"]
  blocks = [layer for layer in model.layers if layer.name.startswith("transformer_encoder_")]
  assert len(blocks) == best["num_layers"]
