"""How the Trainer reports its progress to whoever started the pipeline.

The pipeline's console names a file in the environment variable `ENV_VAR`; the
Trainer (in process, or in a worker subprocess, which inherits the
environment) appends one JSON line per report, and the console reads the file
as it grows. A file works across processes and needs no open descriptor to be
passed on. No TensorFlow here: the console imports this before TensorFlow.
"""

import json
import os
from typing import Any
from typing import Dict
from typing import Optional

ENV_VAR = "NEXT_CATEGORY_TRAINER_PROGRESS"

# Phases a report can be in.
TRAIN = "train"
VALIDATE = "validate"
VALIDATED = "validated"
EXPORT = "export"


def report_path() -> Optional[str]:
  """The file to report to, or None when nobody listens."""
  return os.environ.get(ENV_VAR) or None


def write(path: str, report: Dict[str, Any]) -> None:
  """Appends one report as a single line (one write call, so lines never interleave)."""
  with open(path, "a") as f:
    f.write(json.dumps(report) + "\n")


def _clock(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  return f"{seconds // 60}:{seconds % 60:02d}"


def describe(report: Dict[str, Any]) -> str:
  """One report as a short line: step / total, loss, examples/s, time left."""
  phase = report.get("phase")
  if phase == VALIDATE:
    return "validating on the eval split"
  if phase == EXPORT:
    return "exporting the SavedModel"
  if phase == VALIDATED:
    return f"step {report['step']}: eval loss {report['val_loss']:.4f}"
  step, total = report["step"], report["total"]
  text = f"step {step}/{total} ({100 * step / max(total, 1):3.0f}%)"
  if report.get("epoch") is not None:
    text += f"  epoch {report['epoch']:.2f}"
  text += f"  loss {report['loss']:.4f}"
  if report.get("examples_per_second"):
    text += f"  {report['examples_per_second']:,.0f} examples/s"
  if report.get("seconds_left") is not None:
    text += f"  {_clock(report['seconds_left'])} left"
  return text
