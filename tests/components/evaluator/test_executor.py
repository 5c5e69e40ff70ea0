"""Tests of the Evaluator executor's baseline handling.

What TFX's executor then does with or without a baseline (TFMA, blessing) is
run for real by tests/pipeline/test_e2e.py; here the parent's `Do` records the
`input_dict` it is given.
"""

import pytest
from tfx.components.evaluator import executor as tfx_executor
from tfx.types import standard_artifacts

from next_category.components.evaluator import executor
from tests.testing import saved_models


@pytest.fixture
def recorded(monkeypatch):
  calls = []
  monkeypatch.setattr(
    tfx_executor.Executor, "Do", lambda self, input_dict, *_: calls.append(input_dict)
  )
  return calls


def _baseline(uri):
  baseline = standard_artifacts.Model()
  baseline.uri = str(uri)
  return baseline


def test_an_empty_baseline_is_dropped(tmp_path, recorded):
  model = _baseline(tmp_path / "candidate")
  executor.Executor().Do({"model": [model], "baseline_model": [_baseline(tmp_path / "b")]}, {}, {})
  assert recorded == [{"model": [model], "baseline_model": []}]


def test_a_baseline_holding_a_model_is_kept(tmp_path, recorded):
  baseline = _baseline(tmp_path / "b")
  saved_models.write(str(tmp_path / "b" / "Format-Serving"))
  executor.Executor().Do({"baseline_model": [baseline]}, {}, {})
  assert recorded == [{"baseline_model": [baseline]}]
  executor.Executor().Do({}, {}, {})
  assert recorded[-1] == {}
