"""End to end: anomalous and drifted data stop the real pipeline before training.

One run of the Beam runner over two tiny spans: span 2 drifted from span 1 and
holding two bad examples in a plain file beside the GZIP shards. Checks the exit
status, the last lines, ML Metadata (no Trainer execution), the reports, and the
skew report reading the run's training statistics from ML Metadata.
"""

import os
import re
import subprocess
import sys

import pytest

from next_category.dataset import clickstream
from next_category.pipeline import configs
from tests.pipeline import pipelines
from tests.testing import bad_examples

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("gate_e2e")
  data_root, output_root = str(root / "data"), str(root / "out")
  clickstream.write_span(data_root, span=1, num_examples=800, seed=11, num_shards=2)
  clickstream.write_span(
    data_root,
    span=2,
    num_examples=800,
    seed=12,
    num_shards=2,
    drift=clickstream.Drift(segment_mix=0.8, category_mix=0.8),
  )
  bad_examples.write(
    os.path.join(data_root, "span-2", "late-arrivals.tfrecord"),
    [bad_examples.example(user_segment=(b"vip",)), bad_examples.example(label=(12,))] * 3,
  )
  result = pipelines.run_beam_runner(
    data_root,
    output_root,
    "--train_steps=20",
    "--eval_steps=2",
    "--accuracy_threshold=0.05",
    "--tolerate_anomalies=label:INT_TYPE_BIG_INT",
  )
  return root, output_root, result


def test_anomalies_and_drift_stop_the_run_with_every_anomaly_listed(gated_run):
  _, output_root, result = gated_run
  assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-5000:]
  lines = result.stderr.strip().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("ERROR: pipeline"))
  assert lines[start].startswith(
    "ERROR: pipeline next_category failed in AnomalyGate: DataAnomaliesError: "
  )
  assert "stop the run before training (" in lines[start]
  assert (
    "more tolerated); fix the data, or accept known kinds with --tolerate_anomalies"
    in (lines[start])
  )
  # The anomalies, then the run's log file.
  listed = lines[start + 1 : -1]
  assert lines[-1].startswith(f"Log: {output_root}/logs/")
  assert all(line.startswith("  [") for line in listed), listed
  kinds = {re.match(r"  \[(\w+)\] (\w+): (\w+):", line).groups() for line in listed}
  assert ("drift", "user_segment", "COMPARATOR_L_INFTY_HIGH") in kinds
  assert ("drift", "label", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH") in kinds
  segment = {
    split for split, feature, kind in kinds if kind == "ENUM_TYPE_UNEXPECTED_STRING_VALUES"
  }
  assert segment and segment <= {"train", "eval"}
  # Tolerated, so not listed as stopping the run.
  assert not any("INT_TYPE_BIG_INT" in line for line in listed)
  drift_line = next(line for line in listed if "[drift] user_segment" in line)
  assert "is above the threshold 0.1 (span 2 against span 1)" in drift_line


def test_nothing_is_trained_or_pushed(gated_run):
  _, output_root, result = gated_run
  summary = pipelines.summary(output_root)
  states = {c.node_id: c.state for c in summary.components}
  assert states["AnomalyGate"] == "FAILED"
  assert not {"Trainer", "Evaluator", "Pusher"} & set(states), states
  assert not os.path.exists(os.path.join(output_root, "serving"))
  assert "Pushed: nothing" in result.stdout


def test_reports_are_written_and_linked(gated_run):
  _, output_root, result = gated_run
  reports = re.findall(r"^  (/\S+\.html)$", result.stdout, re.MULTILINE)
  assert sorted(os.path.basename(p) for p in reports) == [
    "anomalies.html",
    "drift.html",
    "statistics.html",
  ]
  assert all(p.startswith(os.path.join(output_root, "reports")) for p in reports)
  with open(next(p for p in reports if p.endswith("anomalies.html"))) as f:
    page = f.read()
  assert "COMPARATOR_L_INFTY_HIGH" in page and "Tolerated anomalies (" in page


def test_skew_report_reads_the_runs_training_statistics(gated_run):
  root, output_root, _ = gated_run
  # Requests from the undrifted population against training data of span 2,
  # where most users are new: user_segment is skewed.
  requests = list(clickstream.generate_examples(300, seed=13))
  for example in requests:
    del example.features.feature["label"]
  logs = bad_examples.write(str(root / "requests.tfrecord.gz"), requests, "GZIP")
  result = subprocess.run(
    [sys.executable, "-m", "next_category.pipeline.reports.skew_report", f"--serving_data={logs}"]
    + [f"--output_root={output_root}"],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=configs.PROJECT_ROOT,
  )
  assert result.returncode == 1, result.stdout + result.stderr[-3000:]
  assert "/StatisticsGen/statistics/" in result.stdout
  assert "  [skew] user_segment: COMPARATOR_L_INFTY_HIGH" in result.stderr
