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
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import configs
from pipeline import kubeflow_package
from pipeline import kubeflow_runner
from pipeline import kubeflow_submit
from pipeline import train_worker
from tests.pipeline import pipelines

_TESTDATA = os.path.join(os.path.dirname(__file__), "testdata")
_GOLDEN_PATH = os.path.join(_TESTDATA, "kubeflow_pipeline.golden.json")
_PROJECT_ROOT = configs.PROJECT_ROOT

_IMAGE = "registry.example.com/ml/next-category-pipeline:test"
_STORAGE_ROOT = "gs://test-bucket/next-category"
_BEAM_ARGS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]
_TRAIN_STEPS = 123
_NUM_WORKERS = 3


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
    assert tuple(container.command) == kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD, label
    assert list(container.args[-len(_BEAM_ARGS) :]) == _BEAM_ARGS, label
  trainer_args = list(containers["Trainer_executor"].args)
  assert trainer_args[:2] == [
    "--executor_class_path",
    "tfx.components.trainer.executor.GenericExecutor",
  ]


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
  }
  assert _constant(trainer, "run_fn") == configs.RUN_FN


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
  args, beam_args = kubeflow_runner.parse_args([f"--storage_root={_STORAGE_ROOT}", "--span=2"])
  pipeline = kubeflow_runner.build_pipeline(args, beam_args)
  example_gen = next(c for c in pipeline.components if c.id == "ImportExampleGen")
  range_config = json.loads(example_gen.exec_properties["range_config"])
  assert range_config["static_range"] == {"start_span_number": 2, "end_span_number": 2}


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

  @property
  def url(self):
    return f"http://127.0.0.1:{self.server_address[1]}"


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

  def do_GET(self):
    self._record()
    if self.path.startswith("/apis/v2beta1/healthz"):
      self._answer(200, {"multi_user": False})
    elif self.path.startswith("/apis/v2beta1/experiments"):
      self._answer(200, {})
    else:
      self._answer(404, {"error": "not found"})

  def do_POST(self):
    body = self._record()
    if self.path == "/apis/v2beta1/experiments":
      self._answer(200, {"experiment_id": "exp-1", "display_name": body["display_name"]})
    elif self.path == "/apis/v2beta1/runs" and self.server.run_error:
      self._answer(400, {"error": self.server.run_error, "message": self.server.run_error})
    elif self.path == "/apis/v2beta1/runs":
      self._answer(200, {"run_id": "run-1", "display_name": body["display_name"]})
    else:
      self._answer(404, {"error": "not found"})

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
  with open(os.path.join(_PROJECT_ROOT, "pipeline", "k8s", "tfjob.yaml")) as f:
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
  assert container["command"] == ["python", "-m", "pipeline.train_worker"]
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
  }
  assert fn_args.serving_model_dir == os.path.join(output_uri, "model", "Format-Serving")
  assert fn_args.model_run_dir == os.path.join(output_uri, "model_run")


def _dockerfile_lines():
  with open(os.path.join(_PROJECT_ROOT, "Dockerfile")) as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_dockerfile_matches_the_spec_the_lock_and_the_runner():
  lines = _dockerfile_lines()
  assert lines[0] == "FROM python:3.11-slim-bookworm AS runtime"
  # The default target is the last stage, with TFX's container entrypoint.
  assert lines[-1] == "ENTRYPOINT " + json.dumps(list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD))
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
  assert {"!requirements.lock", "!setup.py", "!schemas/", "!pipeline/", "!components/"} <= set(
    ignore
  )
