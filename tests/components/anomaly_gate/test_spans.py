"""Tests of finding spans as ImportExampleGen does."""

import os

import pytest

from next_category.components.anomaly_gate import spans


def _touch(root, *names):
  for name in names:
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()


def test_spans_with_files_only_and_previous_skips_gaps(tmp_path):
  root = str(tmp_path)
  _touch(root, "span-1/a.gz", "span-1/b.gz", "span-3/a", "span-x/a", "other/a")
  os.makedirs(os.path.join(root, "span-4"))  # no files: not a span ImportExampleGen reads
  os.makedirs(os.path.join(root, "span-3", "nested"))  # a directory is not a file
  assert spans.files_by_span(root, "span-{SPAN}/*") == {
    1: [f"{root}/span-1/a.gz", f"{root}/span-1/b.gz"],
    3: [f"{root}/span-3/a"],
  }
  assert spans.previous_span(root, "span-{SPAN}/*", 3) == (
    1,
    [f"{root}/span-1/a.gz", f"{root}/span-1/b.gz"],
  )
  assert spans.previous_span(root, "span-{SPAN}/*", 1) is None
  assert spans.span_file_pattern(root, "span-{SPAN}/*", 2) == f"{root}/span-2/*"


def test_pattern_needs_one_span_spec(tmp_path):
  with pytest.raises(ValueError, match="must contain {SPAN} exactly once"):
    spans.files_by_span(str(tmp_path), "span-*/*")
