"""`create_pipeline`'s settings, in five groups, with their defaults taken from `configs`.

Paths say where things are; the other groups say what the pipeline does with
them: which data it reads, how it trains, which gates a model must pass, and
where and how a blessed model is pushed. A runner fills them from its flags
(`pipeline/run/runner_flags.py`); a test or notebook may build them directly.
Nothing here imports TFX or TensorFlow, so flags parse before either is loaded.
"""

import dataclasses
from typing import Any
from typing import Mapping
from typing import Optional
from typing import Sequence

from next_category.pipeline import configs


@dataclasses.dataclass(frozen=True)
class Paths:
  """Where the pipeline reads and writes.

  Attributes:
    pipeline_root: where component outputs are written.
    data_root: directory holding `span-N/` directories of TFRecord files.
    schema_path: the curated schema, the data contract.
    report_dir: where AnomalyGate writes HTML reports of statistics, drift
      and anomalies, one directory per run; None writes none.
  """

  pipeline_root: str
  data_root: str
  schema_path: str = configs.SCHEMA_PATH
  report_dir: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class DataSettings:
  """Which examples are read, how they split, and how they are labelled and sliced.

  Attributes:
    input_pattern: file pattern under the data root, with `{SPAN}`.
    span: the span to ingest; None ingests the latest one.
    train_hash_buckets: hash buckets of the train split.
    eval_hash_buckets: hash buckets of the eval split.
    label_key: the label feature; None: the data contract's.
    slice_features: features the Evaluator slices by (each, and all crossed);
      None: the data contract's.
  """

  input_pattern: str = configs.INPUT_PATTERN
  span: Optional[int] = None
  train_hash_buckets: int = configs.TRAIN_HASH_BUCKETS
  eval_hash_buckets: int = configs.EVAL_HASH_BUCKETS
  label_key: Optional[str] = None
  slice_features: Optional[Sequence[str]] = None


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
  """How the Trainer trains.

  Attributes:
    run_fn: dotted path of the Trainer's `run_fn`.
    train_steps: an exact number of training steps; None trains for
      `train_epochs` (with early stopping and a cap that grows with the data:
      components/trainer/budget.py); or a RuntimeParameter of type str holding
      the whole `TrainArgs` as JSON (KubeflowV2 binds it to a pipeline input).
    train_epochs: passes over the train split when `train_steps` is None.
    eval_steps: evaluation steps of the Trainer's own evaluation.
    custom_config: passed to `run_fn` as `fn_args.custom_config`
      (the preset, the seed, the number of workers, the data contract's
      overrides).
    tune: put TFX's Tuner before the Trainer, which then trains with the best
      hyperparameters it found over the preset's.
    tuner_fn: dotted path of the Tuner's `tuner_fn`.
    tune_trials: hyperparameter sets the Tuner tries.
    tune_train_steps: training steps of each trial (each is scored on
      `eval_steps`).
  """

  run_fn: str = configs.RUN_FN
  train_steps: Any = configs.TRAIN_NUM_STEPS
  train_epochs: int = configs.TRAIN_EPOCHS
  eval_steps: int = configs.EVAL_NUM_STEPS
  custom_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  tune: bool = False
  tuner_fn: str = configs.TUNER_FN
  tune_trials: int = configs.TUNE_TRIALS
  tune_train_steps: int = configs.TUNE_TRAIN_STEPS


@dataclasses.dataclass(frozen=True)
class GateSettings:
  """What stops a run or a model.

  Attributes:
    tolerated_anomalies: anomaly kinds (or `feature:KIND`) that do not stop
      the run before training; they are still reported.
    accuracy_threshold: minimum eval top-1 accuracy for blessing.
    accuracy_change_threshold: minimum accuracy difference to the model
      serving now (a small negative number means "no worse").
    tflite_max_accuracy_drop: largest top-1 accuracy drop (points) of the
      int8 model against the SavedModel for it to be shipped.
  """

  tolerated_anomalies: Sequence[str] = ()
  accuracy_threshold: float = configs.EVAL_ACCURACY_THRESHOLD
  accuracy_change_threshold: float = configs.EVAL_ACCURACY_CHANGE_THRESHOLD
  tflite_max_accuracy_drop: float = configs.TFLITE_MAX_ACCURACY_DROP


@dataclasses.dataclass(frozen=True)
class ServingSettings:
  """Where a blessed model is pushed, and how.

  Attributes:
    serving_model_dir: base path the Pusher writes numbered versions to.
    tflite_push_base_directory: base path the int8 TFLite model is shipped to
      (`<base>/<version>/model.tflite`, the Pusher's version); None leaves the
      TFLite conversion out of the pipeline.
    model_signing_key: an ECDSA private key file the Pusher and the
      TFLiteConverter sign every version they push with (OpenSSF model
      signing, in staging, before it is visible); None pushes unsigned
      versions.
  """

  serving_model_dir: str
  tflite_push_base_directory: Optional[str] = None
  model_signing_key: Optional[str] = None
