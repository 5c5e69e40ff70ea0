"""Tests of the canary's answer checks, without a server."""

import numpy as np
import pytest

from next_category.components.infra_validator import queries


def _report():
  return queries.QueryReport(predict_signature="serving_default", classify_signature=None)


def test_float_answers_pass_within_the_tolerance_and_fail_beyond_it():
  expected = np.array([[0.25, 0.75]], dtype=np.float32)
  report = _report()
  queries._compare("a", expected + np.float32(1e-6), expected, 1e-5, report)
  assert report.mismatch_count == 0
  assert report.max_abs_difference_seen == pytest.approx(1e-6, rel=0.1)

  queries._compare("b", expected + np.float32(1e-3), expected, 1e-5, report)
  assert report.mismatch_count == 1
  assert report.mismatches == [
    "b: differs from the in-process model by up to 0.001 (tolerance 1e-05)."
  ]


@pytest.mark.parametrize(
  "served, message",
  [
    (np.array([[0.25, np.nan]], dtype=np.float32), "non-finite values"),
    (np.array([0.25, 0.75], dtype=np.float32), "shape [2], in-process [1, 2]"),
    (np.array([[1, 0]], dtype=np.int64), "dtype int64, in-process float32"),
  ],
)
def test_malformed_answers_are_mismatches(served, message):
  report = _report()
  queries._compare("x", served, np.array([[0.25, 0.75]], dtype=np.float32), 1e-5, report)
  assert report.mismatch_count == 1 and message in report.mismatches[0]


def test_labels_must_be_equal():
  report = _report()
  expected = np.array([["a", "b"]], dtype=object)
  queries._compare("c", np.array([["a", "b"]], dtype=object), expected, 0.0, report)
  queries._compare("c", np.array([["b", "a"]], dtype=object), expected, 0.0, report)
  assert report.mismatch_count == 1


def test_choose_signatures_needs_a_serialized_examples_input(models):
  signatures = queries.read_signature_defs(models.good)
  assert queries.choose_signatures(signatures) == ("serving_default", "classification")
  with pytest.raises(ValueError, match="no Predict signature with one DT_STRING input"):
    queries.choose_signatures({"classification": signatures["classification"]})


def test_read_signature_defs_names_a_file_that_is_not_a_saved_model(tmp_path):
  (tmp_path / "saved_model.pb").write_bytes(b"this is not a SavedModel")
  with pytest.raises(ValueError, match="is not a SavedModel"):
    queries.read_signature_defs(str(tmp_path))
