"""Runs a pipeline with a given orchestrator and reports the result.

Shared by the runner modules so that every runner ends the same way: a line per
component as it starts and ends, the Trainer's progress and the data gate's
verdict while it runs (`next_category.pipeline.run.console`), then a summary read from ML
Metadata and the run report; on failure a non-zero exit whose last lines name
the component that failed, the error and the log file.

TensorFlow, TFX and Beam are imported only once the console has sent the
process's output to the run's log: they log at import.
"""

import os
import sys
from typing import Callable
from typing import Union

from next_category.pipeline import configs
from next_category.pipeline.run import console as console_lib
from next_category.pipeline.run import runner_flags


def run(dag_runner: Union[object, Callable[[], object]], argv=None, description: str = "") -> int:
  """Parses flags, runs the pipeline with `dag_runner`, prints a summary.

  Args:
    dag_runner: the orchestrator (with a `run(pipeline)` method), or a function
      that makes it; a function lets the runner module import TFX after the
      console is set up.
    argv: command-line flags (default: sys.argv[1:]).
    description: the runner's one-line description for --help.

  Returns:
    The process exit code: 0 on success, 1 if a component failed, 2 for bad
    flags or paths.
  """
  argv = sys.argv[1:] if argv is None else list(argv)
  # The flags, parsed once; argparse prints --help or a bad flag's error and exits.
  args = runner_flags.parse_args(argv, description)
  with console_lib.open_run(args.output_root, verbose=args.verbose) as run_console:
    try:
      return _run(dag_runner, args, run_console)
    except KeyboardInterrupt:
      run_console.console.line("Interrupted.", error=True)
      _print_log_path(run_console)
      return 130


def _print_log_path(run_console: console_lib.Run, error: bool = False) -> None:
  if run_console.log_path:
    run_console.console.line(f"Log: {run_console.log_path}", error=error)


def _run(dag_runner, args, run_console: console_lib.Run) -> int:
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.components.anomaly_gate import anomalies
  from next_category.pipeline import caching
  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  console = run_console.console
  try:
    pipeline = runner_flags.build_pipeline(args)
  except (FileNotFoundError, ValueError) as e:
    console.line(f"ERROR: {e}", error=True)
    run_console.discard()
    return 2
  if not hasattr(dag_runner, "run"):
    dag_runner = dag_runner()
  paths = runner_flags.RunPaths(os.path.abspath(args.output_root))
  connection_config = tfx.orchestration.metadata.sqlite_metadata_connection_config(
    paths.metadata_path
  )
  runner_name = type(dag_runner).__name__
  console.line(
    f"Pipeline {configs.PIPELINE_NAME} ({runner_name}), outputs under {paths.output_root}"
    + (f"; full log: {run_console.log_path}" if run_console.log_path else "")
  )
  follower = run_summary.ComponentStates(connection_config, configs.PIPELINE_NAME)
  error = None
  try:
    with console_lib.following_components(console, follower.describe_end):
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
    run_console.rename_log(summary.run_id)
    summary.log_path = run_console.log_path
    if not summary.reports:
      # AnomalyGate writes its reports before it fails the run, when ML
      # Metadata records no output of it.
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      summary.reports = sorted(
        tf.io.gfile.glob(os.path.join(paths.reports_dir, summary.run_id, "*.html"))
      )
    summary.run_report = _write_run_report(summary, paths, console)
    console.line("\n" + run_summary.format_summary(summary))
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
    console.line(
      f"\nERROR: pipeline {configs.PIPELINE_NAME} failed{where}: "
      f"{type(error).__name__}: {message[-1] if message else ''}",
      error=True,
    )
    for line in gate_lines[1:]:
      console.line(line, error=True)
    _print_log_path(run_console, error=True)
    return 1
  return 0


def _write_run_report(summary, paths, console) -> str:
  """Writes the run's HTML report; a failure to draw it never fails the run."""
  try:
    from next_category.pipeline.reports import html_report as run_report  # pylint: disable=g-import-not-at-top

    return run_report.write_for_summary(summary, paths)
  except Exception as e:  # pylint: disable=broad-except
    console.line(f"The run report could not be written: {type(e).__name__}: {e}", error=True)
    import traceback  # pylint: disable=g-import-not-at-top

    traceback.print_exc()  # into the log
    return ""
