"""Tests of the Trainer's training budget: epochs that follow the data, a cap, an override."""

import json

import pytest

from next_category.components.trainer import budget


def test_default_budget_is_epochs_of_the_train_split_validated_each_epoch():
  plan = budget.plan(num_train_examples=40_000, batch_size=256)
  assert plan.steps_per_epoch == 156
  assert plan.epochs == budget.DEFAULT_EPOCHS == 2
  # Two epochs are fewer than MIN_STEPS: MIN_STEPS, in whole validation periods.
  assert (plan.total_steps, plan.validation_every, plan.periods) == (312, 156, 2)
  assert plan.warmup_steps == 15 and not plan.capped
  assert plan.epochs_done(312) == 2.0


def test_large_data_is_capped_by_the_square_root_of_its_size_and_validated_every_250_steps():
  assert budget.max_steps_for(40_000) == 640
  assert budget.max_steps_for(160_000) == 1280
  plan = budget.plan(num_train_examples=800_000, batch_size=256)
  assert plan.steps_per_epoch == 3125 and plan.capped
  assert budget.max_steps_for(800_000) == 2862
  assert (plan.total_steps, plan.validation_every, plan.warmup_steps) == (2750, 250, 100)
  assert plan.epochs_done(plan.total_steps) == 0.88


def test_train_steps_override_epochs_and_cap():
  plan = budget.plan(num_train_examples=800_000, batch_size=256, train_epochs=9, train_steps=60)
  assert (plan.total_steps, plan.validation_every, plan.periods, plan.epochs) == (60, 60, 1, None)
  # A small split gets MIN_STEPS (many epochs), with patience of at least 100 steps.
  small = budget.plan(1000, 32, train_epochs=2)
  assert (small.total_steps, small.validation_every, small.patience) == (372, 31, 4)
  assert budget.MIN_STEPS == 400


def test_bad_budgets_name_the_problem():
  with pytest.raises(ValueError, match="train_epochs must be positive, got 0"):
    budget.plan(1000, 32, train_epochs=0)
  with pytest.raises(ValueError, match="train_steps must be positive, got -1"):
    budget.plan(1000, 32, train_steps=-1)
  with pytest.raises(ValueError, match="fewer than one batch of 32"):
    budget.plan(20, 32)


def test_stopping_point_is_written_and_described(tmp_path):
  plan = budget.plan(num_train_examples=40_000, batch_size=256, train_epochs=4)
  point = budget.StoppingPoint(plan, steps_run=468, best_step=156, stopped_early=True)
  path = budget.write_stopping_point(str(tmp_path), point)
  with open(path) as f:
    written = json.load(f)
  assert written["epochs_run"] == 3.0 and written["best_epoch"] == 1.0
  assert budget.describe(written) == (
    "stopped early after 468 steps (3.00 epochs) of 4 epochs; kept the weights of step 156 "
    "(1.00 epochs), the lowest eval loss"
  )
