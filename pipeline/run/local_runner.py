"""Runs the next_category pipeline with TFX's LocalDagRunner, one component at a time in process."""

import sys

from next_category.pipeline.run import run_and_report


def _dag_runner():
  # Imported once the console has redirected the process's output: TFX logs at import.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  return tfx.orchestration.LocalDagRunner()


def main(argv=None) -> int:
  return run_and_report.run(_dag_runner, argv, __doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
