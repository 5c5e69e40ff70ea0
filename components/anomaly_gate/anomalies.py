"""Data anomalies as rows, the switch that tolerates known kinds, and the gate's error.

Kept free of TFX and TFDV imports so that the runners can parse the gate's error
and check `--tolerate_anomalies` without loading them.
"""

import dataclasses
import re
from typing import Iterable
from typing import List
from typing import Sequence
from typing import Tuple

from tensorflow_metadata.proto.v0 import anomalies_pb2

# The split name of anomalies that compare a span with the previous one.
DRIFT_SPLIT = "drift"
# The first line of the gate's error; `error_lines` looks for it.
_ERROR_HEADER = "stop the run before training"
# What Beam appends to an error raised inside a transform.
_BEAM_SUFFIX = re.compile(r"\s*\[while running '[^']*'\]\s*$")
# TFDV's descriptions end their numbers with this aside; it says nothing here.
_PRECISION_ASIDE = " (up to six significant digits)"


@dataclasses.dataclass(frozen=True)
class Anomaly:
  """One reason TFDV found one feature (or the dataset) anomalous in one split.

  Attributes:
    split: the split (`train`, `eval`) or `drift` for span-to-span drift.
    feature: the feature's name, or `(dataset)` for dataset-level anomalies.
    kind: the `AnomalyInfo.Type` name, e.g. `ENUM_TYPE_UNEXPECTED_STRING_VALUES`.
    short_description: TFDV's short description, e.g. `Unexpected string values`.
    description: TFDV's full description.
  """

  split: str
  feature: str
  kind: str
  short_description: str
  description: str

  def line(self) -> str:
    """One line naming the split, feature, kind and what is wrong."""
    return (
      f"[{self.split}] {self.feature}: {self.kind}: {self.short_description}: {self.description}"
    )


def from_proto(anomalies: anomalies_pb2.Anomalies, split: str) -> List[Anomaly]:
  """Flattens an `Anomalies` proto into rows, sorted by feature.

  Args:
    anomalies: what `tfdv.validate_statistics` (or ExampleValidator) found.
    split: the split the anomalies were found in.

  Returns:
    One row per reason of every anomalous feature, then dataset-level ones.
  """
  rows = []
  for feature, info in sorted(anomalies.anomaly_info.items()):
    for reason in info.reason:
      rows.append(_row(split, feature, reason))
  for reason in anomalies.dataset_anomaly_info.reason:
    rows.append(_row(split, "(dataset)", reason))
  return rows


def _row(split: str, feature: str, reason) -> Anomaly:
  description = reason.description.replace(_PRECISION_ASIDE, "").strip()
  return Anomaly(
    split=split,
    feature=feature,
    kind=anomalies_pb2.AnomalyInfo.Type.Name(reason.type),
    short_description=reason.short_description,
    description=description,
  )


def check_tolerated(tolerated: Iterable[str]) -> List[str]:
  """Checks a `--tolerate_anomalies` list.

  Args:
    tolerated: entries `KIND` (tolerated for every feature) or `feature:KIND`
      (for that feature only), where KIND is an `AnomalyInfo.Type` name such as
      `ENUM_TYPE_UNEXPECTED_STRING_VALUES` or `COMPARATOR_L_INFTY_HIGH`.

  Returns:
    The entries, stripped, without empty ones or repeats, in their order.

  Raises:
    ValueError: if an entry names no known anomaly kind.
  """
  known = set(anomalies_pb2.AnomalyInfo.Type.keys())
  entries, unknown = [], []
  for entry in tolerated:
    entry = entry.strip()
    if not entry or entry in entries:
      continue
    kind = entry.rpartition(":")[2]
    if kind not in known:
      unknown.append(entry)
    entries.append(entry)
  if unknown:
    raise ValueError(
      f"Cannot tolerate {', '.join(repr(u) for u in unknown)}: each entry must be an anomaly "
      "kind (a tensorflow_metadata AnomalyInfo.Type name such as "
      "ENUM_TYPE_UNEXPECTED_STRING_VALUES or COMPARATOR_L_INFTY_HIGH), optionally "
      "prefixed by a feature name and a colon (user_segment:COMPARATOR_L_INFTY_HIGH)."
    )
  return entries


def split_tolerated(
  anomalies: Sequence[Anomaly], tolerated: Sequence[str]
) -> Tuple[List[Anomaly], List[Anomaly]]:
  """Separates anomalies that stop the run from those the user accepted.

  Args:
    anomalies: every anomaly found.
    tolerated: entries as accepted by `check_tolerated`.

  Returns:
    `(blocking, tolerated)` anomalies, each in the input order.
  """
  blocking, accepted = [], []
  for anomaly in anomalies:
    if anomaly.kind in tolerated or f"{anomaly.feature}:{anomaly.kind}" in tolerated:
      accepted.append(anomaly)
    else:
      blocking.append(anomaly)
  return blocking, accepted


class DataAnomaliesError(RuntimeError):
  """Raised by the gate when data anomalies must stop the run before training."""


def error_message(blocking: Sequence[Anomaly], tolerated: Sequence[Anomaly]) -> str:
  """The gate's error: a header line, then one line per blocking anomaly."""
  count = len(blocking)
  header = f"{count} data {'anomaly' if count == 1 else 'anomalies'} {_ERROR_HEADER}"
  if tolerated:
    header += f" ({len(tolerated)} more tolerated)"
  header += (
    "; fix the data, or accept known kinds with --tolerate_anomalies=KIND[,feature:KIND...]:"
  )
  return "\n".join([header] + [f"  {a.line()}" for a in blocking])


def error_lines(message: str) -> List[str]:
  """Finds the gate's header and anomaly lines in an error message.

  Orchestrators may wrap the gate's error (Beam appends the transform's name),
  so this looks for the header anywhere in the message.

  Args:
    message: `str()` of the exception the pipeline run raised.

  Returns:
    The header and one line per anomaly, or [] if the message is not the gate's.
  """
  lines = message.strip().splitlines()
  for start, line in enumerate(lines):
    if _ERROR_HEADER in line and "--tolerate_anomalies" in line:
      found = [line.strip()]
      for anomaly_line in lines[start + 1 :]:
        if not anomaly_line.startswith("  ["):
          break
        found.append("  " + _BEAM_SUFFIX.sub("", anomaly_line.strip()))
      return found
  return []
