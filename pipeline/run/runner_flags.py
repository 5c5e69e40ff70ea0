"""Command-line flags and path resolution shared by the pipeline's runners.

The one path from `argv` to `create_pipeline`: `parse_args` parses the flags
once into one namespace (Beam's flags included), before TensorFlow or TFX is
imported; `build_pipeline` resolves its paths and calls `create_pipeline` with
the settings groups (`pipeline/settings.py`) that `pipeline_settings` fills
from the flags. The Kubeflow runner adds its own flags to the same parser and
takes the same groups.
"""

import argparse
import dataclasses
import os
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

from next_category import contract
from next_category.components import version_signing
from next_category.components.anomaly_gate import anomalies
from next_category.pipeline import configs
from next_category.pipeline import settings


@dataclasses.dataclass(frozen=True)
class RunPaths:
  """Where one OUTPUT_ROOT keeps a pipeline's outputs."""

  output_root: str

  @property
  def pipeline_root(self) -> str:
    return os.path.join(self.output_root, "pipeline")

  @property
  def metadata_path(self) -> str:
    return os.path.join(self.output_root, "metadata.sqlite")

  @property
  def serving_model_dir(self) -> str:
    return os.path.join(self.output_root, "serving", configs.SERVING_MODEL_NAME)

  @property
  def tflite_model_dir(self) -> str:
    return os.path.join(self.output_root, "tflite", configs.SERVING_MODEL_NAME)

  @property
  def reports_dir(self) -> str:
    return os.path.join(self.output_root, "reports")


def _tolerated_anomalies(text: str) -> List[str]:
  try:
    return anomalies.check_tolerated(text.split(","))
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from e


def parse_args(argv: Optional[Sequence[str]], description: str) -> argparse.Namespace:
  """Parses runner flags once; unrecognised `--flags` are Beam pipeline args.

  Imports neither TensorFlow nor TFX: the runner opens its console and log
  from these flags before either is loaded.

  Returns:
    The flags, with the Beam pipeline args as `beam_pipeline_args`.
  """
  parser = argparse.ArgumentParser(
    description=description,
    epilog="Any other --flag is passed to the components' Beam pipelines "
    "(e.g. --runner=FlinkRunner --flink_master=host:8081); without any, "
    f"they run with {' '.join(configs.BEAM_PIPELINE_ARGS)}.",
  )
  parser.add_argument(
    "--data_root", default=configs.DATA_ROOT, help="Directory of span-N/ TFRecord directories."
  )
  parser.add_argument(
    "--output_root",
    default=configs.OUTPUT_ROOT,
    help="Pipeline outputs, ML Metadata and pushed models.",
  )
  parser.add_argument(
    "--schema_path",
    default=configs.SCHEMA_PATH,
    help="The data contract: feature names, vocabularies, label and limits are read from it.",
  )
  parser.add_argument(
    "--verbose",
    action="store_true",
    help="Show every log line (Beam, absl, TensorFlow) on the terminal instead of the run's "
    "log file OUTPUT_ROOT/logs/<run>.log.",
  )
  add_pipeline_flags(
    parser,
    num_workers_help="Trainer workers: with no TF_CONFIG, a local MultiWorkerMirroredStrategy "
    "cluster of this many processes on loopback ports.",
  )
  return parse_with_beam_args(parser, argv)


def add_pipeline_flags(
  parser: argparse.ArgumentParser, num_workers_help: str, train_steps_help: Optional[str] = None
) -> None:
  """Adds the flags every runner shares: model, training, evaluation and data validation.

  `pipeline_settings` and each runner's `create_pipeline` call read them.
  """
  parser.add_argument(
    "--preset", default=configs.MODEL_PRESET, help="Model preset (components/trainer/presets.py)."
  )
  parser.add_argument("--num_workers", type=int, default=1, help=num_workers_help)
  parser.add_argument(
    "--train_epochs",
    type=int,
    default=configs.TRAIN_EPOCHS,
    help="Passes over the train split, with early stopping on the eval split and a step cap "
    "that grows with the square root of the data (docs/model.md).",
  )
  parser.add_argument(
    "--train_steps",
    type=int,
    default=configs.TRAIN_NUM_STEPS,
    help=train_steps_help or "An exact number of training steps; overrides --train_epochs.",
  )
  parser.add_argument("--eval_steps", type=int, default=configs.EVAL_NUM_STEPS)
  parser.add_argument(
    "--accuracy_threshold",
    type=float,
    default=configs.EVAL_ACCURACY_THRESHOLD,
    help="Minimum eval accuracy for the model to be pushed.",
  )
  parser.add_argument(
    "--tune",
    action="store_true",
    help="Put TFX's Tuner (KerasTuner) before the Trainer: it searches the preset's learning "
    "rate, dropout, width and depth, and the Trainer trains with the best values.",
  )
  parser.add_argument(
    "--tune_trials",
    type=int,
    default=configs.TUNE_TRIALS,
    help="With --tune: hyperparameter sets tried, each trained --tune_steps steps.",
  )
  parser.add_argument(
    "--tune_steps",
    type=int,
    default=configs.TUNE_TRAIN_STEPS,
    help="With --tune: training steps of each trial.",
  )
  parser.add_argument(
    "--no_cache", action="store_true", help="Re-run every component even if unchanged."
  )
  parser.add_argument(
    "--span",
    type=int,
    default=None,
    help="Ingest this span instead of the latest one (drift is measured against the span "
    "before it).",
  )
  parser.add_argument(
    "--tolerate_anomalies",
    type=_tolerated_anomalies,
    default=[],
    metavar="KIND[,feature:KIND...]",
    help="Data anomaly kinds that do not stop the run before training (still reported), "
    "e.g. ENUM_TYPE_UNEXPECTED_STRING_VALUES or user_segment:COMPARATOR_L_INFTY_HIGH.",
  )
  parser.add_argument(
    "--model_signing_key",
    default=None,
    metavar="PATH",
    help="ECDSA private key (`make keygen`) that signs every pushed version, SavedModel and "
    "TFLite (OpenSSF model signing); on Kubeflow, a path inside the components' container "
    "(e.g. a mounted Secret).",
  )
  parser.add_argument(
    "--label_feature",
    default=None,
    help="The label, if not the schema's feature absent from SERVING (README: Data contract).",
  )
  parser.add_argument(
    "--sequence_feature",
    default=None,
    help="The id sequence, if not the schema's variable-length INT feature.",
  )
  parser.add_argument(
    "--slice_features",
    type=lambda text: [name for name in text.split(",") if name],
    default=None,
    metavar="FEATURE[,FEATURE...]",
    help="Features the Evaluator slices by (default: the schema's categorical features).",
  )


def parse_with_beam_args(
  parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> argparse.Namespace:
  """Parses `argv`; unrecognised `--flags` are the components' Beam pipeline args.

  Returns:
    The flags, with `beam_pipeline_args` (without any Beam args,
    `configs.BEAM_PIPELINE_ARGS`).
  """
  args, unknown = parser.parse_known_args(argv)
  stray = [a for a in unknown if not a.startswith("--")]
  if stray:
    parser.error(f"unexpected arguments {stray}; Beam args must be --name=value.")
  if args.num_workers < 1:
    parser.error(f"--num_workers must be at least 1, got {args.num_workers}.")
  if args.train_epochs < 1:
    parser.error(f"--train_epochs must be at least 1, got {args.train_epochs}.")
  if args.train_steps is not None and args.train_steps < 1:
    parser.error(f"--train_steps must be at least 1, got {args.train_steps}.")
  for flag in ("tune_trials", "tune_steps"):
    if getattr(args, flag) < 1:
      parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}.")
  args.beam_pipeline_args = list(unknown) or list(configs.BEAM_PIPELINE_ARGS)
  return args


def build_pipeline(args: argparse.Namespace):
  """The Beam and local runners' pipeline: paths under OUTPUT_ROOT on this machine.

  Both runners run the pipeline here and differ only in their DagRunner, so
  they share this one `create_pipeline` call.

  Raises:
    FileNotFoundError: if the data root, the schema or the signing key does
      not exist.
    contract.ContractError: if the schema does not fit the data contract's rules.
    preflight.BadInputError: if the input files cannot be read as the data
      contract says (naming the file).
    ValueError: for settings that cannot work.
  """
  # pylint: disable=g-import-not-at-top
  from tfx import v1 as tfx

  from next_category.pipeline import pipeline as pipeline_lib
  from next_category.pipeline.run import preflight

  # pylint: enable=g-import-not-at-top
  model_signing_key = _checked_signing_key(args.model_signing_key)
  data_root = os.path.abspath(args.data_root)
  if not os.path.isdir(data_root):
    raise FileNotFoundError(
      f"Data root {data_root} does not exist; run `make data` (installed: "
      f"`next-category-data --data_root={data_root}`) or pass DATA_ROOT= (--data_root=) "
      "a directory of span-N/ directories."
    )
  schema_path = os.path.abspath(args.schema_path)
  if not os.path.isfile(schema_path):
    raise FileNotFoundError(f"Schema file {schema_path} does not exist.")
  # Reads the data contract: a schema that breaks its rules stops here.
  shared = pipeline_settings(args)
  preflight.check_input(data_root, configs.INPUT_PATTERN, schema_path, span=args.span)
  run_paths = RunPaths(os.path.abspath(args.output_root))
  return pipeline_lib.create_pipeline(
    paths=settings.Paths(
      pipeline_root=run_paths.pipeline_root,
      data_root=data_root,
      schema_path=schema_path,
      report_dir=run_paths.reports_dir,
    ),
    serving=settings.ServingSettings(
      serving_model_dir=run_paths.serving_model_dir,
      tflite_push_base_directory=run_paths.tflite_model_dir,
      model_signing_key=model_signing_key,
    ),
    metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
      run_paths.metadata_path
    ),
    beam_pipeline_args=args.beam_pipeline_args,
    **shared,
  )


def _checked_signing_key(path: Optional[str]) -> Optional[str]:
  """The key's absolute path, once it is known to sign (so a bad key fails now, not at the push)."""
  if not path:
    return None
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"Model signing key {path} does not exist; run `make keygen` (installed: "
      "`next-category-keygen keygen --key_dir=keys`) and pass "
      "MODEL_SIGNING_KEY=keys/model_signing_key.pem (--model_signing_key=)."
    )
  version_signing.load_private_key(path)
  return path


def _data_contract(args: argparse.Namespace) -> contract.DataContract:
  """The contract of `args.schema_path` (a file on this machine) with the flags' overrides.

  Raises:
    contract.ContractError: if the schema cannot be read or breaks a rule.
  """
  return contract.load(
    args.schema_path,
    label_feature=getattr(args, "label_feature", None),
    sequence_feature=getattr(args, "sequence_feature", None),
    slice_features=getattr(args, "slice_features", None),
  )


def _contract_overrides(args: argparse.Namespace) -> dict:
  """The contract flags that were set, for the Trainer's custom_config."""
  names = ("label_feature", "sequence_feature", "slice_features")
  return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def pipeline_settings(args: argparse.Namespace) -> Dict[str, Any]:
  """The settings groups every runner takes from the shared flags: data, training, gates.

  Paths, the push destination and the Beam args are each runner's own. The
  Kubeflow runner replaces `training.train_steps` with a runtime parameter.

  Args:
    args: flags as `parse_args` (or a runner's own parser with
      `add_pipeline_flags`) returns them.

  Returns:
    `create_pipeline` keyword arguments: `data`, `training`, `gates`, `enable_cache`.

  Raises:
    contract.ContractError: if the schema cannot be read or breaks a rule.
  """
  # The label and slices come from the data contract.
  data_contract = _data_contract(args)
  return dict(
    data=settings.DataSettings(
      span=args.span,
      label_key=data_contract.label.name,
      slice_features=data_contract.slice_features,
    ),
    training=settings.TrainingSettings(
      train_steps=args.train_steps,
      train_epochs=args.train_epochs,
      eval_steps=args.eval_steps,
      custom_config={
        "preset": args.preset,
        "seed": configs.TRAINING_SEED,
        "num_workers": args.num_workers,
        **_contract_overrides(args),
      },
      tune=args.tune,
      tune_trials=args.tune_trials,
      tune_train_steps=args.tune_steps,
    ),
    gates=settings.GateSettings(
      tolerated_anomalies=args.tolerate_anomalies,
      accuracy_threshold=args.accuracy_threshold,
    ),
    enable_cache=not args.no_cache,
  )
