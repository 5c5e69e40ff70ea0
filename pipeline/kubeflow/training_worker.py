"""Runs the Trainer's run_fn as one worker of a Kubeflow TFJob (manifests/tfjob.yaml).

The pipeline's Trainer runs `run_fn` in one pod. To train on several pods, the
Kubeflow Training Operator starts this module in every worker with TF_CONFIG
set, and `run_fn`'s MultiWorkerMirroredStrategy joins them into one cluster.
Each worker reads the examples a pipeline run's ImportExampleGen wrote and
gets the same FnArgs the Trainer would build, so `run_fn` runs unchanged; the
chief (worker 0) writes the model.
"""

import argparse
import json
import sys
from typing import Optional
from typing import Sequence

from tfx import v1 as tfx
from tfx.components.trainer import fn_args_utils
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import standard_artifacts
from tfx.utils import import_utils
from tfx.utils import io_utils
from tfx.utils import path_utils

from next_category.pipeline import configs


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--examples_uri",
    required=True,
    help="An Examples artifact (with Split-train/ and Split-eval/), e.g. a run's "
    "PIPELINE_ROOT/.../ImportExampleGen_.../examples.",
  )
  parser.add_argument(
    "--output_uri",
    required=True,
    help="The model goes to OUTPUT_URI/model/Format-Serving, logs to OUTPUT_URI/model_run.",
  )
  parser.add_argument("--preset", default=configs.MODEL_PRESET)
  parser.add_argument("--train_epochs", type=int, default=configs.TRAIN_EPOCHS)
  parser.add_argument(
    "--train_steps",
    type=int,
    default=configs.TRAIN_NUM_STEPS,
    help="An exact number of training steps; overrides --train_epochs.",
  )
  parser.add_argument("--eval_steps", type=int, default=configs.EVAL_NUM_STEPS)
  parser.add_argument(
    "--num_workers",
    type=int,
    default=1,
    help="Workers in the TFJob (its Worker replicas), as custom_config['num_workers'].",
  )
  parser.add_argument("--run_fn", default=configs.RUN_FN, help="Dotted path of run_fn.")
  parser.add_argument(
    "--schema_path",
    default=configs.SCHEMA_PATH,
    help="The schema the pipeline's ImportSchemaGen imported (the data contract).",
  )
  parser.add_argument(
    "--hyperparameters_uri",
    default=None,
    help="A run's Tuner best_hyperparameters artifact (with --tune): run_fn gets its values "
    "as the Trainer would give them, over the preset's.",
  )
  args = parser.parse_args(argv)
  train_steps = 1 if args.train_steps is None else args.train_steps
  if min(train_steps, args.train_epochs, args.eval_steps, args.num_workers) < 1:
    parser.error("--train_steps, --train_epochs, --eval_steps and --num_workers must be positive.")
  return args


def fn_args_for(args: argparse.Namespace) -> tfx.components.FnArgs:
  """The FnArgs the Trainer would give `run_fn` for these inputs and settings."""
  examples = standard_artifacts.Examples()
  examples.uri = args.examples_uri
  examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
  exec_properties = {
    "train_args": json.dumps({"num_steps": args.train_steps or 0}),
    "eval_args": json.dumps({"num_steps": args.eval_steps}),
    "custom_config": json.dumps(
      {
        "preset": args.preset,
        "seed": configs.TRAINING_SEED,
        "num_workers": args.num_workers,
        "train_epochs": args.train_epochs,
      }
    ),
  }
  fn_args = fn_args_utils.get_common_fn_args({"examples": [examples]}, exec_properties)
  fn_args.schema_path = args.schema_path
  output_uri = args.output_uri.rstrip("/")
  fn_args.serving_model_dir = path_utils.serving_model_dir(f"{output_uri}/model")
  fn_args.eval_model_dir = path_utils.eval_model_dir(f"{output_uri}/model")
  fn_args.model_run_dir = f"{output_uri}/model_run"
  if args.hyperparameters_uri:
    # As the Trainer's executor reads its `hyperparameters` input
    # (tfx/components/trainer/executor.py): the one file in the artifact.
    path = io_utils.get_only_uri_in_dir(args.hyperparameters_uri)
    fn_args.hyperparameters = json.loads(fileio.open(path).read())
  return fn_args


def main(argv=None) -> int:
  args = parse_args(argv)
  module, _, name = args.run_fn.rpartition(".")
  run_fn = import_utils.import_func_from_module(module, name)
  run_fn(fn_args_for(args))
  return 0


if __name__ == "__main__":
  sys.exit(main())
