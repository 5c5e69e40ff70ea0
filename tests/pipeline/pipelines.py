"""Pipelines for tests: one built with placeholder paths, real runs of the Beam runner, and
the flags a Makefile target passes."""

import dataclasses
import os
import shlex
import subprocess
import sys

from tfx import v1 as tfx

from next_category.pipeline import configs
from next_category.pipeline import pipeline as pipeline_lib
from next_category.pipeline import settings
from next_category.pipeline.reports import run_summary

_GROUPS = {
  "paths": settings.Paths,
  "serving": settings.ServingSettings,
  "data": settings.DataSettings,
  "training": settings.TrainingSettings,
  "gates": settings.GateSettings,
}


def create_test_pipeline(**overrides):
  """`create_pipeline` with small placeholder settings.

  `overrides` replace any of them by name: a field of a settings group
  (`train_steps`, `serving_model_dir`, ...) or a `create_pipeline` argument.
  """
  values = {
    "paths": dict(pipeline_root="/tmp/p", data_root="/tmp/d"),
    "serving": dict(serving_model_dir="/tmp/s"),
    "data": {},
    "training": dict(train_steps=10, eval_steps=2),
    "gates": dict(accuracy_threshold=0.5),
  }
  arguments = dict(pipeline_name="p")
  for name, value in overrides.items():
    group = next(
      (g for g, cls in _GROUPS.items() if name in {f.name for f in dataclasses.fields(cls)}), None
    )
    if group:
      values[group][name] = value
    else:
      arguments[name] = value
  return pipeline_lib.create_pipeline(
    **{group: cls(**values[group]) for group, cls in _GROUPS.items()}, **arguments
  )


def run_beam_runner(data_root: str, output_root: str, *flags: str) -> subprocess.CompletedProcess:
  """Runs the Beam runner (`python -m ...pipeline.run.beam_runner`), `tiny` preset, in-memory Beam.

  `flags` add to or override (argparse keeps the last) the settings.
  """
  command = [
    sys.executable,
    "-m",
    "next_category.pipeline.run.beam_runner",
    f"--data_root={data_root}",
    f"--output_root={output_root}",
    "--preset=tiny",
    "--direct_running_mode=in_memory",
    *flags,
  ]
  return subprocess.run(
    command, capture_output=True, text=True, timeout=900, cwd=configs.PROJECT_ROOT
  )


def summary(output_root: str) -> run_summary.RunSummary:
  """The latest run's summary, read from the ML Metadata under `output_root`."""
  connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    os.path.join(output_root, "metadata.sqlite")
  )
  return run_summary.summarize(connection, configs.PIPELINE_NAME)


def make_target_flags(target: str, module: str, *variables: str):
  """The arguments after `python -m MODULE` in what `make TARGET VARIABLES...` runs (`make -n`)."""
  result = subprocess.run(
    ["make", "-n", "--no-print-directory", target, *variables],
    cwd=configs.PROJECT_ROOT,
    capture_output=True,
    text=True,
    check=True,
  )
  (command,) = [
    line for line in result.stdout.replace("\\\n", " ").splitlines() if f"-m {module} " in line
  ]
  words = shlex.split(command)
  return words[words.index(module) + 1 :]
