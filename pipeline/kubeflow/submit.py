"""Starts a run of the compiled pipeline on a Kubeflow Pipelines 2.x API (`make kubeflow-submit`).

Sends the package's PipelineSpec, pipeline root and runtime parameter values
with `kfp.Client(host=...).create_run_from_pipeline_package`. The endpoint is
the KFP API (for a cluster, e.g. `kubectl port-forward -n kubeflow
svc/ml-pipeline-ui 8080:80` and --host=http://localhost:8080).
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
from typing import Any
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

import kfp
import kfp_server_api
import urllib3

from next_category.pipeline import configs
from next_category.pipeline.kubeflow import package as kubeflow_package

# Deadline of the reachability check before any KFP call.
HEALTHZ_DEADLINE_S = 10
_HEALTHZ_PATH = "/apis/v2beta1/healthz"
DEFAULT_EXPERIMENT = "next-category"


class SubmitError(Exception):
  """The endpoint could not be reached or refused the run."""


def check_reachable(host: str, deadline_s: float = HEALTHZ_DEADLINE_S) -> None:
  """Fails fast, with the host in the message, unless `host` answers as a KFP 2.x API.

  (kfp.Client retries an unreachable host for half a minute and then reports
  only a timeout.)

  Raises:
    SubmitError: if nothing answers at `host`, or it is not a KFP 2.x API.
  """
  url = host.rstrip("/") + _HEALTHZ_PATH
  try:
    with urllib.request.urlopen(url, timeout=deadline_s):
      return
  except urllib.error.HTTPError as e:
    if e.code == 404:
      raise SubmitError(
        f"{host} answered 404 for {_HEALTHZ_PATH}: not a Kubeflow Pipelines 2.x API endpoint."
      ) from e
    # Anything else (e.g. 401 from an auth proxy) means something is there;
    # kfp.Client reports the details.
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, "reason", e)
    raise SubmitError(
      f"Cannot reach Kubeflow Pipelines at {host} ({reason}). Check KFP_HOST; for a "
      "cluster, run `kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` and "
      "use KFP_HOST=http://localhost:8080."
    ) from e


def submit(
  host: str,
  package_path: str,
  experiment_name: str,
  run_name: Optional[str] = None,
  parameter_overrides: Optional[Dict[str, str]] = None,
  namespace: Optional[str] = None,
  enable_caching: Optional[bool] = None,
) -> str:
  """Starts a run of the package at `package_path`.

  Args:
    host: the KFP API endpoint, e.g. http://localhost:8080.
    package_path: the PipelineJob `next_category.pipeline.kubeflow.kubeflow_runner` wrote.
    experiment_name: experiment the run is filed under (created if missing).
    run_name: the run's name; default: the pipeline's name and the UTC time.
    parameter_overrides: runtime parameter values replacing the compiled ones.
    namespace: the Kubernetes namespace of a multi-user deployment.
    enable_caching: override every task's caching (None: as compiled).

  Returns:
    The id of the new run.

  Raises:
    FileNotFoundError: if there is no package.
    ValueError: for a malformed package or an unknown parameter.
    SubmitError: if the endpoint cannot be reached or refuses the run.
  """
  job = kubeflow_package.load(package_path)
  spec = job["pipelineSpec"]
  arguments = run_parameters(job, parameter_overrides)
  pipeline_name = spec["pipelineInfo"]["name"]
  run_name = run_name or (
    f"{pipeline_name}-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}"
  )

  check_reachable(host)
  # kfp.Client reads a PipelineSpec from a .yaml file; JSON is YAML.
  with tempfile.TemporaryDirectory() as tmp:
    spec_path = os.path.join(tmp, "pipeline.yaml")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    try:
      client = kfp.Client(host=host, namespace=namespace or "kubeflow")  # kfp's default
      result = client.create_run_from_pipeline_package(
        spec_path,
        arguments=arguments,
        run_name=run_name,
        experiment_name=experiment_name,
        namespace=namespace,
        pipeline_root=job["runtimeConfig"].get("gcsOutputDirectory"),
        enable_caching=enable_caching,
      )
    except kfp_server_api.ApiException as e:
      raise SubmitError(
        f"Kubeflow Pipelines at {host} refused the run: HTTP {e.status} {e.reason}: "
        f"{server_message(e.body)}"
      ) from e
    except (urllib3.exceptions.HTTPError, TimeoutError) as e:
      raise SubmitError(f"Lost the connection to Kubeflow Pipelines at {host}: {e}") from e
  return result.run_id


def run_parameters(job: Dict[str, Any], overrides: Optional[Dict[str, str]]) -> Dict[str, Any]:
  """The compiled runtime parameter values of `job` with `overrides` applied.

  Raises:
    ValueError: for an override of a parameter the pipeline does not have.
  """
  spec = job["pipelineSpec"]
  declared = set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))
  unknown = set(overrides or {}) - declared
  if unknown:
    raise ValueError(
      f"The pipeline has no runtime parameter {', '.join(sorted(unknown))}; "
      f"it has {', '.join(sorted(declared)) or 'none'}."
    )
  return {**kubeflow_package.parameter_values(job), **(overrides or {})}


def server_message(body) -> str:
  """The message of a KFP API error body."""
  # The API server answers errors as JSON with a `message`, or `error`.
  try:
    parsed = json.loads(body)
  except (TypeError, ValueError):
    return str(body).strip()
  if isinstance(parsed, dict):
    return str(parsed.get("message") or parsed.get("error") or parsed)
  return str(parsed)


def _parse_parameter(text: str) -> Tuple[str, str]:
  name, sep, value = text.partition("=")
  if not sep or not name:
    raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
  return name, value


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  add_endpoint_flags(parser)
  parser.add_argument(
    "--output_root",
    default=configs.OUTPUT_ROOT,
    help="Where `make kubeflow` wrote OUTPUT_ROOT/kubeflow/pipeline.json.",
  )
  parser.add_argument("--package", help="The compiled package (overrides --output_root).")
  parser.add_argument("--experiment_name", default=DEFAULT_EXPERIMENT)
  parser.add_argument("--run_name", help="Default: the pipeline's name and the UTC time.")
  parser.add_argument(
    "--train_steps",
    type=int,
    help=f"Training steps of this run (sets the {kubeflow_package.TRAIN_ARGS_PARAMETER} "
    "runtime parameter).",
  )
  parser.add_argument(
    "--parameter",
    action="append",
    type=_parse_parameter,
    default=[],
    metavar="NAME=VALUE",
    help="A runtime parameter value for this run (repeatable).",
  )
  parser.add_argument(
    "--no_cache", action="store_true", help="Run every task even if a cached result exists."
  )
  args = parser.parse_args(argv)
  check_endpoint_flags(parser, args)
  return args


def add_endpoint_flags(parser: argparse.ArgumentParser) -> None:
  """Adds --host and --namespace, the KFP endpoint flags of submit and schedule."""
  parser.add_argument(
    "--host",
    default=os.environ.get("KF_PIPELINES_ENDPOINT"),
    help="KFP API endpoint, http(s)://host[:port] (default: $KF_PIPELINES_ENDPOINT).",
  )
  parser.add_argument("--namespace", help="Kubernetes namespace of a multi-user deployment.")


def check_endpoint_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """Exits with a usage error unless --host is an http(s) URL."""
  if not args.host:
    parser.error("--host (KFP_HOST) is required, e.g. --host=http://localhost:8080.")
  if not args.host.startswith(("http://", "https://")):
    parser.error(f"--host must start with http:// or https://, got {args.host!r}.")


def main(argv=None) -> int:
  """Submits a run; returns the exit code (2 for bad flags or package, 1 if the endpoint fails)."""
  args = parse_args(argv)
  overrides = dict(args.parameter)
  try:
    if args.train_steps is not None:
      overrides[kubeflow_package.TRAIN_ARGS_PARAMETER] = kubeflow_package.train_args_value(
        args.train_steps
      )
    run_id = submit(
      host=args.host,
      package_path=args.package or kubeflow_package.package_path(args.output_root),
      experiment_name=args.experiment_name,
      run_name=args.run_name,
      parameter_overrides=overrides,
      namespace=args.namespace,
      enable_caching=False if args.no_cache else None,
    )
  except (FileNotFoundError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  except SubmitError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  print(f"Started run {run_id} in experiment {args.experiment_name!r} at {args.host}.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
