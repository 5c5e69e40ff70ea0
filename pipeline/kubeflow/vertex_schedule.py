"""Schedules the compiled pipeline on Vertex AI Pipelines (`make vertex-schedule`).

`create` makes a Vertex AI Schedule of the PipelineJob `make kubeflow` writes
(OUTPUT_ROOT/kubeflow/pipeline.json) with google-cloud-aiplatform
(`aiplatform.PipelineJob(...).create_schedule`): at most one run at a time and
no queueing behind a run still going; a resumed schedule does not backfill the
runs it missed. `list`, `pause`, `resume` and `delete` manage the schedules of
a project and region.

Vertex AI takes a standard 5-field cron (minute hour day-of-month month
day-of-week), in UTC unless prefixed with `TZ=<IANA zone> ` or
`CRON_TZ=<IANA zone> `; there is no seconds field, unlike KFP's
(`next_category.pipeline.kubeflow.schedule`). Calls go over REST; an `http://`
--api_endpoint (a local emulator) is called without credentials.
"""

import argparse
import os
import re
import sys
import tempfile
import zoneinfo
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import google.auth.exceptions
import requests
import yaml
from google.api_core import exceptions as api_exceptions
from google.auth import credentials as auth_credentials
from google.cloud import aiplatform
from google.cloud.aiplatform import constants as aiplatform_constants

from next_category.pipeline.kubeflow import kubeflow_runner
from next_category.pipeline.kubeflow import package as kubeflow_package
from next_category.pipeline.kubeflow import schedule as kubeflow_schedule
from next_category.pipeline.kubeflow import submit as kubeflow_submit

# Every call's deadline, in seconds.
REQUEST_TIMEOUT_S = 60.0
# Google Cloud project ids: 6-30 lowercase letters, digits and hyphens, a letter first.
_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
_TIME_ZONE_PREFIX = re.compile(r"^(CRON_TZ|TZ)=(\S+)\s+(.*)$")


class ScheduleError(Exception):
  """Vertex AI could not be reached or refused the request."""


def vertex_cron(cron: str) -> str:
  """The schedule as Vertex AI takes it: 5 fields, with an optional time zone prefix.

  Args:
    cron: e.g. `0 3 * * *` (03:00 UTC every day) or
      `TZ=Europe/Berlin 0 3 * * *`.

  Returns:
    `cron`, single-spaced.

  Raises:
    ValueError: for an unknown time zone or a malformed field.
  """
  text = " ".join(cron.split())
  match = _TIME_ZONE_PREFIX.match(text)
  prefix = ""
  if match:
    key, zone, text = match.groups()
    try:
      zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
      raise ValueError(
        f"The cron schedule {cron!r} names the time zone {zone!r}, which is not in the IANA "
        "time zone database (e.g. Europe/Berlin, America/New_York, UTC)."
      ) from None
    prefix = f"{key}={zone} "
  elif text.startswith(("TZ=", "CRON_TZ=")):
    raise ValueError(
      f"The cron schedule {cron!r} has a time zone but no fields after it, e.g. "
      "'TZ=Europe/Berlin 0 3 * * *'."
    )
  return prefix + kubeflow_schedule.unix_cron(text)


def check_location(project: Optional[str], region: Optional[str]) -> None:
  """Checks the project id and the region before any call.

  Raises:
    ValueError: for a missing or malformed project id, or a missing or
      unknown region.
  """
  if not project:
    raise ValueError(
      "The Google Cloud project is required: --project=PROJECT_ID (make: VERTEX_PROJECT=...)."
    )
  if not _PROJECT_ID.match(project):
    raise ValueError(
      f"{project!r} is not a Google Cloud project id (6-30 lowercase letters, digits and "
      "hyphens, starting with a letter)."
    )
  if not region:
    raise ValueError(
      "The Vertex AI region is required: --region=REGION, e.g. us-central1 "
      "(make: VERTEX_REGION=...)."
    )
  if region.lower() not in aiplatform_constants.base.SUPPORTED_REGIONS:
    raise ValueError(
      f"Vertex AI has no region {region!r}; e.g. us-central1, europe-west4, asia-northeast1."
    )


def _init(project: str, region: str, api_endpoint: Optional[str]) -> None:
  check_location(project, region)
  credentials = None
  if api_endpoint and api_endpoint.startswith("http://"):
    # Plain HTTP is a local emulator: never send real credentials over it.
    credentials = auth_credentials.AnonymousCredentials()
  aiplatform.init(
    project=project,
    location=region,
    api_endpoint=api_endpoint,
    api_transport="rest",
    credentials=credentials,
  )


def _call(where: str, action: str, fn, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except api_exceptions.GoogleAPICallError as e:
    raise ScheduleError(
      f"Vertex AI at {where} refused to {action}: HTTP {e.code} {e.message}"
    ) from e
  except google.auth.exceptions.DefaultCredentialsError as e:
    raise ScheduleError(
      "No Google Cloud credentials: run `gcloud auth application-default login`, or set "
      f"GOOGLE_APPLICATION_CREDENTIALS to a service account key ({e})."
    ) from e
  except (requests.exceptions.RequestException, google.auth.exceptions.TransportError) as e:
    raise ScheduleError(f"Cannot reach Vertex AI at {where}: {e}") from e


def _yaml_template(job: Dict[str, Any], scratch_dir: str) -> str:
  """The PipelineJob as a YAML file, the form in which aiplatform reads its numbers right.

  aiplatform reads every template with PyYAML (`utils.yaml_utils.load_yaml`),
  whose YAML 1.1 floats need a dot: pipeline.json's `1e-05` (InfraValidator's
  `max_abs_difference`, a NUMBER_DOUBLE) would reach Vertex AI as the string
  "1e-05". `yaml.safe_dump` writes it as `1.0e-05`.
  """
  path = os.path.join(scratch_dir, "pipeline_job.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(job, f, sort_keys=True)
  return path


def _where(region: str, api_endpoint: Optional[str]) -> str:
  return api_endpoint or f"{region}-aiplatform.googleapis.com"


def create(
  project: str,
  region: str,
  output_root: str,
  cron: str,
  display_name: str,
  parameter_overrides: Optional[Dict[str, str]] = None,
  service_account: Optional[str] = None,
  api_endpoint: Optional[str] = None,
) -> aiplatform.PipelineJobSchedule:
  """Creates an active schedule of the compiled PipelineJob.

  Args:
    project: the Google Cloud project id.
    region: the Vertex AI region, e.g. us-central1.
    output_root: where `make kubeflow` wrote kubeflow/pipeline.json.
    cron: the schedule (see `vertex_cron`).
    display_name: the schedule's name, also the display name of its runs.
    parameter_overrides: runtime parameter values replacing the compiled ones.
    service_account: the service account the runs run as (default: the
      project's Compute Engine default service account).
    api_endpoint: the Vertex AI endpoint (default: REGION-aiplatform.googleapis.com).

  Returns:
    The created schedule.

  Raises:
    FileNotFoundError: if the package was not compiled.
    ValueError: for a malformed cron, project or region, an unknown
      parameter, or a package compiled without a storage root.
    ScheduleError: if Vertex AI cannot be reached or refuses.
  """
  schedule_cron = vertex_cron(cron)
  check_location(project, region)
  path = kubeflow_package.package_path(output_root)
  job = kubeflow_package.load(path)
  pipeline_root = job["runtimeConfig"].get("gcsOutputDirectory", "")
  if not pipeline_root.startswith("gs://"):
    raise ValueError(
      f"{path} has the pipeline root {pipeline_root!r}; Vertex AI runs need a gs:// one: "
      "compile with `make kubeflow KFP_STORAGE_ROOT=gs://BUCKET/next-category`."
    )
  if pipeline_root.startswith(kubeflow_runner.PLACEHOLDER_STORAGE_ROOT):
    raise ValueError(
      f"{path} was compiled with the placeholder storage root "
      f"{kubeflow_runner.PLACEHOLDER_STORAGE_ROOT}; compile with "
      "`make kubeflow KFP_STORAGE_ROOT=gs://BUCKET/next-category` first."
    )
  kubeflow_submit.run_parameters(job, parameter_overrides)
  _init(project, region, api_endpoint)
  with tempfile.TemporaryDirectory() as scratch_dir:
    pipeline_job = aiplatform.PipelineJob(
      display_name=display_name,
      template_path=_yaml_template(job, scratch_dir),
      parameter_values=parameter_overrides or None,
      # None keeps the per-step cachingOptions compiled into the package.
      enable_caching=None,
    )
  return _call(
    _where(region, api_endpoint),
    "create the schedule",
    pipeline_job.create_schedule,
    cron=schedule_cron,
    display_name=display_name,
    max_concurrent_run_count=1,
    allow_queueing=False,
    service_account=service_account,
    create_request_timeout=REQUEST_TIMEOUT_S,
  )


def list_schedules(
  project: str, region: str, api_endpoint: Optional[str] = None
) -> List[aiplatform.PipelineJobSchedule]:
  """The pipeline job schedules of the project in the region, oldest first."""
  _init(project, region, api_endpoint)
  return _call(
    _where(region, api_endpoint),
    "list schedules",
    aiplatform.PipelineJobSchedule.list,
    order_by="create_time",
  )


def change(
  command: str, schedule_id: str, project: str, region: str, api_endpoint: Optional[str] = None
) -> None:
  """Pauses, resumes (without backfill) or deletes the schedule `schedule_id`.

  Raises:
    ValueError: for an unknown command or a bad project or region.
    ScheduleError: if Vertex AI cannot be reached or refuses (e.g. no such
      schedule, or pausing one that is not active).
  """
  if command not in ("pause", "resume", "delete"):
    raise ValueError(f"Unknown command {command!r}; expected pause, resume or delete.")
  _init(project, region, api_endpoint)
  where = _where(region, api_endpoint)
  schedule = _call(where, "find the schedule", aiplatform.PipelineJobSchedule.get, schedule_id)
  if command == "resume":
    _call(where, "resume the schedule", schedule.resume, catch_up=False)
  else:
    _call(where, f"{command} the schedule", getattr(schedule, command))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1]
  )
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument(
    "--project",
    default=os.environ.get("GOOGLE_CLOUD_PROJECT"),
    help="Google Cloud project id (default: $GOOGLE_CLOUD_PROJECT).",
  )
  common.add_argument(
    "--region",
    default=os.environ.get("GOOGLE_CLOUD_REGION"),
    help="Vertex AI region, e.g. us-central1 (default: $GOOGLE_CLOUD_REGION).",
  )
  common.add_argument(
    "--api_endpoint",
    help="Default: REGION-aiplatform.googleapis.com; an http:// URL is called without "
    "credentials (a local emulator).",
  )
  commands = parser.add_subparsers(dest="command", required=True)
  create_parser = commands.add_parser("create", parents=[common], help="Create a schedule.")
  create_parser.add_argument(
    "--cron",
    required=True,
    help="When to run: 5-field cron, e.g. '0 3 * * *' (03:00 UTC daily), optionally "
    "prefixed with 'TZ=Europe/Berlin '.",
  )
  kubeflow_schedule.add_schedule_run_flags(
    create_parser, "Where `make kubeflow` wrote OUTPUT_ROOT/kubeflow/pipeline.json."
  )
  create_parser.add_argument("--service_account", help="The service account runs run as.")
  commands.add_parser("list", parents=[common], help="List pipeline job schedules.")
  for command, text in (
    ("pause", "Stop a schedule from starting runs."),
    ("resume", "Let a paused schedule start runs again (missed ones are not backfilled)."),
    ("delete", "Delete a schedule (its past runs stay)."),
  ):
    commands.add_parser(command, parents=[common], help=text).add_argument(
      "schedule_id", help="The id `list` shows, or the full resource name."
    )
  return parser.parse_args(argv)


def main(argv=None) -> int:
  """Runs one command; returns the exit code (2 for bad input, 1 if Vertex AI fails)."""
  args = parse_args(argv)
  try:
    if args.command == "create":
      overrides = kubeflow_schedule.parameter_overrides(args.train_steps)
      name = args.name or kubeflow_schedule.default_name(args.cron)
      schedule = create(
        args.project,
        args.region,
        os.path.abspath(args.output_root),
        args.cron,
        name,
        overrides,
        args.service_account,
        args.api_endpoint,
      )
      print(
        f"Created schedule {schedule.resource_name} ({name!r}, cron {vertex_cron(args.cron)!r}, "
        "one run at a time, no queueing, no backfill)."
      )
    elif args.command == "list":
      for schedule in list_schedules(args.project, args.region, args.api_endpoint):
        resource = schedule.gca_resource
        print(
          f"{resource.name.rsplit('/', 1)[-1]}\t{resource.display_name}\t"
          f"{resource.state.name}\t{resource.cron}"
        )
    else:
      change(args.command, args.schedule_id, args.project, args.region, args.api_endpoint)
      done = {"pause": "Paused", "resume": "Resumed", "delete": "Deleted"}[args.command]
      print(f"{done} schedule {args.schedule_id}.")
  except (FileNotFoundError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  except ScheduleError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
