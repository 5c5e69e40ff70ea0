"""Runs the steps of a compiled PipelineJob here, as Kubeflow Pipelines 2.x or Vertex AI runs them.

No KFP backend runs on this machine, so this mirrors what the backend does for
each step, from its sources: build the step's ExecutorInput, replace `{{$}}`
in the executor's `command` + `args` with it, run that as a process, read the
ExecutorOutput file back and hand the output artifacts to the steps downstream.

Open-source KFP 2.x (`OPEN_SOURCE`), kubeflow/pipelines at 7b70c7b9,
`backend/src/v2`:
- compiler/visitor.go:134: a step that is neither a container nor an
  importer is refused ("non-container and non-importer executor not
  implemented").
- driver/driver.go:733-802 (provisionOutputs): one output artifact per
  declared output, named by its key, typed as declared, at
  `<pipeline root>/<task>/<uuid>/<key>`, plus `executor-logs` of type
  `system.Artifact` (:747-757, publishLogs); the output metadata file is the
  pod-local path of the task root (`/gcs/...`), or
  `/tmp/kfp_outputs/output_metadata.json` (component/launcher_v2.go:526) when
  the root has no scheme the launcher knows, as here.
- metadata/client.go:1141-1145 (GetOutputArtifactsByExecutionId) and :256-258
  (ToRuntimeArtifact): an upstream artifact reaches the next step with
  `instanceSchema: ""`; metadata/converter.go:181-221: its `name` is its MLMD
  id and its `metadata` its (custom) properties, which include the
  launcher's `display_name` and `store_session_info` (client.go:1234-1250).
- component/launcher_v2.go:1310-1331 (addDefaultParams) and :1051-1075
  (compileCmdAndArgs): parameter defaults, then `{{$}}` is the ExecutorInput
  as protojson; :1188-1206 (mergeRuntimeArtifacts): the ExecutorOutput's URI
  and metadata are merged into the provisioned output artifact.
- `lifecycle.preCacheCheck` is never run (nothing in backend/src/v2 reads it).

Vertex AI Pipelines (`VERTEX`), whose service is closed source: the shape
TFX's own entry point is tested with
(tfx/orchestration/kubeflow/v2/container/testdata/executor_invocation.json:
artifact names `projects/<n>/locations/<region>/metadataStores/default/
artifacts/<id>`, every artifact typed by its `instanceSchema`), the output
file `<root>/<project number>/<job>/<task>_<uuid>/executor_output.json`
(kubeflow_v2_run_executor.py's comment), and the pre-cache check run before
the executor with the same ExecutorInput (file_based_example_gen/driver.py).

Not emulated: caching (every step runs), the launcher's copy of input
artifacts to the pod's disk and of local outputs back to the bucket (TFX reads
and writes artifact URIs itself; the pipeline root here is a local directory
standing in for the bucket), the pod (each step is a process on this machine
with its own directory for the pod's /tmp), retries and Kubernetes settings.
"""

import dataclasses
import itertools
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from typing import Any
from typing import Dict
from typing import List
from typing import Optional

OPEN_SOURCE = "kfp"
VERTEX = "vertex"
_PROJECT_NUMBER = "123456789"
_VERTEX_ARTIFACTS = f"projects/{_PROJECT_NUMBER}/locations/us-central1/metadataStores/default"


class StepFailed(Exception):
  """A step's process exited non-zero, or the backend would refuse the step."""


@dataclasses.dataclass
class StepRun:
  """What one step was given and what it produced."""

  task: str
  executor_input: Dict[str, Any]
  outputs: Dict[str, Dict[str, Any]]
  pre_cache_check_ran: bool
  seconds: float
  # CPU time of the step's processes, what the wall time would be on an idle
  # machine if they used one core.
  cpu_seconds: float


class MetadataStore:
  """The backend's ML Metadata: ids for the artifacts steps produce, across runs."""

  def __init__(self):
    self._ids = itertools.count(1)

  def record(self) -> int:
    """The id of a newly recorded artifact."""
    return next(self._ids)


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _topological_order(tasks: Dict[str, Any]) -> List[str]:
  order, done = [], set()
  while len(order) < len(tasks):
    ready = sorted(
      name
      for name, task in tasks.items()
      if name not in done and set(task.get("dependentTasks", [])) <= done
    )
    if not ready:
      raise StepFailed(f"The DAG has a cycle among {sorted(set(tasks) - done)}.")
    order += ready
    done.update(ready)
  return order


def _replace_placeholders(text: str, executor_input: Dict[str, Any], input_json: str) -> str:
  # launcher_v2.go:1051-1075 and getPlaceholders :1077-1173 (the ones a
  # container step's args can use without local paths).
  text = text.replace("{{$}}", input_json)
  for name, value in executor_input["inputs"].get("parameterValues", {}).items():
    shown = value if isinstance(value, str) else json.dumps(value)
    text = text.replace(f"{{{{$.inputs.parameters['{name}']}}}}", shown)
  for side in ("inputs", "outputs"):
    for name, artifact_list in executor_input[side].get("artifacts", {}).items():
      uri = artifact_list["artifacts"][0]["uri"]
      text = text.replace(f"{{{{$.{side}.artifacts['{name}'].uri}}}}", uri)
  return text


class Backend:
  """Runs a compiled PipelineJob's steps as one backend does.

  Args:
    backend: `OPEN_SOURCE` or `VERTEX`.
    work_dir: where the pods' private directories and step logs go.
    cwd: the image's working directory (the project root here).
    env: extra environment of every step's process.
    store: the backend's ML Metadata, shared by the runs of one backend.
  """

  def __init__(
    self,
    backend: str,
    work_dir: str,
    cwd: str,
    env: Optional[Dict[str, str]] = None,
    store: Optional[MetadataStore] = None,
  ):
    if backend not in (OPEN_SOURCE, VERTEX):
      raise ValueError(f"backend must be {OPEN_SOURCE!r} or {VERTEX!r}, got {backend!r}.")
    self.backend = backend
    self.work_dir = work_dir
    self.cwd = cwd
    # The image's `python` is the project's: this interpreter first on PATH.
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    self.env = {**os.environ, "PATH": path, **(env or {})}
    self.store = store or MetadataStore()

  def run(
    self, job: Dict[str, Any], parameter_values: Optional[Dict[str, Any]] = None
  ) -> Dict[str, StepRun]:
    """Runs every step of `job` in dependency order.

    Args:
      job: the PipelineJob (pipeline.json).
      parameter_values: runtime parameters replacing the job's.

    Returns:
      The steps run, by task name, in the order they ran.

    Raises:
      StepFailed: for a step the backend refuses or whose process fails.
    """
    spec = job["pipelineSpec"]
    root = job["runtimeConfig"]["gcsOutputDirectory"].rstrip("/")
    parameters = {**job["runtimeConfig"].get("parameterValues", {}), **(parameter_values or {})}
    executors = spec["deploymentSpec"]["executors"]
    tasks = spec["root"]["dag"]["tasks"]
    job_id = f"{spec['pipelineInfo']['name']}-{uuid.uuid4().hex[:8]}"
    if self.backend == OPEN_SOURCE:
      # The Argo compiler refuses the whole run up front (visitor.go:134).
      for task in tasks.values():
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        if "container" not in executors[label] and "importer" not in executors[label]:
          raise StepFailed(
            f"executor(label={label!r}): non-container and non-importer executor not implemented"
          )
    runs: Dict[str, StepRun] = {}
    for name in _topological_order(tasks):
      task = tasks[name]
      component = spec["components"][task["componentRef"]["name"]]
      container = executors[component["executorLabel"]]["container"]
      executor_input = self._executor_input(name, task, component, root, job_id, parameters, runs)
      runs[name] = self._run_step(name, container, executor_input)
    return runs

  def _executor_input(self, name, task, component, root, job_id, parameters, runs):
    inputs: Dict[str, Any] = {"parameterValues": {}, "artifacts": {}}
    for key, parameter in task.get("inputs", {}).get("parameters", {}).items():
      if "runtimeValue" in parameter:
        inputs["parameterValues"][key] = parameter["runtimeValue"]["constant"]
      else:
        inputs["parameterValues"][key] = parameters[parameter["componentInputParameter"]]
    # addDefaultParams (launcher_v2.go:1310-1331).
    for key, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
      if key not in inputs["parameterValues"] and "defaultValue" in definition:
        inputs["parameterValues"][key] = definition["defaultValue"]
    for key, artifact in task.get("inputs", {}).get("artifacts", {}).items():
      source = artifact["taskOutputArtifact"]
      upstream = runs[source["producerTask"]].outputs[source["outputArtifactKey"]]
      inputs["artifacts"][key] = {"artifacts": [self._input_artifact(upstream)]}

    output_specs = dict(component.get("outputDefinitions", {}).get("artifacts", {}))
    task_uuid = str(uuid.uuid4())
    if self.backend == OPEN_SOURCE:
      # provisionOutputs (driver.go:733-802).
      output_specs["executor-logs"] = {"artifactType": {"schemaTitle": "system.Artifact"}}
      task_root = f"{root}/{name}/{task_uuid}"
      output_file = os.path.join(self._pod_dir(name), "tmp/kfp_outputs/output_metadata.json")
    else:
      task_root = f"{root}/{_PROJECT_NUMBER}/{job_id}/{name}_{task_uuid}"
      output_file = f"{task_root}/executor_output.json"
    outputs: Dict[str, Any] = {"artifacts": {}, "outputFile": output_file}
    for key, output_spec in output_specs.items():
      artifact = {"uri": f"{task_root}/{key}", "type": output_spec["artifactType"]}
      if self.backend == OPEN_SOURCE:
        artifact["name"] = key
      else:
        artifact["name"] = f"{_VERTEX_ARTIFACTS}/artifacts/{uuid.uuid4().hex}"
      if "metadata" in output_spec:
        artifact["metadata"] = output_spec["metadata"]
      outputs["artifacts"][key] = {"artifacts": [artifact]}
    return {"inputs": inputs, "outputs": outputs}

  def _input_artifact(self, upstream: Dict[str, Any]) -> Dict[str, Any]:
    if self.backend == OPEN_SOURCE:
      # converter.go:181-221 and client.go:1141-1145, 256-258: named by the
      # MLMD id, its properties as metadata, and no schema.
      return {
        "name": str(upstream["id"]),
        "uri": upstream["uri"],
        "metadata": upstream["metadata"],
        "type": {"instanceSchema": ""},
      }
    return {
      "name": upstream["name"],
      "uri": upstream["uri"],
      "metadata": upstream["metadata"],
      "type": upstream["type"],
    }

  def _pod_dir(self, name: str) -> str:
    path = os.path.join(self.work_dir, f"{self.backend}-pod-{name}-{uuid.uuid4().hex[:6]}")
    os.makedirs(path, exist_ok=True)
    return path

  def _run_step(self, name, container, executor_input) -> StepRun:
    input_json = json.dumps(executor_input)
    start, start_cpu = time.monotonic(), _children_cpu_seconds()
    pre_cache_check = container.get("lifecycle", {}).get("preCacheCheck")
    ran_check = False
    if pre_cache_check and self.backend == VERTEX:
      self._execute(name + ".preCacheCheck", pre_cache_check, executor_input, input_json)
      ran_check = True
      # "The CAIP Pipelines service will update the task's properties and
      # artifacts prior to running the executor" (file_based_example_gen/
      # driver.py, _run_driver); TFX's executor reads the properties back
      # from the output file itself.
      driver_output = self._executor_output(executor_input["outputs"]["outputFile"])
      for key, artifact_list in driver_output.get("artifacts", {}).items():
        target = executor_input["outputs"]["artifacts"][key]["artifacts"][0]
        target.setdefault("metadata", {}).update(artifact_list["artifacts"][0].get("metadata", {}))
      input_json = json.dumps(executor_input)
    self._execute(name, container, executor_input, input_json)
    executor_output = self._executor_output(executor_input["outputs"]["outputFile"])
    outputs = {}
    for key, artifact_list in executor_input["outputs"]["artifacts"].items():
      artifact = json.loads(json.dumps(artifact_list["artifacts"][0]))
      produced = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
      if produced and key != "executor-logs":
        # mergeRuntimeArtifacts (launcher_v2.go:1188-1206).
        if produced[0].get("uri"):
          artifact["uri"] = produced[0]["uri"]
        artifact.setdefault("metadata", {}).update(produced[0].get("metadata", {}))
      artifact.setdefault("metadata", {})
      if self.backend == OPEN_SOURCE:
        # RecordArtifact (client.go:1234-1250).
        artifact["metadata"].setdefault("display_name", key)
        artifact["metadata"].setdefault("store_session_info", '{"Provider":"gs","Params":{}}')
      artifact["id"] = self.store.record()
      outputs[key] = artifact
    return StepRun(
      name,
      executor_input,
      outputs,
      ran_check,
      time.monotonic() - start,
      _children_cpu_seconds() - start_cpu,
    )

  def _execute(self, label, container, executor_input, input_json) -> None:
    command = [
      _replace_placeholders(part, executor_input, input_json)
      for part in [*container["command"], *container.get("args", [])]
    ]
    log_path = os.path.join(self.work_dir, f"{self.backend}-{label}.log")
    with open(log_path, "w") as log:
      result = subprocess.run(
        command, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, timeout=900
      )
    if result.returncode != 0:
      with open(log_path) as log:
        tail = log.read()[-4000:]
      raise StepFailed(f"{label} exited with {result.returncode} ({log_path}):\n{tail}")

  @staticmethod
  def _executor_output(path: str) -> Dict[str, Any]:
    # getExecutorOutputFile (launcher_v2.go:1208-1236): no file, no outputs.
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      return json.load(f)
