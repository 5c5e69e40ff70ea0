"""Tests of the training/serving skew report on small logged-request files."""

import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import statistics_pb2

from next_category.dataset import clickstream
from next_category.pipeline.reports import skew_report
from tests.testing import bad_examples


def _requests(count, seed, drift=None):
  """Logged serving requests: examples without the label."""
  examples = list(clickstream.generate_examples(count, seed=seed, drift=drift))
  for example in examples:
    del example.features.feature["label"]
  return examples


def _training_statistics(tmp_path):
  path = bad_examples.write(
    str(tmp_path / "train.tfrecord"), clickstream.generate_examples(2000, seed=31)
  )
  stats_path = str(tmp_path / "train_stats.pbtxt")
  tfdv.write_stats_text(tfdv.generate_statistics_from_tfrecord(path), stats_path)
  return stats_path


def _run(tmp_path, serving_data, stats_path):
  return skew_report.main(
    [
      f"--serving_data={serving_data}",
      f"--training_statistics={stats_path}",
      f"--report_dir={tmp_path}/reports",
    ]
  )


def test_requests_like_training_pass_and_skewed_anomalous_ones_fail(tmp_path, capsys):
  stats_path = _training_statistics(tmp_path)
  os.makedirs(tmp_path / "ok")
  # Logs may mix GZIP and plain files; compression follows the extension.
  bad_examples.write(str(tmp_path / "ok" / "a.tfrecord.gz"), _requests(300, 32), "GZIP")
  bad_examples.write(str(tmp_path / "ok" / "b.tfrecord"), _requests(300, 33))
  assert _run(tmp_path, f"{tmp_path}/ok/*", stats_path) == 0
  out = capsys.readouterr().out
  assert "Serving requests:    " in out and "(600 requests)" in out
  assert "Serving anomalies: 0" in out
  assert os.path.isfile(tmp_path / "reports" / "skew_anomalies.html")

  # All new users, and one request from an unknown segment.
  skewed = _requests(300, 34, clickstream.Drift(segment_mix=1.0))
  skewed.append(bad_examples.example(user_segment=(b"vip",), label=None))
  bad_examples.write(str(tmp_path / "skewed.tfrecord"), skewed)
  assert _run(tmp_path, f"{tmp_path}/skewed.tfrecord", stats_path) == 1
  captured = capsys.readouterr()
  assert "user_segment   L_INFTY" in captured.out and "OVER" in captured.out
  err = captured.err.splitlines()
  assert err[-3] == "ERROR: 1 skewed feature(s), 1 serving anomalies:"
  assert err[-2].startswith(
    "  [skew] user_segment: COMPARATOR_L_INFTY_HIGH: High Linfty distance between training "
    "and serving"
  )
  assert err[-1].startswith(
    "  [serving] user_segment: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected string values"
  )


def test_missing_or_unreadable_inputs_are_clear_errors(tmp_path, capsys):
  requests = bad_examples.write(str(tmp_path / "r.tfrecord"), _requests(5, 1))
  assert _run(tmp_path, requests, f"{tmp_path}/stats.pb") == 2
  assert f"Training statistics file {tmp_path}/stats.pb does not exist" in capsys.readouterr().err
  code = skew_report.main([f"--serving_data={requests}", f"--output_root={tmp_path}/no_run"])
  assert code == 2
  assert "no_run/metadata.sqlite does not exist: run the pipeline first" in capsys.readouterr().err
  stats_path = str(tmp_path / "stats.pbtxt")
  tfdv.write_stats_text(statistics_pb2.DatasetFeatureStatisticsList(), stats_path)
  assert _run(tmp_path, f"{tmp_path}/none/*", stats_path) == 2
  assert f"No serving log file matches {tmp_path}/none/*" in capsys.readouterr().err
  with open(requests, "r+b") as f:
    f.truncate(os.path.getsize(requests) - 3)
  assert _run(tmp_path, requests, stats_path) == 2
  assert f"ERROR: {requests} is truncated" in capsys.readouterr().err
