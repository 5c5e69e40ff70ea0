"""The run's console: component lines, Trainer progress, and the log file that takes the rest."""

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from next_category.components.trainer import progress
from next_category.pipeline import configs
from next_category.pipeline.run import console as console_lib

_TIME = r"\d\d:\d\d:\d\d"


def test_progress_is_described_in_one_short_line():
  report = {
    "phase": "train",
    "step": 120,
    "total": 400,
    "loss": 1.73456,
    "examples_per_second": 2910.4,
    "seconds_left": 96.4,
  }
  assert progress.describe(report) == (
    "step 120/400 ( 30%)  loss 1.7346  2,910 examples/s  1:36 left"
  )
  assert progress.describe(dict(report, epoch=1.25)) == (
    "step 120/400 ( 30%)  epoch 1.25  loss 1.7346  2,910 examples/s  1:36 left"
  )
  assert progress.describe({"phase": "validate"}) == "validating on the eval split"
  assert progress.describe({"phase": "export"}) == "exporting the SavedModel"


def test_plain_output_has_one_line_per_event_and_no_control_characters():
  out, err = io.StringIO(), io.StringIO()
  console = console_lib.Console(out, err, interactive=False)
  console.component_started("ImportExampleGen")
  console.component_ended("ImportExampleGen", "COMPLETE")
  console.component_started("Trainer")
  for step in (10, 100, 150, 200, 300, 400):
    console.trainer_progress(
      {"phase": "train", "step": step, "total": 400, "loss": 2.0, "examples_per_second": 0}
    )
  console.trainer_progress({"phase": "validate"})
  console.trainer_progress({"phase": "validate"})
  console.component_ended("Trainer", "FAILED", "RuntimeError: worker 1 failed")
  console.line("ERROR: bad", error=True)
  lines = out.getvalue().splitlines()
  assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", out.getvalue())
  assert re.fullmatch(rf"{_TIME}  ImportExampleGen\s+started", lines[0])
  assert re.fullmatch(rf"{_TIME}  ImportExampleGen\s+COMPLETE\s+\d+\.\d s", lines[1])
  assert re.fullmatch(rf"{_TIME}  Trainer\s+started", lines[2])
  # A line at each quarter of the steps and one per phase, not one per report.
  assert [line.split("Trainer: ")[1][:13] for line in lines[3:7]] == [
    "step 100/400 ",
    "step 200/400 ",
    "step 300/400 ",
    "validating on",
  ]
  assert re.fullmatch(
    rf"{_TIME}  Trainer\s+FAILED\s+\d+\.\d s  RuntimeError: worker 1 failed", lines[7]
  )
  assert len(lines) == 8
  assert err.getvalue() == "ERROR: bad\n"


def test_a_terminal_gets_the_status_line_rewritten_in_place():
  out = io.StringIO()
  console = console_lib.Console(out, io.StringIO(), interactive=True)
  console.component_started("Trainer")
  console.trainer_progress(
    {"phase": "train", "step": 5, "total": 10, "loss": 2.5, "examples_per_second": 100.0}
  )
  console.component_ended("Trainer", "COMPLETE")
  text = out.getvalue()
  assert "\r\x1b[K  Trainer running (0 s)" in text
  assert "\r\x1b[K  Trainer: step 5/10 ( 50%)  loss 2.5000  100 examples/s" in text
  # The permanent line is printed on a cleared line and the status is not redrawn.
  assert re.search(rf"\r\x1b\[K{_TIME}  Trainer\s+COMPLETE\s+\d+\.\d s\n$", text)


_SCRIPT = textwrap.dedent(
  """
  import os, subprocess, sys
  from next_category.pipeline.run import console
  with console.open_run(sys.argv[1], verbose=sys.argv[2] == "1") as run:
    print("python print")
    sys.stderr.write("python stderr\\n")
    sys.stderr.flush()
    os.write(2, b"C-level write to fd 2\\n")
    subprocess.run(["sh", "-c", "echo child process; echo child stderr >&2"], check=True)
    run.console.line("shown on the console")
    with open(os.environ[sys.argv[3]], "a") as f:
      f.write('{"phase": "export"}\\n')
    import time; time.sleep(0.6)
    print("LOG=" + str(run.log_path), file=run.console.stream)
  """
)


@pytest.mark.parametrize("verbose", [False, True])
def test_everything_but_the_console_goes_to_the_log_at_fd_level(tmp_path, verbose):
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      _SCRIPT,
      str(tmp_path / "out"),
      "1" if verbose else "0",
      progress.ENV_VAR,
    ],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=configs.PROJECT_ROOT,
    env=dict(os.environ, PYTHONPATH=configs.PROJECT_ROOT),
    check=True,
  )
  noise = [
    "python print",
    "python stderr",
    "C-level write to fd 2",
    "child process",
    "child stderr",
  ]
  if verbose:
    for line in noise:
      assert line in result.stdout + result.stderr
    assert "LOG=None" in result.stdout
    return
  assert result.stdout.splitlines()[0] == "shown on the console"
  # The Trainer's report, read from the file named in the environment (no terminal: a plain line).
  assert result.stdout.splitlines()[1] == "  Trainer: exporting the SavedModel"
  log_path = result.stdout.splitlines()[-1][len("LOG=") :]
  assert os.path.dirname(log_path) == str(tmp_path / "out" / "logs")
  assert result.stderr == ""
  log = open(log_path).read()
  for line in noise:
    assert line in log
    assert line not in result.stdout
  # The progress channel is removed at the end.
  assert os.listdir(tmp_path / "out" / "logs") == [os.path.basename(log_path)]


def test_a_run_that_never_started_leaves_no_log_behind(tmp_path, capsys):
  from next_category.pipeline.run import beam_runner  # pylint: disable=g-import-not-at-top

  code = beam_runner.main([f"--data_root={tmp_path}/none", f"--output_root={tmp_path}/out"])
  assert code == 2
  assert "does not exist; run `make data`" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")


def test_progress_callback_reports_steps_then_validation_then_export(tmp_path, monkeypatch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from next_category.components.trainer import budget  # pylint: disable=g-import-not-at-top
  from next_category.components.trainer import progress_callback  # pylint: disable=g-import-not-at-top

  path = tmp_path / "progress.jsonl"
  monkeypatch.setenv(progress.ENV_VAR, str(path))
  plan = budget.plan(num_train_examples=12, batch_size=4, train_steps=6)
  assert (plan.total_steps, plan.steps_per_epoch) == (6, 3)
  assert progress_callback.callbacks(plan, 4, chief=False) == []
  [callback] = progress_callback.callbacks(plan, 4)
  callback.interval_seconds = 0.0
  model = tf.keras.Sequential([tf.keras.layers.Dense(2, activation="softmax")])
  model.compile(loss="sparse_categorical_crossentropy")
  x, y = np.zeros((24, 3), np.float32), np.zeros((24,), np.int64)
  model.fit(
    x,
    y,
    batch_size=4,
    epochs=1,
    steps_per_epoch=6,
    validation_data=(x, y),
    verbose=0,
    callbacks=[callback],
  )
  reports = [json.loads(line) for line in path.read_text().splitlines()]
  assert [r["phase"] for r in reports] == ["train"] * 6 + ["validate", "validated", "export"]
  assert [r["step"] for r in reports[:6]] == [1, 2, 3, 4, 5, 6]
  assert [r["epoch"] for r in reports[:6]] == [1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3, 2.0]
  assert reports[7]["step"] == 6 and reports[7]["val_loss"] > 0
  assert progress.describe(reports[7]) == f"step 6: eval loss {reports[7]['val_loss']:.4f}"
  assert all(r["total"] == 6 for r in reports[:6])
  assert reports[5]["seconds_left"] == 0
  assert reports[0]["examples_per_second"] == 0  # no rate from the first step alone
