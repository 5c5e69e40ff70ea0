"""Standalone HTML reports of statistics, anomalies and drift or skew.

Plain tables with inline CSS and no scripts, so a report opens offline in any
browser (Facets, which TFDV's notebook display uses, loads its code from the
internet).
"""

import html
import os
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import tensorflow as tf
from tensorflow_metadata.proto.v0 import statistics_pb2

from next_category.components.anomaly_gate import anomalies as anomalies_lib
from next_category.components.anomaly_gate import comparators

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.bad { color: #b00020; font-weight: bold; }
.ok { color: #1b5e20; }
.muted { color: #777; }
"""

_TOP_VALUES = 6


def _page(title: str, body: List[str]) -> str:
  return "\n".join(
    [
      "<!DOCTYPE html>",
      '<html><head><meta charset="utf-8">',
      f"<title>{html.escape(title)}</title>",
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>{html.escape(title)}</h1>",
      *body,
      "</body></html>",
      "",
    ]
  )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  """An HTML table; cells are HTML already (escape text before passing it)."""
  lines = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
  for row in rows:
    lines.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>")
  lines.append("</table>")
  return "\n".join(lines)


def _features(dataset: statistics_pb2.DatasetFeatureStatistics):
  return {".".join(f.path.step) or f.name: f for f in dataset.features}


def _common(feature) -> Optional[statistics_pb2.CommonStatistics]:
  which = feature.WhichOneof("stats")
  if which == "num_stats":
    return feature.num_stats.common_stats
  if which == "string_stats":
    return feature.string_stats.common_stats
  if which == "bytes_stats":
    return feature.bytes_stats.common_stats
  return None


def _describe(feature, num_examples: int) -> str:
  """One dataset's statistics of one feature as a few lines of HTML."""
  if feature is None:
    return '<span class="muted">absent</span>'
  lines = []
  common = _common(feature)
  if common is not None:
    missing = common.num_missing / num_examples if num_examples else 0.0
    lines.append(f"present {common.num_non_missing}, missing {missing:.1%}")
    lines.append(
      f"values per example {common.min_num_values}..{common.max_num_values} "
      f"(mean {common.avg_num_values:.2f})"
    )
  if feature.HasField("num_stats"):
    num = feature.num_stats
    lines.append(
      f"mean {num.mean:.4g}, std {num.std_dev:.4g}, min {num.min:.4g}, max {num.max:.4g}, "
      f"zeros {num.num_zeros}"
    )
  elif feature.HasField("string_stats"):
    strings = feature.string_stats
    total = (common.tot_num_values if common else 0) or sum(v.frequency for v in strings.top_values)
    top = ", ".join(
      f"{v.value} {v.frequency / (total or 1):.1%}" for v in list(strings.top_values)[:_TOP_VALUES]
    )
    lines.append(f"{strings.unique} unique: {top}")
  return "<br>".join(html.escape(line) for line in lines)


def statistics_html(
  title: str, datasets: Sequence[Tuple[str, statistics_pb2.DatasetFeatureStatisticsList]]
) -> str:
  """Side-by-side statistics of several datasets, one row per feature.

  Args:
    title: the page's title.
    datasets: `(name, statistics)` pairs, e.g. `("train", ...), ("eval", ...)`.

  Returns:
    A standalone HTML page.
  """
  firsts = [(name, stats.datasets[0]) for name, stats in datasets]
  names = sorted({feature for _, ds in firsts for feature in _features(ds)})
  counts = _table(
    ["dataset", "examples"], [[html.escape(name), str(ds.num_examples)] for name, ds in firsts]
  )
  rows = []
  for feature_name in names:
    row = [f"<b>{html.escape(feature_name)}</b>"]
    for _, ds in firsts:
      row.append(_describe(_features(ds).get(feature_name), ds.num_examples))
    rows.append(row)
  return _page(title, [counts, _table(["feature"] + [n for n, _ in firsts], rows)])


def anomalies_html(
  title: str,
  blocking: Sequence[anomalies_lib.Anomaly],
  tolerated: Sequence[anomalies_lib.Anomaly],
  measurements: Sequence[comparators.Measurement] = (),
  notes: Sequence[str] = (),
) -> str:
  """Anomalies (blocking and tolerated) and comparator measurements.

  Args:
    title: the page's title.
    blocking: anomalies that stop the run.
    tolerated: anomalies the user accepted.
    measurements: drift or skew distances, over their threshold or not.
    notes: short lines shown above the tables (what was compared with what).

  Returns:
    A standalone HTML page.
  """
  body = [f"<p>{html.escape(note)}</p>" for note in notes]
  if not blocking and not tolerated:
    body.append('<p class="ok">No anomalies.</p>')
  for heading, rows, css in (
    ("Blocking anomalies", blocking, "bad"),
    ("Tolerated anomalies", tolerated, "muted"),
  ):
    if rows:
      body.append(f'<h2 class="{css}">{heading} ({len(rows)})</h2>')
      body.append(
        _table(
          ["split", "feature", "kind", "short description", "description"],
          [
            [
              html.escape(a.split),
              html.escape(a.feature),
              html.escape(a.kind),
              html.escape(a.short_description),
              html.escape(a.description),
            ]
            for a in rows
          ],
        )
      )
  if measurements:
    body.append("<h2>Comparators</h2>")
    body.append(
      _table(
        ["feature", "measure", "value", "threshold", ""],
        [
          [
            html.escape(m.feature),
            html.escape(m.measure),
            f'<span class="num">{m.value:.6g}</span>',
            f'<span class="num">{m.threshold:.6g}</span>',
            '<span class="bad">over</span>' if m.over_threshold else '<span class="ok">ok</span>',
          ]
          for m in measurements
        ],
      )
    )
  return _page(title, body)


def write_pages(pages: Dict[str, str], directory: str) -> List[str]:
  """Writes `{file name: HTML}` into `directory` (created if missing).

  Returns:
    The paths written, in the order of `pages`.
  """
  tf.io.gfile.makedirs(directory)
  paths = []
  for name, page in pages.items():
    path = os.path.join(directory, name)
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(page)
    paths.append(path)
  return paths
