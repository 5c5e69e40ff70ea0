"""Span directories under a data root, found as ImportExampleGen finds them.

ImportExampleGen matches `input_base/input_pattern` with `{SPAN}` standing for a
number and reads the highest span that has files. The gate needs the span
before it (to measure drift) and the runner's pre-flight check needs both, so
both ask this module.
"""

import os
import re
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import tensorflow as tf

SPAN_SPEC = "{SPAN}"


def _check_pattern(input_pattern: str) -> None:
  if input_pattern.count(SPAN_SPEC) != 1:
    raise ValueError(
      f"input_pattern must contain {SPAN_SPEC} exactly once (e.g. span-{SPAN_SPEC}/*), "
      f"got {input_pattern!r}."
    )


def files_by_span(input_base: str, input_pattern: str) -> Dict[int, List[str]]:
  """Lists the files of every span under `input_base`.

  Args:
    input_base: the data root.
    input_pattern: a file pattern relative to `input_base` holding `{SPAN}`.

  Returns:
    Span number -> sorted file paths, for spans that have at least one file.
    Directories matched by the pattern are not files and are left out.

  Raises:
    ValueError: if the pattern does not hold `{SPAN}` exactly once.
  """
  _check_pattern(input_pattern)
  glob = os.path.join(input_base, input_pattern.replace(SPAN_SPEC, "*"))
  before, _, after = os.path.join(input_base, input_pattern).partition(SPAN_SPEC)
  # The same translation ImportExampleGen makes: the pattern's glob
  # characters stay globs, {SPAN} becomes a number.
  regex = re.compile(_glob_to_regex(before) + r"(\d+)" + _glob_to_regex(after) + "$")
  found: Dict[int, List[str]] = {}
  for path in tf.io.gfile.glob(glob):
    match = regex.match(path)
    if match and not tf.io.gfile.isdir(path):
      found.setdefault(int(match.group(1)), []).append(path)
  return {span: sorted(paths) for span, paths in sorted(found.items())}


def _glob_to_regex(pattern: str) -> str:
  out = []
  for char in pattern:
    if char == "*":
      out.append("[^/]*")
    elif char == "?":
      out.append("[^/]")
    else:
      out.append(re.escape(char))
  return "".join(out)


def span_file_pattern(input_base: str, input_pattern: str, span: int) -> str:
  """The file pattern of one span, e.g. `root/span-2/*`."""
  _check_pattern(input_pattern)
  return os.path.join(input_base, input_pattern.replace(SPAN_SPEC, str(span)))


def previous_span(
  input_base: str, input_pattern: str, span: int
) -> Optional[Tuple[int, List[str]]]:
  """The highest span below `span` that has files, and its files.

  Args:
    input_base: the data root.
    input_pattern: a file pattern relative to `input_base` holding `{SPAN}`.
    span: the span being ingested.

  Returns:
    `(previous_span, files)`, or None when `span` is the first one.
  """
  earlier = {s: f for s, f in files_by_span(input_base, input_pattern).items() if s < span}
  if not earlier:
    return None
  latest = max(earlier)
  return latest, earlier[latest]
