"""Runs the next_category pipeline with TFX's LocalDagRunner, one component at a time in process."""

import sys

from tfx import v1 as tfx

from pipeline import run_and_report


def main(argv=None) -> int:
  return run_and_report.run(tfx.orchestration.LocalDagRunner(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
