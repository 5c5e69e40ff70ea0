"""Runs the next_category pipeline with TFX's BeamDagRunner (the default for `make run`).

Components' own Beam pipelines use the DirectRunner in process (the default
dataset is small); pass Beam flags (e.g. --runner=FlinkRunner ...) to run them
elsewhere.
"""

import sys

from next_category.pipeline.run import run_and_report


def _dag_runner():
  # Imported once the console has redirected the process's output: TFX logs at import.
  from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner  # pylint: disable=g-import-not-at-top

  return BeamDagRunner()


def main(argv=None) -> int:
  return run_and_report.run(_dag_runner, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
