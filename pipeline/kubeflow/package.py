"""The compiled Kubeflow package: where it is written, its runtime parameters, reading it back.

Shared by `kubeflow_runner` (which writes the package) and `kubeflow_submit`
(which starts runs of it); it imports neither TFX nor KFP, so submitting does
not pay for importing TFX.
"""

import json
import os
from typing import Any
from typing import Dict
from typing import Optional

# The package is a KFP v2 PipelineJob (what Vertex AI Pipelines runs as is);
# its `pipelineSpec` is the PipelineSpec the open-source KFP API takes.
PACKAGE_DIR = "kubeflow"
PACKAGE_FILENAME = "pipeline.json"
# The bare PipelineSpec, what the KFP UI's upload and kfp.Client take (the UI
# refuses a whole PipelineJob).
SPEC_FILENAME = "pipeline_spec.yaml"

# The Trainer's TrainArgs as a runtime parameter. TFX 1.16 cannot put a
# runtime parameter inside a proto field, so the parameter is the whole
# TrainArgs as JSON, e.g. {"num_steps": 400}.
TRAIN_ARGS_PARAMETER = "train_args"


def package_path(output_root: str) -> str:
  """Where `kubeflow_runner` writes the package under OUTPUT_ROOT."""
  return os.path.join(output_root, PACKAGE_DIR, PACKAGE_FILENAME)


def spec_path(output_root: str) -> str:
  """Where `kubeflow_runner` writes the bare PipelineSpec under OUTPUT_ROOT."""
  return os.path.join(output_root, PACKAGE_DIR, SPEC_FILENAME)


def bare_spec(job: Dict[str, Any]) -> Dict[str, Any]:
  """The PipelineSpec of a PipelineJob, carrying the job's pipeline root and parameter values.

  The pipeline root becomes `defaultPipelineRoot` and each runtime parameter
  value the `defaultValue` of its root input, so a run started from the spec
  alone (the UI, a recurring run) uses what the package was compiled with.
  """
  spec = json.loads(json.dumps(job["pipelineSpec"]))
  root = job.get("runtimeConfig", {}).get("gcsOutputDirectory")
  if root:
    spec["defaultPipelineRoot"] = root
  parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
  for name, value in parameter_values(job).items():
    if name in parameters:
      parameters[name]["defaultValue"] = value
  return spec


def train_args_value(train_steps: Optional[int]) -> str:
  """The `train_args` runtime parameter value for `train_steps` steps.

  None leaves `num_steps` out: the Trainer then trains for its
  `train_epochs` (custom_config).

  Raises:
    ValueError: if `train_steps` is not positive.
  """
  if train_steps is None:
    return json.dumps({})
  if train_steps < 1:
    raise ValueError(f"train_steps must be positive, got {train_steps}.")
  return json.dumps({"num_steps": train_steps})


def load(path: str) -> Dict[str, Any]:
  """Reads a compiled package.

  Returns:
    The PipelineJob as a dict, with `pipelineSpec` and `runtimeConfig`.

  Raises:
    FileNotFoundError: if there is no package at `path`.
    ValueError: if the file is not a PipelineJob with a pipeline spec.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"No compiled pipeline at {path}; run `make kubeflow` (next-category-kubeflow) first, "
      "or pass --package=/path/to/pipeline.json."
    )
  with open(path) as f:
    try:
      job = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not JSON ({e}); expected a compiled PipelineJob.") from e
  if not isinstance(job, dict) or "pipelineSpec" not in job:
    raise ValueError(
      f"{path} has no pipelineSpec; expected the PipelineJob that `make kubeflow` "
      "(next-category-kubeflow) writes."
    )
  job.setdefault("runtimeConfig", {})
  return job


def parameter_values(job: Dict[str, Any]) -> Dict[str, Any]:
  """The runtime parameter values the package was compiled with."""
  # Schema 2.1 (what kubeflow_runner compiles) keeps plain JSON values here.
  return dict(job["runtimeConfig"].get("parameterValues", {}))
