"""Schedules the compiled pipeline on a Kubeflow Pipelines 2.x API (`make kubeflow-schedule`).

`create` makes a recurring run of the bare PipelineSpec `make kubeflow` writes
(OUTPUT_ROOT/kubeflow/pipeline_spec.yaml) with `kfp.Client`: at most one run
at a time, and no catch-up of the runs a paused or late schedule missed.
`list`, `pause`, `resume` and `delete` manage recurring runs.

KFP parses a schedule with robfig/cron v1 (backend/src/apiserver/server/
api_converter.go, `cron.Parse`), whose first field is seconds: a 5-field cron
such as `0 3 * * *` would mean "at second 0 of minute 3 of every hour". A
5-field cron is therefore given a leading `0`; a 6-field one is taken as KFP's.
"""

import argparse
import os
import re
import sys
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import kfp
import kfp_server_api
import urllib3

from next_category.pipeline import configs
from next_category.pipeline.kubeflow import package as kubeflow_package
from next_category.pipeline.kubeflow import submit as kubeflow_submit

# (name, lowest, highest) of each field of a 5-field cron.
_FIELDS = (
  ("minute", 0, 59),
  ("hour", 0, 23),
  ("day of month", 1, 31),
  ("month", 1, 12),
  ("day of week", 0, 6),
)
_SECONDS = ("second", 0, 59)
_NAMES = {
  "month": ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"],
  "day of week": ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
}
# robfig/cron's descriptors, taken as they are.
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_PART = re.compile(r"^(?:\*|\?|([0-9A-Za-z]+)(?:-([0-9A-Za-z]+))?)(?:/([0-9]+))?$")


def _check_field(text: str, name: str, lowest: int, highest: int) -> None:
  names = _NAMES.get(name, [])

  def value(token: str) -> int:
    if token.upper() in names:
      return names.index(token.upper()) + (1 if name == "month" else 0)
    if not token.isdigit() or not lowest <= int(token) <= highest:
      raise ValueError(f"{token!r} is not a {name} ({lowest}-{highest}).")
    return int(token)

  for part in text.split(","):
    match = _PART.match(part)
    if not match or (part.startswith("?") and name not in ("day of month", "day of week")):
      raise ValueError(f"{part!r} is not a {name} value, range, list or step.")
    start, end, step = match.groups()
    if start is not None and end is not None and value(start) > value(end):
      raise ValueError(f"the {name} range {part!r} runs backwards.")
    if start is not None:
      value(start)
    if step is not None and int(step) == 0:
      raise ValueError(f"the {name} step in {part!r} is 0.")


def unix_cron(cron: str) -> str:
  """A standard 5-field cron (minute hour day-of-month month day-of-week), single-spaced.

  Vertex AI takes this form (`next_category.pipeline.kubeflow.vertex_schedule`).

  Raises:
    ValueError: naming the field that is malformed.
  """
  fields = cron.split()
  if len(fields) != 5:
    raise ValueError(
      f"The cron schedule {cron!r} has {len(fields)} fields; give 5 (minute hour day-of-month "
      "month day-of-week), e.g. '0 3 * * *' for 03:00 every day."
    )
  for field, (name, lowest, highest) in zip(fields, _FIELDS, strict=True):
    try:
      _check_field(field, name, lowest, highest)
    except ValueError as e:
      raise ValueError(f"The cron schedule {cron!r} is malformed: {e}") from None
  return " ".join(fields)


def kfp_cron(cron: str) -> str:
  """KFP's 6-field form of a cron schedule.

  Args:
    cron: 5 fields (minute hour day-of-month month day-of-week), 6 fields
      (KFP's, seconds first) or a descriptor such as `@daily`.

  Returns:
    The schedule as KFP parses it, e.g. `0 0 3 * * *` for `0 3 * * *`.

  Raises:
    ValueError: naming the field that is malformed.
  """
  text = " ".join(cron.split())
  if text in _DESCRIPTORS:
    return text
  fields = text.split(" ") if text else []
  if len(fields) == 5:
    specs, fields = _FIELDS, fields
  elif len(fields) == 6:
    specs = (_SECONDS, *_FIELDS)
  else:
    raise ValueError(
      f"The cron schedule {cron!r} has {len(fields)} fields; give 5 (minute hour day-of-month "
      "month day-of-week, e.g. '0 3 * * *' for 03:00 every day), 6 (KFP's, seconds first) or "
      f"one of {', '.join(sorted(_DESCRIPTORS))}."
    )
  for field, (name, lowest, highest) in zip(fields, specs, strict=True):
    try:
      _check_field(field, name, lowest, highest)
    except ValueError as e:
      raise ValueError(f"The cron schedule {cron!r} is malformed: {e}") from None
  return text if len(fields) == 6 else "0 " + text


def _client(host: str, namespace: Optional[str]) -> kfp.Client:
  kubeflow_submit.check_reachable(host)
  return kfp.Client(host=host, namespace=namespace or "kubeflow")  # kfp's default


def _call(host: str, action: str, fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except kfp_server_api.ApiException as e:
    raise kubeflow_submit.SubmitError(
      f"Kubeflow Pipelines at {host} refused to {action}: HTTP {e.status} {e.reason}: "
      f"{kubeflow_submit.server_message(e.body)}"
    ) from e
  except (urllib3.exceptions.HTTPError, TimeoutError) as e:
    raise kubeflow_submit.SubmitError(
      f"Lost the connection to Kubeflow Pipelines at {host}: {e}"
    ) from e


def create(
  host: str,
  output_root: str,
  cron: str,
  name: str,
  experiment_name: str,
  parameter_overrides: Optional[Dict[str, str]] = None,
  namespace: Optional[str] = None,
) -> str:
  """Creates an enabled recurring run of the compiled pipeline.

  Args:
    host: the KFP API endpoint.
    output_root: where `make kubeflow` wrote kubeflow/pipeline.json and
      kubeflow/pipeline_spec.yaml.
    cron: the schedule (see `kfp_cron`).
    name: the recurring run's name.
    experiment_name: experiment its runs are filed under (created if missing).
    parameter_overrides: runtime parameter values replacing the compiled ones.
    namespace: the Kubernetes namespace of a multi-user deployment.

  Returns:
    The recurring run's id.

  Raises:
    FileNotFoundError: if the package was not compiled.
    ValueError: for a malformed cron or an unknown parameter.
    kubeflow_submit.SubmitError: if the endpoint cannot be reached or refuses.
  """
  schedule = kfp_cron(cron)
  job = kubeflow_package.load(kubeflow_package.package_path(output_root))
  spec_path = kubeflow_package.spec_path(output_root)
  if not os.path.isfile(spec_path):
    raise FileNotFoundError(f"No {spec_path}; run `make kubeflow` again to write it.")
  params = kubeflow_submit.run_parameters(job, parameter_overrides)
  client = _client(host, namespace)
  experiment = _call(
    host, "create the experiment", client.create_experiment, experiment_name, namespace=namespace
  )
  recurring_run = _call(
    host,
    "create the recurring run",
    client.create_recurring_run,
    experiment_id=experiment.experiment_id,
    job_name=name,
    cron_expression=schedule,
    max_concurrency=1,
    no_catchup=True,
    params=params,
    pipeline_package_path=spec_path,
    pipeline_root=job["runtimeConfig"].get("gcsOutputDirectory"),
    enabled=True,
  )
  return recurring_run.recurring_run_id


def list_recurring_runs(
  host: str, experiment_name: Optional[str], namespace: Optional[str] = None
) -> List[kfp_server_api.V2beta1RecurringRun]:
  """The recurring runs, of one experiment if `experiment_name` is given."""
  client = _client(host, namespace)
  experiment_id = None
  if experiment_name:
    experiment = _call(
      host,
      "find the experiment",
      client.get_experiment,
      experiment_name=experiment_name,
      namespace=namespace,
    )
    experiment_id = experiment.experiment_id
  runs, token = [], ""
  while True:
    page = _call(
      host,
      "list recurring runs",
      client.list_recurring_runs,
      page_token=token,
      page_size=100,
      experiment_id=experiment_id,
      namespace=namespace,
    )
    runs += page.recurring_runs or []
    token = page.next_page_token
    if not token:
      return runs


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1]
  )
  common = argparse.ArgumentParser(add_help=False)
  kubeflow_submit.add_endpoint_flags(common)
  commands = parser.add_subparsers(dest="command", required=True)
  create_parser = commands.add_parser("create", parents=[common], help="Create a recurring run.")
  create_parser.add_argument(
    "--cron", required=True, help="When to run: 5-field cron, e.g. '0 3 * * *' (03:00 daily)."
  )
  add_schedule_run_flags(create_parser, "Where `make kubeflow` wrote OUTPUT_ROOT/kubeflow/.")
  create_parser.add_argument("--experiment_name", default=kubeflow_submit.DEFAULT_EXPERIMENT)
  list_parser = commands.add_parser("list", parents=[common], help="List recurring runs.")
  list_parser.add_argument("--experiment_name", help="Only this experiment's.")
  for command, text in (
    ("pause", "Stop a recurring run from starting runs."),
    ("resume", "Let a paused recurring run start runs again (missed ones are not caught up)."),
    ("delete", "Delete a recurring run (its past runs stay)."),
  ):
    commands.add_parser(command, parents=[common], help=text).add_argument(
      "recurring_run_id", help="The id `list` shows."
    )
  args = parser.parse_args(argv)
  kubeflow_submit.check_endpoint_flags(parser, args)
  return args


def add_schedule_run_flags(create_parser: argparse.ArgumentParser, output_root_help: str) -> None:
  """The `create` flags KFP and Vertex AI schedules share: name, compiled package, steps."""
  create_parser.add_argument("--name", default=None, help="Default: <pipeline>-<cron>.")
  create_parser.add_argument("--output_root", default=configs.OUTPUT_ROOT, help=output_root_help)
  create_parser.add_argument(
    "--train_steps",
    type=int,
    help=f"Training steps of every run (the {kubeflow_package.TRAIN_ARGS_PARAMETER} parameter).",
  )


def default_name(cron: str) -> str:
  """A schedule's name when none is given: the pipeline's and the cron's, as a slug."""
  slug = re.sub(r"[^a-z0-9]+", "-", cron.lower()).strip("-")
  return f"{configs.PIPELINE_NAME.replace('_', '-')}-{slug}"


def parameter_overrides(train_steps: Optional[int]) -> Dict[str, str]:
  """The pipeline parameters a schedule's runs take instead of the compiled defaults."""
  if train_steps is None:
    return {}
  return {kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(train_steps)}


def main(argv=None) -> int:
  """Runs one command; returns the exit code (2 for bad input, 1 if the endpoint fails)."""
  args = parse_args(argv)
  try:
    if args.command == "create":
      overrides = parameter_overrides(args.train_steps)
      name = args.name or default_name(args.cron)
      run_id = create(
        args.host,
        os.path.abspath(args.output_root),
        args.cron,
        name,
        args.experiment_name,
        overrides,
        args.namespace,
      )
      print(
        f"Created recurring run {run_id} ({name!r}, cron {kfp_cron(args.cron)!r} in KFP's "
        f"seconds-first form, one run at a time, no catch-up) in experiment "
        f"{args.experiment_name!r} at {args.host}."
      )
    elif args.command == "list":
      for run in list_recurring_runs(args.host, args.experiment_name, args.namespace):
        cron = run.trigger.cron_schedule.cron if run.trigger and run.trigger.cron_schedule else "-"
        print(f"{run.recurring_run_id}\t{run.display_name}\t{run.status}\t{cron}")
    else:
      client = _client(args.host, args.namespace)
      fn, done = {
        "pause": (client.disable_recurring_run, "Paused"),
        "resume": (client.enable_recurring_run, "Resumed"),
        "delete": (client.delete_recurring_run, "Deleted"),
      }[args.command]
      _call(args.host, f"{args.command} the recurring run", fn, args.recurring_run_id)
      print(f"{done} recurring run {args.recurring_run_id}.")
  except (FileNotFoundError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  except kubeflow_submit.SubmitError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
