"""Tests of the Kubeflow half: the compiled package, submitting it, the image and the TFJob.

The package is compiled once and checked as a KFP v2 PipelineSpec proto
against the pipeline `create_pipeline` builds, then against a reviewed golden
file. Regenerate the golden file after an intended change with
`UPDATE_GOLDEN=1 pytest tests/pipeline/test_kubeflow.py` and review its diff.
"""

import copy
import difflib
import http.server
import json
import os
import re
import socket
import threading

import pytest
import tensorflow as tf
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.utils import import_utils

from next_category.pipeline import configs
from next_category.pipeline.kubeflow import entrypoint as kfp_entrypoint
from next_category.pipeline.kubeflow import kubeflow_runner
from next_category.pipeline.kubeflow import package as kubeflow_package
from next_category.pipeline.kubeflow import schedule as kubeflow_schedule
from next_category.pipeline.kubeflow import submit as kubeflow_submit
from next_category.pipeline.kubeflow import training_worker as train_worker
from tests.pipeline import pipelines

_TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
_GOLDEN_PATH = os.path.join(_TESTDATA, "kubeflow_pipeline.golden.json")
_PROJECT_ROOT = configs.PROJECT_ROOT

_IMAGE = "registry.example.com/ml/next-category-pipeline:test"
_STORAGE_ROOT = "gs://test-bucket/next-category"
_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
_TRAIN_STEPS = 123
_TRAIN_EPOCHS = 6
_NUM_WORKERS = 3
_EXAMPLE_GEN_DRIVER = "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
  """`(package path, PipelineJob dict)` of the package compiled with test flags."""
  output_root = tmp_path_factory.mktemp("kubeflow")
  code = kubeflow_runner.main(
    [
      f"--output_root={output_root}",
      f"--image={_IMAGE}",
      f"--storage_root={_STORAGE_ROOT}",
      f"--train_steps={_TRAIN_STEPS}",
      f"--train_epochs={_TRAIN_EPOCHS}",
      f"--num_workers={_NUM_WORKERS}",
      "--preset=small",
      "--tolerate_anomalies=ENUM_TYPE_UNEXPECTED_STRING_VALUES",
      *_BEAM_ARGS,
    ]
  )
  assert code == 0
  path = kubeflow_package.package_path(str(output_root))
  with open(path) as f:
    return path, json.load(f)


@pytest.fixture(scope="module")
def spec(compiled):
  # Strict parsing: an unknown field name anywhere fails here.
  return json_format.ParseDict(compiled[1]["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


@pytest.fixture(scope="module")
def executors(spec):
  deployment = pipeline_spec_pb2.PipelineDeploymentConfig()
  json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec), deployment)
  return deployment.executors


def _local_pipeline():
  return pipelines.create_test_pipeline(
    pipeline_name=kubeflow_runner.KFP_PIPELINE_NAME, tflite_push_base_directory="/tmp/t"
  )


def _parameter(task, name):
  return json_format.MessageToDict(task.inputs.parameters[name])


def _constant(task, name):
  return _parameter(task, name)["runtimeValue"]["constant"]


def test_package_is_a_pipeline_job_with_a_valid_spec(compiled, spec):
  job = json_format.ParseDict(compiled[1], pipeline_spec_pb2.PipelineJob())
  assert job.display_name == "next-category"
  assert spec.pipeline_info.name == "next-category"
  assert spec.schema_version == "2.1.0"


def test_every_task_resolves_to_a_component_and_an_executor(spec, executors):
  for name, task in spec.root.dag.tasks.items():
    assert task.component_ref.name in spec.components, name
    assert task.task_info.name == name
    for dependency in task.dependent_tasks:
      assert dependency in spec.root.dag.tasks, (name, dependency)
  for name, component in spec.components.items():
    assert component.executor_label in executors, name


def test_every_local_component_is_a_task_with_the_same_upstreams(spec):
  local = {node.id: node for node in _local_pipeline().components}
  tasks = spec.root.dag.tasks

  assert set(tasks) == set(local)
  for name, task in tasks.items():
    # Every producer is waited for, and so is every explicit upstream node
    # (the Trainer's AnomalyGate, whose outputs it does not read).
    producers = {a.task_output_artifact.producer_task for a in task.inputs.artifacts.values()}
    assert producers <= set(task.dependent_tasks), name
    assert set(task.dependent_tasks) == {u.id for u in local[name].upstream_nodes}, name
  # The baseline the Evaluator compares against is the model serving now.
  baseline = tasks["Evaluator"].inputs.artifacts["baseline_model"].task_output_artifact
  assert baseline.producer_task == "ServingBaseline"
  assert _constant(tasks["ServingBaseline"], "serving_model_dir") == (
    f"{_STORAGE_ROOT}/serving/{configs.SERVING_MODEL_NAME}"
  )


def test_executors_run_the_image_with_tfx_entrypoint_and_beam_args(executors):
  containers = {label: e.container for label, e in executors.items() if e.HasField("container")}
  # Every step runs in a container: no Resolver or importer.
  assert set(containers) == set(executors)
  assert set(containers) == {f"{node.id}_executor" for node in _local_pipeline().components}
  for label, container in containers.items():
    assert container.image == _IMAGE, label
    assert tuple(container.command) == kfp_entrypoint.COMMAND, label
    assert list(container.args[-len(_BEAM_ARGS) :]) == _BEAM_ARGS, label
  trainer_args = list(containers["Trainer_executor"].args)
  assert trainer_args[2:4] == [
    "--executor_class_path",
    "tfx.components.trainer.executor.GenericExecutor",
  ]
  # Only Vertex AI runs ImportExampleGen's pre-cache check; the entry point
  # runs the same module when it did not.
  example_gen = containers["ImportExampleGen_executor"]
  assert example_gen.lifecycle.pre_cache_check.command[-1] == _EXAMPLE_GEN_DRIVER
  assert list(example_gen.args[2:4]) == ["--pre_cache_check_module", _EXAMPLE_GEN_DRIVER]


def _artifact_types(container):
  assert container.args[0] == "--artifact_types"
  return json.loads(container.args[1])


def test_each_step_names_the_classes_of_its_artifacts(executors):
  for label, executor in executors.items():
    for side in _artifact_types(executor.container).values():
      for class_path in side.values():
        assert import_utils.import_class_by_path(class_path), (label, class_path)
  # The untyped inputs open-source KFP passes get their classes from here, and
  # the custom type (titled next_category.TFLiteModel) its import path.
  assert _artifact_types(executors["TFLiteConverter_executor"].container) == {
    "inputs": {
      "examples": "tfx.types.standard_artifacts.Examples",
      "model": "tfx.types.standard_artifacts.Model",
      "pushed_model": "tfx.types.standard_artifacts.PushedModel",
    },
    "outputs": {"tflite_model": "next_category.components.tflite_converter.component.TFLiteModel"},
  }
  assert _artifact_types(executors["Evaluator_executor"].container)["inputs"] == {
    "baseline_model": "tfx.types.standard_artifacts.Model",
    "examples": "tfx.types.standard_artifacts.Examples",
    "model": "tfx.types.standard_artifacts.Model",
  }


def test_tune_compiles_the_tuner_step_feeding_the_trainer(tmp_path):
  code = kubeflow_runner.main(
    [f"--output_root={tmp_path}", f"--storage_root={_STORAGE_ROOT}", "--tune", "--tune_trials=3"]
  )
  assert code == 0
  with open(kubeflow_package.package_path(str(tmp_path))) as f:
    job = json.load(f)
  tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
  assert set(tasks["Tuner"]["dependentTasks"]) == {
    "ImportExampleGen",
    "ImportSchemaGen",
    "AnomalyGate",
  }
  assert "Tuner" in tasks["Trainer"]["dependentTasks"]
  assert tasks["Trainer"]["inputs"]["artifacts"]["hyperparameters"] == {
    "taskOutputArtifact": {"outputArtifactKey": "best_hyperparameters", "producerTask": "Tuner"}
  }
  tuner_parameters = tasks["Tuner"]["inputs"]["parameters"]
  assert tuner_parameters["tuner_fn"]["runtimeValue"]["constant"] == configs.TUNER_FN
  assert (
    json.loads(tuner_parameters["custom_config"]["runtimeValue"]["constant"])["tune_trials"] == 3
  )
  executors = job["pipelineSpec"]["deploymentSpec"]["executors"]
  tuner_args = executors["Tuner_executor"]["container"]["args"]
  assert tuner_args[0] == "--artifact_types"
  assert json.loads(tuner_args[1])["outputs"] == {
    "best_hyperparameters": "tfx.types.standard_artifacts.HyperParameters",
    "tuner_results": "tfx.types.standard_artifacts.TunerResults",
  }


def test_only_steps_reading_outside_state_are_never_cached(spec):
  caching = {name: task.caching_options.enable_cache for name, task in spec.root.dag.tasks.items()}
  assert {name for name, cached in caching.items() if not cached} == {
    "ImportExampleGen",
    "ServingBaseline",
  }


def test_compiling_refuses_a_step_that_is_not_a_container(tmp_path, monkeypatch, capsys):
  real_create_pipeline = kubeflow_runner.pipeline_lib.create_pipeline

  def with_a_resolver(**kwargs):
    pipeline = real_create_pipeline(**kwargs)
    resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    pipeline.components = [*pipeline.components, resolver]
    return pipeline

  monkeypatch.setattr(kubeflow_runner.pipeline_lib, "create_pipeline", with_a_resolver)
  code = kubeflow_runner.main([f"--output_root={tmp_path}", f"--storage_root={_STORAGE_ROOT}"])
  assert code == 2
  err = capsys.readouterr().err
  assert "latest_blessed_model_resolver-model-resolver_executor" in err
  assert "are not container steps" in err
  assert not os.path.exists(kubeflow_package.package_path(str(tmp_path)))


def test_bare_spec_carries_the_pipeline_root_and_parameter_defaults(compiled):
  output_root = os.path.dirname(os.path.dirname(compiled[0]))
  with open(kubeflow_package.spec_path(output_root)) as f:
    bare = yaml.safe_load(f)
  # What kfp.Client and the UI's upload parse: a PipelineSpec, strictly.
  json_format.ParseDict(bare, pipeline_spec_pb2.PipelineSpec())
  assert bare["defaultPipelineRoot"] == f"{_STORAGE_ROOT}/pipeline"
  assert bare["root"]["inputDefinitions"]["parameters"]["train_args"] == {
    "parameterType": "STRING",
    "defaultValue": json.dumps({"num_steps": _TRAIN_STEPS}),
  }
  assert bare["deploymentSpec"] == compiled[1]["pipelineSpec"]["deploymentSpec"]


def test_train_args_is_a_runtime_parameter_with_the_flag_default(compiled, spec):
  root_parameters = json_format.MessageToDict(spec.root.input_definitions)["parameters"]
  assert root_parameters == {"train_args": {"parameterType": "STRING"}}
  trainer = spec.root.dag.tasks["Trainer"]
  assert _parameter(trainer, "train_args") == {"componentInputParameter": "train_args"}
  default = kubeflow_package.parameter_values(compiled[1])["train_args"]
  assert json.loads(default) == {"num_steps": _TRAIN_STEPS}
  assert json.loads(_constant(trainer, "eval_args")) == {"num_steps": configs.EVAL_NUM_STEPS}


def test_trainer_custom_config_travels_into_the_spec(spec):
  trainer = spec.root.dag.tasks["Trainer"]
  assert json.loads(_constant(trainer, "custom_config")) == {
    "preset": "small",
    "seed": configs.TRAINING_SEED,
    "num_workers": _NUM_WORKERS,
    "train_epochs": _TRAIN_EPOCHS,
  }
  assert _constant(trainer, "run_fn") == configs.RUN_FN


def test_train_args_without_steps_leave_the_budget_to_the_epochs():
  # No --train_steps: num_steps stays unset, so the Trainer trains for train_epochs.
  assert json.loads(kubeflow_package.train_args_value(None)) == {}
  with pytest.raises(ValueError, match="train_steps must be positive, got 0"):
    kubeflow_package.train_args_value(0)


def test_storage_uris_and_image_schema_path(compiled, spec):
  tasks = spec.root.dag.tasks
  assert compiled[1]["runtimeConfig"]["gcsOutputDirectory"] == f"{_STORAGE_ROOT}/pipeline"
  assert _constant(tasks["ImportExampleGen"], "input_base") == f"{_STORAGE_ROOT}/data"
  push_destination = json.loads(_constant(tasks["Pusher"], "push_destination"))
  assert push_destination["filesystem"]["base_directory"] == (
    f"{_STORAGE_ROOT}/serving/{configs.SERVING_MODEL_NAME}"
  )
  assert _constant(tasks["ImportSchemaGen"], "schema_file") == kubeflow_runner.IMAGE_SCHEMA_PATH
  anomaly_gate = tasks["AnomalyGate"]
  assert _constant(anomaly_gate, "input_base") == f"{_STORAGE_ROOT}/data"
  assert _constant(anomaly_gate, "report_dir") == f"{_STORAGE_ROOT}/reports"
  assert json.loads(_constant(anomaly_gate, "tolerated_anomalies")) == [
    "ENUM_TYPE_UNEXPECTED_STRING_VALUES"
  ]


def test_span_flag_pins_the_ingested_span():
  args = kubeflow_runner.parse_args([f"--storage_root={_STORAGE_ROOT}", "--span=2"])
  pipeline = kubeflow_runner.build_pipeline(args)
  example_gen = next(c for c in pipeline.components if c.id == "ImportExampleGen")
  range_config = json.loads(example_gen.exec_properties["range_config"])
  assert range_config["static_range"] == {"start_span_number": 2, "end_span_number": 2}


_DEPARTMENTS = os.path.join(_PROJECT_ROOT, "schemas", "examples", "departments.pbtxt")
# The Evaluator's label and slices for departments.pbtxt.
_DEPARTMENTS_EVALUATION = (
  "next_department",
  [[], ["membership"], ["region"], ["membership", "region"]],
)


def _label_and_slices(eval_config_json):
  eval_config = json.loads(eval_config_json)
  slices = [spec.get("feature_keys", []) for spec in eval_config["slicing_specs"]]
  return eval_config["model_specs"][0]["label_key"], slices


def _evaluation(tasks):
  """The Evaluator's label and slices in a compiled package."""
  return _label_and_slices(_constant(tasks["Evaluator"], "eval_config"))


def test_the_default_schema_gives_the_default_label_and_slices(spec):
  assert _evaluation(spec.root.dag.tasks) == (
    "label",
    [[], ["user_segment"], ["city_tier"], ["user_segment", "city_tier"]],
  )


def test_another_schema_sets_the_compiled_label_and_slices(tmp_path):
  # A gs:// --schema_path is not read here: --local_schema_path is the same file.
  schema_uri = "gs://test-bucket/schemas/departments.pbtxt"
  code = kubeflow_runner.main(
    [
      f"--output_root={tmp_path}",
      f"--storage_root={_STORAGE_ROOT}",
      f"--schema_path={schema_uri}",
      f"--local_schema_path={_DEPARTMENTS}",
    ]
  )
  assert code == 0
  with open(kubeflow_package.package_path(str(tmp_path))) as f:
    job = json.load(f)
  tasks = json_format.ParseDict(
    job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec()
  ).root.dag.tasks
  assert _evaluation(tasks) == _DEPARTMENTS_EVALUATION
  assert _constant(tasks["ImportSchemaGen"], "schema_file") == schema_uri


def _pipeline_evaluation(*flags):
  args = kubeflow_runner.parse_args([f"--storage_root={_STORAGE_ROOT}", *flags])
  components = {c.id: c for c in kubeflow_runner.build_pipeline(args).components}
  return _label_and_slices(components["Evaluator"].exec_properties["eval_config"])


def test_the_contract_is_read_from_a_uri_or_from_the_checkout_the_image_holds():
  # A URI readable here is read through tf.io.gfile (TensorFlow's ram:// stands in for gs://).
  uri = "ram://schemas/departments.pbtxt"
  tf.io.gfile.makedirs("ram://schemas")
  tf.io.gfile.copy(_DEPARTMENTS, uri, overwrite=True)
  assert _pipeline_evaluation(f"--schema_path={uri}") == _DEPARTMENTS_EVALUATION
  # A path inside the image: this checkout's file at the same place.
  image_path = f"{kubeflow_runner.IMAGE_WORKDIR}/schemas/examples/departments.pbtxt"
  assert _pipeline_evaluation(f"--schema_path={image_path}") == _DEPARTMENTS_EVALUATION


@pytest.mark.parametrize(
  "flags, message",
  [
    (
      ["--schema_path=/mnt/schemas/mine.pbtxt"],
      "Cannot read --schema_path /mnt/schemas/mine.pbtxt on this machine (",
    ),
    (
      [f"--schema_path={kubeflow_runner.IMAGE_WORKDIR}/schemas/mine.pbtxt"],
      "this checkout, which the image holds at /pipeline, has no schemas/mine.pbtxt",
    ),
    (
      ["--schema_path=gs://b/s.pbtxt", "--local_schema_path=/nonexistent/s.pbtxt"],
      "--local_schema_path /nonexistent/s.pbtxt does not exist.",
    ),
  ],
)
def test_a_schema_not_readable_at_compile_time_is_refused(tmp_path, capsys, flags, message):
  code = kubeflow_runner.main(
    [f"--output_root={tmp_path}", f"--storage_root={_STORAGE_ROOT}", *flags]
  )
  assert code == 2
  error = capsys.readouterr().err
  assert message in error
  assert not os.path.exists(kubeflow_package.package_path(str(tmp_path)))


def _make_kubeflow_flags(*variables):
  return pipelines.make_target_flags(
    "kubeflow", "next_category.pipeline.kubeflow.kubeflow_runner", *variables
  )


def _compiled_tasks(output_root):
  with open(kubeflow_package.package_path(str(output_root))) as f:
    job = json.load(f)
  return json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec()).root.dag.tasks


def test_make_kubeflow_passes_schema_through_to_the_compiled_steps(tmp_path, monkeypatch):
  # The default SCHEMA is the image's curated schema, as the Dockerfile puts it.
  assert "--schema_path=schemas/schema.pbtxt" in _make_kubeflow_flags()
  assert kubeflow_runner.image_schema_path("schemas/schema.pbtxt") == (
    kubeflow_runner.IMAGE_SCHEMA_PATH
  )
  flags = _make_kubeflow_flags(
    "SCHEMA=schemas/examples/departments.pbtxt",
    f"OUTPUT_ROOT={tmp_path}",
    f"KFP_STORAGE_ROOT={_STORAGE_ROOT}",
  )
  assert "--schema_path=schemas/examples/departments.pbtxt" in flags
  # make runs in the checkout's root.
  monkeypatch.chdir(_PROJECT_ROOT)
  assert kubeflow_runner.main(flags) == 0
  tasks = _compiled_tasks(tmp_path)
  # The components read the image's copy of the file; the label and slices are its.
  assert _constant(tasks["ImportSchemaGen"], "schema_file") == (
    f"{kubeflow_runner.IMAGE_WORKDIR}/schemas/examples/departments.pbtxt"
  )
  assert _evaluation(tasks) == _DEPARTMENTS_EVALUATION
  # No step is left with the default schema.
  constants = json.dumps({name: json_format.MessageToDict(task) for name, task in tasks.items()})
  assert "schemas/schema.pbtxt" not in constants


@pytest.mark.parametrize(
  "schema, message",
  [
    ("schemas/nope.pbtxt", "--schema_path schemas/nope.pbtxt does not exist (relative to "),
    ("outside.pbtxt", "--schema_path outside.pbtxt is outside this checkout ("),
    (
      "docs/kubeflow.md",
      "--schema_path docs/kubeflow.md is not copied into the image: .dockerignore lets in only "
      "requirements.lock, pyproject.toml, requirements.in, requirements-dev.in, README.md, "
      "components, contract, dataset, pipeline, serving, schemas;",
    ),
  ],
)
def test_a_relative_schema_the_image_lacks_is_refused(
  tmp_path, monkeypatch, capsys, schema, message
):
  monkeypatch.chdir(_PROJECT_ROOT)
  if schema == "outside.pbtxt":
    (tmp_path / schema).write_text("")
    monkeypatch.chdir(tmp_path)
  code = kubeflow_runner.main(
    [f"--output_root={tmp_path}", f"--storage_root={_STORAGE_ROOT}", f"--schema_path={schema}"]
  )
  assert code == 2
  assert message in capsys.readouterr().err
  assert not os.path.exists(kubeflow_package.package_path(str(tmp_path)))


def _normalised(job):
  """The package without what changes with the TFX or Python version."""
  job = copy.deepcopy(job)
  job["labels"] = {k: "<version>" if "version" in k else v for k, v in job["labels"].items()}
  job["pipelineSpec"]["sdkVersion"] = "tfx-<version>"
  return job


def test_package_matches_golden_file(compiled):
  actual = json.dumps(_normalised(compiled[1]), indent=2, sort_keys=True) + "\n"
  if os.environ.get("UPDATE_GOLDEN"):
    os.makedirs(_TESTDATA, exist_ok=True)
    with open(_GOLDEN_PATH, "w") as f:
      f.write(actual)
  with open(_GOLDEN_PATH) as f:
    expected = f.read()
  if actual != expected:
    diff = difflib.unified_diff(
      expected.splitlines(), actual.splitlines(), "golden", "compiled", lineterm="", n=2
    )
    pytest.fail(
      "The compiled package differs from the golden file; if the change is intended, run "
      "`UPDATE_GOLDEN=1 pytest tests/pipeline/test_kubeflow.py` and review the diff:\n"
      + "\n".join(list(diff)[:80])
    )


def test_runner_help_and_bad_flags(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    kubeflow_runner.main(["--help"])
  assert exit_info.value.code == 0
  assert "--storage_root" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    kubeflow_runner.main(["--num_workers=0"])
  assert "--num_workers must be at least 1" in capsys.readouterr().err
  code = kubeflow_runner.main([f"--output_root={tmp_path}", "--data_root=data/default"])
  assert code == 2
  assert "must be a URI" in capsys.readouterr().err
  assert not os.path.exists(kubeflow_package.package_path(str(tmp_path)))


class _FakeKfp(http.server.ThreadingHTTPServer):
  """A KFP 2.x API on loopback that records requests and answers as the real one does."""

  def __init__(self):
    super().__init__(("127.0.0.1", 0), _FakeKfpHandler)
    self.requests = []
    self.run_error = None
    self.experiments = []
    self.recurring_runs = {}

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}"


_RECURRING_RUNS = "/apis/v2beta1/recurringruns"


class _FakeKfpHandler(http.server.BaseHTTPRequestHandler):
  timeout = 10

  def _answer(self, status, body):
    data = json.dumps(body).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def _record(self):
    length = int(self.headers.get("Content-Length") or 0)
    body = json.loads(self.rfile.read(length)) if length else None
    self.server.requests.append((self.command, self.path.split("?")[0], body))
    return body

  def _not_found(self):
    self._answer(404, {"error": "not found", "message": f"{self.path} not found"})

  def do_GET(self):
    self._record()
    path = self.path.split("?")[0]
    if path == "/apis/v2beta1/healthz":
      self._answer(200, {"multi_user": False})
    elif path == "/apis/v2beta1/experiments":
      self._answer(200, {"experiments": self.server.experiments} if self.server.experiments else {})
    elif path == _RECURRING_RUNS:
      # The API names this field in camelCase (kfp_server_api attribute_map).
      self._answer(200, {"recurringRuns": list(self.server.recurring_runs.values())})
    else:
      self._not_found()

  def do_POST(self):
    body = self._record()
    runs = self.server.recurring_runs
    if self.path == "/apis/v2beta1/experiments":
      experiment = {"experiment_id": "exp-1", "display_name": body["display_name"]}
      self.server.experiments.append(experiment)
      self._answer(200, experiment)
    elif self.path == "/apis/v2beta1/runs" and self.server.run_error:
      self._answer(400, {"error": self.server.run_error, "message": self.server.run_error})
    elif self.path == "/apis/v2beta1/runs":
      self._answer(200, {"run_id": "run-1", "display_name": body["display_name"]})
    elif self.path == _RECURRING_RUNS:
      run_id = f"rr-{len(runs) + 1}"
      runs[run_id] = {**body, "recurring_run_id": run_id, "status": "ENABLED"}
      self._answer(200, runs[run_id])
    elif self.path.startswith(_RECURRING_RUNS + "/") and ":" in self.path:
      run_id, _, verb = self.path[len(_RECURRING_RUNS) + 1 :].partition(":")
      if run_id not in runs:
        return self._not_found()
      runs[run_id]["status"] = {"enable": "ENABLED", "disable": "DISABLED"}[verb]
      self._answer(200, {})
    else:
      self._not_found()

  def do_DELETE(self):
    self._record()
    run_id = self.path[len(_RECURRING_RUNS) + 1 :]
    if self.path.startswith(_RECURRING_RUNS + "/") and run_id in self.server.recurring_runs:
      del self.server.recurring_runs[run_id]
      self._answer(200, {})
    else:
      self._not_found()

  def log_message(self, *args):
    pass


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
  # Keep a developer's ~/.config/kfp/context.json out of the test.
  monkeypatch.setattr(
    kubeflow_submit.kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json")
  )
  server = _FakeKfp()
  thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()
  thread.join(timeout=10)


def test_submit_sends_spec_pipeline_root_and_parameters(compiled, fake_kfp, capsys):
  code = kubeflow_submit.main(
    [
      f"--host={fake_kfp.url}",
      f"--package={compiled[0]}",
      "--experiment_name=nightly",
      "--run_name=run-a",
      "--train_steps=7",
    ]
  )
  assert code == 0, capsys.readouterr().err
  assert "Started run run-1 in experiment 'nightly'" in capsys.readouterr().out
  posts = {path: body for method, path, body in fake_kfp.requests if method == "POST"}
  assert posts["/apis/v2beta1/experiments"]["display_name"] == "nightly"
  run = posts["/apis/v2beta1/runs"]
  assert run["display_name"] == "run-a"
  assert run["experiment_id"] == "exp-1"
  assert run["runtime_config"] == {
    "pipeline_root": f"{_STORAGE_ROOT}/pipeline",
    "parameters": {"train_args": json.dumps({"num_steps": 7})},
  }
  assert run["pipeline_spec"]["pipelineInfo"]["name"] == "next-category"
  assert set(run["pipeline_spec"]["root"]["dag"]["tasks"]) == set(
    compiled[1]["pipelineSpec"]["root"]["dag"]["tasks"]
  )


def test_submit_uses_compiled_parameter_values_by_default(compiled, fake_kfp):
  run_id = kubeflow_submit.submit(fake_kfp.url, compiled[0], experiment_name="e")
  assert run_id == "run-1"
  run = next(body for method, path, body in fake_kfp.requests if path == "/apis/v2beta1/runs")
  assert run["runtime_config"]["parameters"] == {
    "train_args": json.dumps({"num_steps": _TRAIN_STEPS})
  }
  assert re.fullmatch(r"next-category-\d{8}-\d{6}", run["display_name"])


def test_submit_reports_a_refused_run(compiled, fake_kfp, capsys):
  fake_kfp.run_error = "resolver executors not implemented"
  code = kubeflow_submit.main([f"--host={fake_kfp.url}", f"--package={compiled[0]}"])
  assert code == 1
  err = capsys.readouterr().err
  assert "refused the run: HTTP 400" in err
  assert "resolver executors not implemented" in err


def test_submit_errors_for_missing_package_unknown_parameter_and_unreachable_host(
  compiled, tmp_path, capsys
):
  code = kubeflow_submit.main(["--host=http://127.0.0.1:9", f"--output_root={tmp_path}"])
  assert code == 2
  assert "No compiled pipeline at" in capsys.readouterr().err

  code = kubeflow_submit.main(
    ["--host=http://127.0.0.1:9", f"--package={compiled[0]}", "--parameter=steps=3"]
  )
  assert code == 2
  assert "no runtime parameter steps; it has train_args" in capsys.readouterr().err

  # A port nothing listens on: bound, then closed.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
  code = kubeflow_submit.main(
    [f"--host=http://127.0.0.1:{closed_port}", f"--package={compiled[0]}"]
  )
  assert code == 1
  assert f"Cannot reach Kubeflow Pipelines at http://127.0.0.1:{closed_port}" in (
    capsys.readouterr().err
  )

  with pytest.raises(SystemExit):
    kubeflow_submit.main(["--host=localhost:8080", f"--package={compiled[0]}"])
  assert "must start with http:// or https://" in capsys.readouterr().err


def _tfjob():
  with open(os.path.join(_PROJECT_ROOT, "pipeline", "kubeflow", "manifests", "tfjob.yaml")) as f:
    return yaml.safe_load(f)


def test_tfjob_runs_train_worker_on_n_workers():
  tfjob = _tfjob()
  assert (tfjob["apiVersion"], tfjob["kind"]) == ("kubeflow.org/v1", "TFJob")
  replica_specs = tfjob["spec"]["tfReplicaSpecs"]
  # Only workers: run_fn treats worker 0 as the chief.
  assert set(replica_specs) == {"Worker"}
  worker = replica_specs["Worker"]
  (container,) = worker["template"]["spec"]["containers"]
  assert container["name"] == "tensorflow"
  assert container["image"] == kubeflow_runner.DEFAULT_IMAGE
  assert container["command"] == ["python", "-m", "next_category.pipeline.kubeflow.training_worker"]
  # The operator sets TF_CONFIG; a manifest value would fight it.
  assert "TF_CONFIG" not in {e["name"] for e in container.get("env", [])}
  args = train_worker.parse_args(container["args"])
  assert args.num_workers == worker["replicas"] > 1
  assert args.examples_uri.startswith(kubeflow_runner.PLACEHOLDER_STORAGE_ROOT)
  assert args.output_uri.startswith(kubeflow_runner.PLACEHOLDER_STORAGE_ROOT)


_RECORDED_FN_ARGS = []


def record_fn_args(fn_args):
  """A run_fn that records what it is given."""
  _RECORDED_FN_ARGS.append(fn_args)


def test_train_worker_gives_run_fn_the_trainers_fn_args(tmp_path):
  examples_uri = str(tmp_path / "examples")
  output_uri = str(tmp_path / "out")
  _RECORDED_FN_ARGS.clear()
  train_worker.main(
    [
      f"--examples_uri={examples_uri}",
      f"--output_uri={output_uri}",
      "--preset=small",
      "--train_steps=5",
      "--eval_steps=2",
      "--num_workers=4",
      f"--run_fn={__name__}.record_fn_args",
    ]
  )
  (fn_args,) = _RECORDED_FN_ARGS
  assert fn_args.train_files == [os.path.join(examples_uri, "Split-train", "*")]
  assert fn_args.eval_files == [os.path.join(examples_uri, "Split-eval", "*")]
  assert (fn_args.train_steps, fn_args.eval_steps) == (5, 2)
  assert fn_args.custom_config == {
    "preset": "small",
    "seed": configs.TRAINING_SEED,
    "num_workers": 4,
    "train_epochs": configs.TRAIN_EPOCHS,
  }
  assert fn_args.serving_model_dir == os.path.join(output_uri, "model", "Format-Serving")
  assert fn_args.model_run_dir == os.path.join(output_uri, "model_run")
  assert fn_args.hyperparameters is None
  # With a Tuner's output, the best values as the Trainer would pass them.
  best = {"space": [], "values": {"learning_rate": 0.009, "num_layers": 3}}
  (tmp_path / "best").mkdir()
  (tmp_path / "best" / "best_hyperparameters.txt").write_text(json.dumps(best))
  _RECORDED_FN_ARGS.clear()
  train_worker.main(
    [
      f"--examples_uri={examples_uri}",
      f"--output_uri={output_uri}",
      f"--hyperparameters_uri={tmp_path / 'best'}",
      f"--run_fn={__name__}.record_fn_args",
    ]
  )
  assert _RECORDED_FN_ARGS[0].hyperparameters == best


def _dockerfile_lines():
  with open(os.path.join(_PROJECT_ROOT, "Dockerfile")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_dockerfile_matches_the_spec_the_lock_and_the_runner():
  lines = _dockerfile_lines()
  assert lines[0] == "FROM python:3.11-slim-bookworm AS runtime"
  # The default target is the last stage, with TFX's container entrypoint.
  assert lines[-1] == "ENTRYPOINT " + json.dumps(list(kfp_entrypoint.COMMAND))
  (workdir,) = [line.split()[1] for line in lines if line.startswith("WORKDIR")]
  assert kubeflow_runner.IMAGE_SCHEMA_PATH == f"{workdir}/schemas/schema.pbtxt"
  assert any(
    "pip install --no-deps --ignore-requires-python -r requirements.lock" in line for line in lines
  )
  with open(os.path.join(_PROJECT_ROOT, "requirements.lock")) as f:
    (beam_version,) = re.findall(r"^apache-beam==(\S+)$", f.read(), re.MULTILINE)
  assert (
    f"COPY --from=apache/beam_python3.11_sdk:{beam_version} /opt/apache/beam /opt/apache/beam"
    in lines
  )
  with open(os.path.join(_PROJECT_ROOT, ".dockerignore")) as f:
    ignore = [line.strip() for line in f if line.strip() and not line.startswith("#")]
  # An allowlist: the venv, data and artifacts never reach the build context.
  assert ignore[0] == "*"
  assert {
    "!requirements.lock",
    "!pyproject.toml",
    "!schemas/",
    "!pipeline/",
    "!components/",
  } <= set(ignore)


def test_schedule_creates_a_recurring_run_of_the_bare_spec(compiled, fake_kfp, capsys):
  output_root = os.path.dirname(os.path.dirname(compiled[0]))
  code = kubeflow_schedule.main(
    [
      "create",
      f"--host={fake_kfp.url}",
      f"--output_root={output_root}",
      "--cron=0 3 * * *",
      "--experiment_name=nightly",
      "--train_steps=9",
    ]
  )
  assert code == 0, capsys.readouterr().err
  out = capsys.readouterr().out
  assert "Created recurring run rr-1 ('next-category-0-3'" in out
  assert "'0 0 3 * * *'" in out
  (request,) = [b for m, p, b in fake_kfp.requests if (m, p) == ("POST", _RECURRING_RUNS)]
  assert request["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
  assert (request["max_concurrency"], request["no_catchup"], request["mode"]) == (1, True, "ENABLE")
  assert request["experiment_id"] == "exp-1"
  assert request["display_name"] == "next-category-0-3"
  assert request["runtime_config"] == {
    "pipeline_root": f"{_STORAGE_ROOT}/pipeline",
    "parameters": {"train_args": json.dumps({"num_steps": 9})},
  }
  # The bare PipelineSpec of pipeline_spec.yaml, not the PipelineJob.
  sent = request["pipeline_spec"]
  with open(kubeflow_package.spec_path(output_root)) as f:
    bare = yaml.safe_load(f)
  assert sent["deploymentSpec"] == bare["deploymentSpec"]
  assert sent["root"]["inputDefinitions"] == bare["root"]["inputDefinitions"]
  assert sent["defaultPipelineRoot"] == f"{_STORAGE_ROOT}/pipeline"
  # kfp.Client drops `enableCache: false` (a proto default): still off.
  uncached = {
    name
    for name, task in sent["root"]["dag"]["tasks"].items()
    if not task["cachingOptions"].get("enableCache", False)
  }
  assert uncached == {"ImportExampleGen", "ServingBaseline"}


def test_schedule_list_pause_resume_delete(compiled, fake_kfp, capsys):
  output_root = os.path.dirname(os.path.dirname(compiled[0]))
  host = f"--host={fake_kfp.url}"
  assert (
    kubeflow_schedule.main(
      ["create", host, f"--output_root={output_root}", "--cron=*/30 * * * 1-5", "--name=weekdays"]
    )
    == 0
  )
  assert kubeflow_schedule.main(["pause", host, "rr-1"]) == 0
  assert fake_kfp.recurring_runs["rr-1"]["status"] == "DISABLED"
  capsys.readouterr()
  assert kubeflow_schedule.main(["list", host, "--experiment_name=next-category"]) == 0
  assert capsys.readouterr().out == "rr-1\tweekdays\tDISABLED\t0 */30 * * * 1-5\n"
  assert kubeflow_schedule.main(["resume", host, "rr-1"]) == 0
  assert fake_kfp.recurring_runs["rr-1"]["status"] == "ENABLED"
  assert kubeflow_schedule.main(["delete", host, "rr-1"]) == 0
  assert fake_kfp.recurring_runs == {}
  assert kubeflow_schedule.main(["delete", host, "rr-1"]) == 1
  assert "refused to delete the recurring run: HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize(
  "cron, expected",
  [
    ("0 3 * * *", "0 0 3 * * *"),
    ("  15,45  8-18/2 1 JAN-JUN mon-fri ", "0 15,45 8-18/2 1 JAN-JUN mon-fri"),
    ("30 0 3 * * *", "30 0 3 * * *"),
    ("0 3 ? * MON", "0 0 3 ? * MON"),
    ("@daily", "@daily"),
  ],
)
def test_kfp_cron_adds_the_seconds_field(cron, expected):
  assert kubeflow_schedule.kfp_cron(cron) == expected


@pytest.mark.parametrize(
  "cron, message",
  [
    ("0 3 * *", "has 4 fields"),
    ("", "has 0 fields"),
    ("60 3 * * *", "'60' is not a minute (0-59)"),
    ("0 24 * * *", "'24' is not a hour (0-23)"),
    ("0 3 0 * *", "'0' is not a day of month (1-31)"),
    ("0 3 * 13 *", "'13' is not a month (1-12)"),
    ("0 3 * * 7", "'7' is not a day of week (0-6)"),
    ("0 5-3 * * *", "the hour range '5-3' runs backwards"),
    ("*/0 * * * *", "the minute step in '*/0' is 0"),
    ("0 3 * * daily", "'daily' is not a day of week"),
    ("? 3 * * *", "'?' is not a minute value"),
  ],
)
def test_kfp_cron_refuses_a_malformed_schedule(cron, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    kubeflow_schedule.kfp_cron(cron)


def test_schedule_command_line_errors(compiled, tmp_path, capsys):
  code = kubeflow_schedule.main(
    ["create", "--host=http://127.0.0.1:9", f"--output_root={tmp_path}", "--cron=0 3 * * *"]
  )
  assert code == 2
  assert "No compiled pipeline at" in capsys.readouterr().err
  output_root = os.path.dirname(os.path.dirname(compiled[0]))
  code = kubeflow_schedule.main(
    ["create", "--host=http://127.0.0.1:9", f"--output_root={output_root}", "--cron=3 * *"]
  )
  assert code == 2
  assert "The cron schedule '3 * *' has 3 fields" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    kubeflow_schedule.main(["--help"])
  assert exit_info.value.code == 0
  assert "create" in capsys.readouterr().out and "seconds" in kubeflow_schedule.__doc__
