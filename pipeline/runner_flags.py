"""Command-line flags and path resolution shared by the pipeline's runners.

Each runner module (`beam_runner`, `local_runner`, `kubeflow_runner`) parses
these flags, resolves its paths, calls `create_pipeline` once and hands the
pipeline to its orchestrator; `pipeline_settings` is what they all take from
the flags.
"""

import argparse
import dataclasses
import os
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

from tfx import v1 as tfx

import contract
from components import version_signing
from components.anomaly_gate import anomalies
from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import preflight


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


def parse_args(argv: Optional[Sequence[str]], description: str):
  """Parses runner flags; unrecognised `--flags` are Beam pipeline args.

  Returns:
    `(args, beam_pipeline_args)`.
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
) -> Tuple[argparse.Namespace, List[str]]:
  """Parses `argv`; unrecognised `--flags` are the components' Beam pipeline args.

  Returns:
    `(args, beam_pipeline_args)`; without any Beam args, `configs.BEAM_PIPELINE_ARGS`.
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
  return args, list(unknown) or list(configs.BEAM_PIPELINE_ARGS)


def build_pipeline(args, beam_pipeline_args: List[str]) -> tfx.dsl.Pipeline:
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
  model_signing_key = _checked_signing_key(args.model_signing_key)
  data_root = os.path.abspath(args.data_root)
  if not os.path.isdir(data_root):
    raise FileNotFoundError(
      f"Data root {data_root} does not exist; run `make data` or pass "
      "DATA_ROOT=/path/to/span-directories."
    )
  schema_path = os.path.abspath(args.schema_path)
  if not os.path.isfile(schema_path):
    raise FileNotFoundError(f"Schema file {schema_path} does not exist.")
  # Reads the data contract: a schema that breaks its rules stops here.
  settings = pipeline_settings(args)
  preflight.check_input(data_root, configs.INPUT_PATTERN, schema_path, span=args.span)
  paths = RunPaths(os.path.abspath(args.output_root))
  return pipeline_lib.create_pipeline(
    pipeline_name=configs.PIPELINE_NAME,
    pipeline_root=paths.pipeline_root,
    data_root=data_root,
    schema_path=schema_path,
    serving_model_dir=paths.serving_model_dir,
    report_dir=paths.reports_dir,
    tflite_push_base_directory=paths.tflite_model_dir,
    metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
      paths.metadata_path
    ),
    # No num_steps: the Trainer trains for --train_epochs (custom_config).
    train_args=tfx.proto.TrainArgs(num_steps=args.train_steps or 0),
    eval_args=tfx.proto.EvalArgs(num_steps=args.eval_steps),
    beam_pipeline_args=beam_pipeline_args,
    **{**settings, "model_signing_key": model_signing_key},
  )


def _checked_signing_key(path: Optional[str]) -> Optional[str]:
  """The key's absolute path, once it is known to sign (so a bad key fails now, not at the push)."""
  if not path:
    return None
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f"Model signing key {path} does not exist; run `make keygen` and pass "
      "MODEL_SIGNING_KEY=keys/model_signing_key.pem."
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
  """The `create_pipeline` arguments every runner takes from the shared flags and `configs`.

  Everything but locations, the Trainer's `train_args`/`eval_args` (a runner
  may make them runtime parameters) and the Beam args, so runners differ only
  in those.

  Args:
    args: flags as `parse_args` (or a runner's own parser with
      `add_pipeline_flags`) returns them.
  """
  # The label and slices come from the data contract.
  data_contract = _data_contract(args)
  return dict(
    model_signing_key=getattr(args, "model_signing_key", None),
    run_fn=configs.RUN_FN,
    accuracy_threshold=args.accuracy_threshold,
    accuracy_change_threshold=configs.EVAL_ACCURACY_CHANGE_THRESHOLD,
    input_pattern=configs.INPUT_PATTERN,
    span=args.span,
    tolerated_anomalies=args.tolerate_anomalies,
    train_hash_buckets=configs.TRAIN_HASH_BUCKETS,
    eval_hash_buckets=configs.EVAL_HASH_BUCKETS,
    slice_features=data_contract.slice_features,
    label_key=data_contract.label.name,
    trainer_custom_config={
      "preset": args.preset,
      "seed": configs.TRAINING_SEED,
      "num_workers": args.num_workers,
      "train_epochs": args.train_epochs,
      **_contract_overrides(args),
    },
    enable_cache=not args.no_cache,
  )
