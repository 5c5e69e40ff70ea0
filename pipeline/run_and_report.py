"""Runs a pipeline with a given orchestrator and reports the result.

Shared by the runner modules so that every runner ends the same way: a summary
read from ML Metadata, and on failure a non-zero exit whose last line names the
component that failed.
"""

import os
import sys

import tensorflow as tf
from tfx import v1 as tfx

from components.anomaly_gate import anomalies
from pipeline import caching
from pipeline import configs
from pipeline import run_summary
from pipeline import runner_flags


def run(dag_runner, argv=None, description: str = "") -> int:
  """Parses flags, runs the pipeline with `dag_runner`, prints a summary.

  Returns:
    The process exit code: 0 on success, 1 if a component failed, 2 for bad
    flags or paths.
  """
  args, beam_pipeline_args = runner_flags.parse_args(argv, description)
  try:
    pipeline = runner_flags.build_pipeline(args, beam_pipeline_args)
  except (FileNotFoundError, ValueError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  paths = runner_flags.RunPaths(args.output_root)
  connection_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    paths.metadata_path
  )
  error = None
  try:
    caching.run(dag_runner, pipeline)
  except Exception as e:  # pylint: disable=broad-except
    # Any component error ends the run; report it rather than a traceback
    # buried under Beam's logging.
    error = e
  try:
    summary = run_summary.summarize(connection_config, configs.PIPELINE_NAME)
  except ValueError:
    summary = None
  if summary is not None:
    if not summary.reports:
      # AnomalyGate writes its reports before it fails the run, when ML
      # Metadata records no output of it.
      summary.reports = sorted(
        tf.io.gfile.glob(os.path.join(os.path.abspath(paths.reports_dir), summary.run_id, "*.html"))
      )
    print("\n" + run_summary.format_summary(summary))
  if error is not None:
    failed = [
      c.node_id
      for c in (summary.components if summary else [])
      if c.state not in ("COMPLETE", "CACHED")
    ]
    where = f" in {', '.join(failed)}" if failed else ""
    message = str(error).strip().splitlines()
    # AnomalyGate's error lists every anomaly, one per line: end with all of them.
    gate_lines = anomalies.error_lines(str(error))
    if gate_lines:
      message = gate_lines[:1]
    print(
      f"\nERROR: pipeline {configs.PIPELINE_NAME} failed{where}: "
      f"{type(error).__name__}: {message[-1] if message else ''}",
      file=sys.stderr,
    )
    for line in gate_lines[1:]:
      print(line, file=sys.stderr)
    return 1
  return 0
