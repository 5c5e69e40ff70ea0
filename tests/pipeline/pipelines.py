"""A pipeline built with placeholder paths, for tests of its structure."""

from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib


def create_test_pipeline(**overrides):
  """`create_pipeline` with small placeholder settings; `overrides` replace any of them."""
  settings = dict(
    pipeline_name="p",
    pipeline_root="/tmp/p",
    data_root="/tmp/d",
    schema_path=configs.SCHEMA_PATH,
    run_fn=configs.RUN_FN,
    serving_model_dir="/tmp/s",
    train_args=tfx.proto.TrainArgs(num_steps=10),
    eval_args=tfx.proto.EvalArgs(num_steps=2),
    accuracy_threshold=0.5,
  )
  settings.update(overrides)
  return pipeline_lib.create_pipeline(**settings)
