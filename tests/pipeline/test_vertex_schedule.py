"""Tests of pipeline/kubeflow/vertex_schedule.py against a Vertex AI ScheduleService on loopback.

The client is the real google-cloud-aiplatform over REST; the service is
`tests.pipeline.fake_vertex` (what it does not prove is in its docstring and
docs/kubeflow.md). The package scheduled is the reviewed golden file, which
`test_kubeflow.test_package_matches_golden_file` checks `make kubeflow` writes.
"""

import json
import os
import shutil

import pytest

from next_category.pipeline.kubeflow import kubeflow_runner
from next_category.pipeline.kubeflow import package as kubeflow_package
from next_category.pipeline.kubeflow import vertex_schedule
from tests.pipeline import fake_vertex
from tests.pipeline import pipelines

_GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "testdata", "kubeflow_pipeline.golden.json")
_PROJECT = "my-project"
_REGION = "us-central1"
_PARENT = f"projects/{_PROJECT}/locations/{_REGION}"


@pytest.fixture
def output_root(tmp_path):
  path = kubeflow_package.package_path(str(tmp_path))
  os.makedirs(os.path.dirname(path))
  shutil.copy(_GOLDEN_PATH, path)
  return str(tmp_path)


@pytest.fixture
def fake():
  with fake_vertex.FakeVertex(page_size=2) as server:
    yield server


def _flags(fake):
  return [f"--project={_PROJECT}", f"--region={_REGION}", f"--api_endpoint={fake.url}"]


def _golden():
  with open(_GOLDEN_PATH) as f:
    return json.load(f)


def test_create_schedules_the_compiled_pipeline_job_one_run_at_a_time(output_root, fake, capsys):
  code = vertex_schedule.main(
    [
      "create",
      *_flags(fake),
      "--cron=0 3 * * *",
      f"--output_root={output_root}",
      "--train_steps=77",
      "--service_account=runs@my-project.iam.gserviceaccount.com",
    ]
  )
  assert code == 0, capsys.readouterr().err
  (request,) = fake.requests
  assert (request["method"], request["path"]) == ("POST", f"/v1/{_PARENT}/schedules")
  body = request["body"]
  assert body["displayName"] == "next-category-0-3"
  assert body["cron"] == "0 3 * * *"
  assert body["maxConcurrentRunCount"] == "1"
  assert not body.get("allowQueueing")
  job_request = body["createPipelineJobRequest"]
  assert job_request["parent"] == _PARENT
  job = job_request["pipelineJob"]
  golden = _golden()
  # The compiled spec as it is, its per-step cachingOptions included, and its
  # numbers numbers (aiplatform reading pipeline.json itself sends 1e-05 as "1e-05").
  assert job["pipelineSpec"] == golden["pipelineSpec"]
  infra_validator = job["pipelineSpec"]["root"]["dag"]["tasks"]["InfraValidator"]
  assert infra_validator["inputs"]["parameters"]["max_abs_difference"] == {
    "runtimeValue": {"constant": 1e-05}
  }
  tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
  assert tasks["ServingBaseline"]["cachingOptions"] == {"enableCache": False}
  assert job["runtimeConfig"]["gcsOutputDirectory"] == golden["runtimeConfig"]["gcsOutputDirectory"]
  assert job["runtimeConfig"]["parameterValues"] == {
    kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(77)
  }
  assert job["serviceAccount"] == "runs@my-project.iam.gserviceaccount.com"
  (name,) = fake.schedules
  assert f"Created schedule {name} ('next-category-0-3'" in capsys.readouterr().out


def test_list_pause_resume_delete(output_root, fake, capsys):
  for cron in ("0 3 * * *", "TZ=Europe/Berlin 30 4 * * 1-5", "*/15 * * * *"):
    code = vertex_schedule.main(
      ["create", *_flags(fake), f"--cron={cron}", f"--output_root={output_root}"]
    )
    assert code == 0
  first, second, third = (name.rsplit("/", 1)[1] for name in fake.schedules)
  capsys.readouterr()
  assert vertex_schedule.main(["pause", *_flags(fake), first]) == 0
  assert f"Paused schedule {first}." in capsys.readouterr().out
  # Three schedules over two pages (the fake's page size is 2).
  assert vertex_schedule.main(["list", *_flags(fake)]) == 0
  assert capsys.readouterr().out.splitlines()[-3:] == [
    f"{first}\tnext-category-0-3\tPAUSED\t0 3 * * *",
    f"{second}\tnext-category-tz-europe-berlin-30-4-1-5\tACTIVE\tTZ=Europe/Berlin 30 4 * * 1-5",
    f"{third}\tnext-category-15\tACTIVE\t*/15 * * * *",
  ]
  lists = [
    r for r in fake.requests if r["path"] == f"/v1/{_PARENT}/schedules" and r["method"] == "GET"
  ]
  assert [r["query"].get("pageToken") for r in lists] == [None, ["2"]]
  # Pausing a paused schedule is refused by the service.
  assert vertex_schedule.main(["pause", *_flags(fake), first]) == 1
  assert "refused to pause the schedule: HTTP 400" in capsys.readouterr().err
  assert vertex_schedule.main(["resume", *_flags(fake), first]) == 0
  (resume,) = [r for r in fake.requests if r["path"].endswith(":resume")]
  assert resume["path"] == f"/v1/{_PARENT}/schedules/{first}:resume"
  assert not resume["body"].get("catchUp")
  assert fake.schedules[f"{_PARENT}/schedules/{first}"]["state"] == "ACTIVE"
  assert vertex_schedule.main(["delete", *_flags(fake), f"{_PARENT}/schedules/{first}"]) == 0
  assert f"{_PARENT}/schedules/{first}" not in fake.schedules
  capsys.readouterr()
  assert vertex_schedule.main(["delete", *_flags(fake), first]) == 1
  assert "refused to find the schedule: HTTP 404" in capsys.readouterr().err


@pytest.mark.parametrize(
  "cron, expected",
  [
    ("0 3 * * *", "0 3 * * *"),
    ("  0  3 * *   MON-FRI ", "0 3 * * MON-FRI"),
    ("TZ=America/New_York 0 3 * * *", "TZ=America/New_York 0 3 * * *"),
    ("CRON_TZ=Asia/Tokyo */5 * * * *", "CRON_TZ=Asia/Tokyo */5 * * * *"),
  ],
)
def test_vertex_cron_takes_five_fields_and_a_time_zone(cron, expected):
  assert vertex_schedule.vertex_cron(cron) == expected


@pytest.mark.parametrize(
  "cron, message",
  [
    ("0 0 3 * * *", "has 6 fields; give 5 (minute hour day-of-month month day-of-week)"),
    ("@daily", "has 1 fields; give 5"),
    ("0 24 * * *", "is malformed: '24' is not a hour (0-23)."),
    ("TZ=Mars/Olympus 0 3 * * *", "names the time zone 'Mars/Olympus', which is not in the IANA"),
    ("TZ=UTC", "has a time zone but no fields after it"),
  ],
)
def test_vertex_cron_refuses_a_malformed_schedule(cron, message):
  with pytest.raises(ValueError) as error:
    vertex_schedule.vertex_cron(cron)
  assert message in str(error.value)


_CRON = "--cron=0 3 * * *"
_LOCATION = [f"--project={_PROJECT}", f"--region={_REGION}"]


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--cron=0 3 * *", *_LOCATION], "The cron schedule '0 3 * *' has 4 fields"),
    ([_CRON, "--region=us-central1"], "The Google Cloud project is required: --project=PROJECT_ID"),
    (
      [_CRON, "--project=My_Project", "--region=us-central1"],
      "'My_Project' is not a Google Cloud project id",
    ),
    ([_CRON, "--project=my-project"], "The Vertex AI region is required: --region=REGION"),
    (
      [_CRON, "--project=my-project", "--region=mars-north1"],
      "Vertex AI has no region 'mars-north1'",
    ),
    (
      [_CRON, *_LOCATION, "--output_root=/nonexistent/out"],
      "/nonexistent/out/kubeflow/pipeline.json",
    ),
  ],
)
def test_bad_arguments_are_refused_before_any_call(
  output_root, fake, capsys, monkeypatch, flags, message
):
  monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
  monkeypatch.delenv("GOOGLE_CLOUD_REGION", raising=False)
  code = vertex_schedule.main(
    ["create", f"--api_endpoint={fake.url}", f"--output_root={output_root}", *flags]
  )
  assert code == 2
  assert message in capsys.readouterr().err
  assert fake.requests == []


def test_a_package_compiled_without_a_bucket_is_refused(output_root, fake, capsys):
  path = kubeflow_package.package_path(output_root)
  job = _golden()
  job["runtimeConfig"]["gcsOutputDirectory"] = (
    f"{kubeflow_runner.PLACEHOLDER_STORAGE_ROOT}/pipeline"
  )
  with open(path, "w") as f:
    json.dump(job, f)
  code = vertex_schedule.main(
    ["create", *_flags(fake), "--cron=0 3 * * *", f"--output_root={output_root}"]
  )
  assert code == 2
  assert "compiled with the placeholder storage root" in capsys.readouterr().err
  assert fake.requests == []


def test_an_unreachable_endpoint_is_named(output_root, capsys):
  with fake_vertex.FakeVertex() as server:
    url = server.url
  code = vertex_schedule.main(
    [
      "create",
      f"--project={_PROJECT}",
      f"--region={_REGION}",
      f"--api_endpoint={url}",
      "--cron=0 3 * * *",
      f"--output_root={output_root}",
    ]
  )
  assert code == 1
  assert f"Cannot reach Vertex AI at {url}" in capsys.readouterr().err


def test_make_vertex_schedule_passes_its_variables(output_root, fake, capsys):
  flags = pipelines.make_target_flags(
    "vertex-schedule",
    "next_category.pipeline.kubeflow.vertex_schedule",
    "CRON=0 3 * * *",
    f"OUTPUT_ROOT={output_root}",
    f"VERTEX_PROJECT={_PROJECT}",
    f"VERTEX_REGION={_REGION}",
    f"VERTEX_API_ENDPOINT={fake.url}",
    "SCHEDULE_NAME=nightly",
    "TRAIN_STEPS=9",
  )
  assert vertex_schedule.main(flags) == 0, capsys.readouterr().err
  (schedule,) = fake.schedules.values()
  assert (schedule["displayName"], schedule["cron"]) == ("nightly", "0 3 * * *")
  parameters = schedule["createPipelineJobRequest"]["pipelineJob"]["runtimeConfig"]
  assert parameters["parameterValues"] == {
    kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(9)
  }


def test_help_names_the_commands(capsys):
  with pytest.raises(SystemExit) as exit_info:
    vertex_schedule.main(["--help"])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  assert all(command in out for command in ("create", "list", "pause", "resume", "delete"))
