"""Composition of the next_category TFX pipeline.

`create_pipeline` is pure: every setting is a parameter, so the Beam, local and
Kubeflow runners build exactly the same pipeline from their own flags.
"""

from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Union

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

import contract
from components.anomaly_gate.component import AnomalyGate
from components.evaluator.component import Evaluator
from components.infra_validator.component import InfraValidator
from components.pusher.component import Pusher
from components.serving_baseline.component import ServingBaseline
from components.tflite_converter.component import TFLiteConverter


def _eval_config(
  label_key: str,
  accuracy_threshold: float,
  accuracy_change_threshold: float,
  slice_features: Sequence[str],
) -> tfma.EvalConfig:
  """Metrics, slices and blessing thresholds of the Evaluator."""
  slicing_specs = [tfma.SlicingSpec()]
  slicing_specs += [tfma.SlicingSpec(feature_keys=[f]) for f in slice_features]
  if len(slice_features) > 1:
    slicing_specs.append(tfma.SlicingSpec(feature_keys=list(slice_features)))
  return tfma.EvalConfig(
    # TF_GENERIC: TFMA calls the signature of a plain tf.saved_model.load
    # instead of loading the Keras model once per use (about 60% of the
    # Evaluator's time on the default dataset).
    model_specs=[
      tfma.ModelSpec(
        signature_name="serving_default", label_key=label_key, model_type=tfma.TF_GENERIC
      )
    ],
    slicing_specs=slicing_specs,
    metrics_specs=[
      tfma.MetricsSpec(
        metrics=[
          tfma.MetricConfig(class_name="ExampleCount"),
          tfma.MetricConfig(
            class_name="SparseCategoricalAccuracy",
            # Blessing looks at the whole eval split only: small slices
            # are too noisy to gate on, and are reported instead.
            per_slice_thresholds=[
              tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec()],
                threshold=tfma.MetricThreshold(
                  value_threshold=tfma.GenericValueThreshold(
                    lower_bound={"value": accuracy_threshold}
                  ),
                  # Against the model serving now; ignored on the
                  # first run, when none is.
                  change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                    absolute={"value": accuracy_change_threshold},
                  ),
                ),
              )
            ],
          ),
          tfma.MetricConfig(
            class_name="SparseTopKCategoricalAccuracy", config='"k": 3, "name": "top_3_accuracy"'
          ),
          # For the run report.
          tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ]
      )
    ],
  )


# What the Trainer accepts for its arguments: the proto, or a runtime parameter
# holding the whole proto as JSON (KubeflowV2 binds it to a pipeline input).
TrainArgsValue = Union[tfx.proto.TrainArgs, tfx.dsl.experimental.RuntimeParameter]
EvalArgsValue = Union[tfx.proto.EvalArgs, tfx.dsl.experimental.RuntimeParameter]
# The splits ImportExampleGen writes.
_SPLITS = ("train", "eval")


def _check_steps_args(name: str, value, proto_class) -> None:
  """Refuses `train_args`/`eval_args` the Trainer could not use.

  A RuntimeParameter is checked only for its type: its value arrives at run time.
  """
  if isinstance(value, tfx.dsl.experimental.RuntimeParameter):
    if value.ptype is not str:
      raise ValueError(
        f"The {name} runtime parameter {value.name!r} must have ptype str (the whole "
        f"{proto_class.__name__} as JSON), got {value.ptype.__name__}."
      )
    return
  if not isinstance(value, proto_class):
    raise ValueError(
      f"{name} must be a tfx.proto.{proto_class.__name__} or a RuntimeParameter, "
      f"got {type(value).__name__}."
    )
  # A train_args without num_steps (0) leaves the budget to the Trainer's
  # train_epochs (components/trainer/budget.py).
  if value.num_steps < 0 or (value.num_steps == 0 and proto_class is tfx.proto.EvalArgs):
    raise ValueError(
      f"{name}.num_steps must be positive (0 in train_args: train for train_epochs), "
      f"got {value.num_steps}."
    )
  unknown = sorted(set(value.splits) - set(_SPLITS))
  if unknown:
    raise ValueError(
      f"{name}.splits names {', '.join(unknown)}, which ImportExampleGen does not write; "
      f"it writes {' and '.join(_SPLITS)}."
    )


def create_pipeline(
  pipeline_name: str,
  pipeline_root: str,
  data_root: str,
  schema_path: str,
  run_fn: str,
  serving_model_dir: str,
  train_args: TrainArgsValue,
  eval_args: EvalArgsValue,
  accuracy_threshold: float,
  accuracy_change_threshold: float = -1e-10,
  input_pattern: str = "span-{SPAN}/*",
  span: Optional[int] = None,
  tolerated_anomalies: Sequence[str] = (),
  report_dir: Optional[str] = None,
  tflite_push_base_directory: Optional[str] = None,
  tflite_max_accuracy_drop: float = 1.0,
  model_signing_key: Optional[str] = None,
  train_hash_buckets: int = 4,
  eval_hash_buckets: int = 1,
  slice_features: Optional[Sequence[str]] = None,
  label_key: Optional[str] = None,
  trainer_custom_config: Optional[Dict[str, Any]] = None,
  enable_cache: bool = True,
  metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
  beam_pipeline_args: Optional[List[str]] = None,
) -> tfx.dsl.Pipeline:
  """Creates the next_category pipeline.

  Args:
    pipeline_name: the pipeline's name in ML Metadata.
    pipeline_root: where component outputs are written.
    data_root: directory holding `span-N/` directories of TFRecord files.
    schema_path: the curated schema (`schemas/schema.pbtxt`).
    run_fn: dotted path of the Trainer's `run_fn`.
    serving_model_dir: base path the Pusher writes numbered versions to.
    train_args: the Trainer's `tfx.proto.TrainArgs` (training steps), or a
      RuntimeParameter of type str holding them as JSON.
    eval_args: the Trainer's `tfx.proto.EvalArgs` (evaluation steps), or a
      RuntimeParameter of type str holding them as JSON.
    accuracy_threshold: minimum eval top-1 accuracy for blessing.
    accuracy_change_threshold: minimum accuracy difference to the model
      serving now (a small negative number means "no worse").
    input_pattern: file pattern under `data_root`, with `{SPAN}`.
    span: the span to ingest; None ingests the latest one.
    tolerated_anomalies: anomaly kinds (or `feature:KIND`) that do not stop
      the run before training; they are still reported.
    report_dir: where AnomalyGate writes HTML reports of statistics, drift
      and anomalies, one directory per run; None writes none.
    tflite_push_base_directory: base path the int8 TFLite model is shipped to
      (`<base>/<version>/model.tflite`, the Pusher's version); None leaves the
      TFLite conversion out of the pipeline.
    tflite_max_accuracy_drop: largest top-1 accuracy drop (points) of the
      int8 model against the SavedModel for it to be shipped.
    model_signing_key: an ECDSA private key file the Pusher and the
      TFLiteConverter sign every version they push with (OpenSSF model
      signing, in staging, before it is visible); None pushes unsigned
      versions.
    train_hash_buckets: hash buckets of the train split.
    eval_hash_buckets: hash buckets of the eval split.
    slice_features: features the Evaluator slices by (each, and all crossed);
      None: the data contract's (`contract`, read from `schema_path`).
    label_key: the label feature; None: the data contract's.
    trainer_custom_config: passed to `run_fn` as `fn_args.custom_config`.
    enable_cache: reuse outputs of unchanged components.
    metadata_connection_config: ML Metadata connection (None: the runner's
      default, as on Kubeflow).
    beam_pipeline_args: arguments of the components' Beam pipelines.

  Returns:
    The TFX pipeline.

  Raises:
    ValueError: for settings that cannot work.
  """
  _check_steps_args("train_args", train_args, tfx.proto.TrainArgs)
  _check_steps_args("eval_args", eval_args, tfx.proto.EvalArgs)
  if "{SPAN}" not in input_pattern:
    raise ValueError(
      f"input_pattern must contain {{SPAN}} to read span directories, got {input_pattern!r}."
    )
  if span is not None and span < 1:
    raise ValueError(f"span must be a span number of at least 1, got {span}.")
  if slice_features is None or label_key is None:
    data_contract = contract.load(schema_path)
    slice_features = data_contract.slice_features if slice_features is None else slice_features
    label_key = label_key or data_contract.label.name

  # Reads the latest span's TFRecords and splits them train:eval by hash.
  example_gen = tfx.components.ImportExampleGen(
    input_base=data_root,
    input_config=tfx.proto.Input(
      splits=[tfx.proto.Input.Split(name="single_split", pattern=input_pattern)]
    ),
    # A pinned span instead of the latest one.
    range_config=(
      tfx.proto.RangeConfig(
        static_range=tfx.proto.StaticRange(start_span_number=span, end_span_number=span)
      )
      if span is not None
      else None
    ),
    output_config=tfx.proto.Output(
      split_config=tfx.proto.SplitConfig(
        splits=[
          tfx.proto.SplitConfig.Split(name="train", hash_buckets=train_hash_buckets),
          tfx.proto.SplitConfig.Split(name="eval", hash_buckets=eval_hash_buckets),
        ]
      )
    ),
  )

  # Computes statistics of every split for validation and reports.
  statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])

  # Imports the curated, reviewed schema instead of inferring one.
  schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)

  # Checks the statistics against the schema.
  example_validator = tfx.components.ExampleValidator(
    statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
  )

  # Stops the run before training on anomalies or drift from the previous span.
  anomaly_gate = AnomalyGate(
    examples=example_gen.outputs["examples"],
    statistics=statistics_gen.outputs["statistics"],
    schema=schema_gen.outputs["schema"],
    anomalies=example_validator.outputs["anomalies"],
    input_base=data_root,
    input_pattern=input_pattern,
    tolerated_anomalies=tolerated_anomalies,
    report_dir=report_dir,
  )

  # Trains the Transformer under MultiWorkerMirroredStrategy.
  trainer = tfx.components.Trainer(
    run_fn=run_fn,
    examples=example_gen.outputs["examples"],
    schema=schema_gen.outputs["schema"],
    train_args=train_args,
    eval_args=eval_args,
    custom_config=dict(trainer_custom_config or {}),
  )
  # The Trainer consumes no output of the gate, so the order is explicit.
  trainer.add_upstream_node(anomaly_gate)

  # Copies the model serving now (the highest complete version under the push
  # destination), the baseline a new model must be no worse than; on a first
  # run there is none.
  serving_baseline = ServingBaseline(serving_model_dir=serving_model_dir)

  # Evaluates per slice with TFMA and blesses the model if it passes.
  evaluator = Evaluator(
    examples=example_gen.outputs["examples"],
    model=trainer.outputs["model"],
    baseline_model=serving_baseline.outputs["baseline_model"],
    eval_config=_eval_config(
      label_key, accuracy_threshold, accuracy_change_threshold, slice_features
    ),
  )

  # Canary: serves the blessed model in a model server process and checks its
  # answers; the Pusher refuses a model it does not bless.
  infra_validator = InfraValidator(
    model=trainer.outputs["model"],
    examples=example_gen.outputs["examples"],
    model_blessing=evaluator.outputs["blessing"],
  )

  # Pushes a blessed model to the base path TensorFlow Serving watches, unless
  # it is the version serving already.
  pusher = Pusher(
    model=trainer.outputs["model"],
    model_blessing=evaluator.outputs["blessing"],
    infra_blessing=infra_validator.outputs["blessing"],
    model_signing_key=model_signing_key,
    push_destination=tfx.proto.PushDestination(
      filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)
    ),
  )

  components = [
    example_gen,
    statistics_gen,
    schema_gen,
    example_validator,
    anomaly_gate,
    trainer,
    serving_baseline,
    evaluator,
    infra_validator,
    pusher,
  ]
  if tflite_push_base_directory:
    # Converts the trained model to int8 TFLite, checks size, accuracy and
    # latency against the SavedModel, and ships it under the Pusher's version.
    tflite_converter = TFLiteConverter(
      model=trainer.outputs["model"],
      examples=example_gen.outputs["examples"],
      pushed_model=pusher.outputs["pushed_model"],
      push_base_directory=tflite_push_base_directory,
      max_accuracy_drop=tflite_max_accuracy_drop,
      model_signing_key=model_signing_key,
    )
    components.append(tflite_converter)

  return tfx.dsl.Pipeline(
    pipeline_name=pipeline_name,
    pipeline_root=pipeline_root,
    components=components,
    enable_cache=enable_cache,
    metadata_connection_config=metadata_connection_config,
    beam_pipeline_args=list(beam_pipeline_args or []),
  )
