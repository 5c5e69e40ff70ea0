"""Runs the next_category pipeline with TFX's BeamDagRunner (the default for `make run`).

Components' own Beam pipelines use the DirectRunner in multi-processing mode;
pass Beam flags (e.g. --runner=FlinkRunner ...) to run them elsewhere.
"""

import sys

from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from pipeline import run_and_report


def main(argv=None) -> int:
  return run_and_report.run(BeamDagRunner(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
  sys.exit(main())
