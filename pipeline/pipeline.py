"""Composition of the next_category TFX pipeline.

`create_pipeline` is pure: every setting is a parameter, so the Beam, local and
Kubeflow runners build exactly the same pipeline from their own flags.
"""

from typing import List
from typing import Optional
from typing import Sequence

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from next_category import contract
from next_category.components.anomaly_gate.component import AnomalyGate
from next_category.components.evaluator.component import Evaluator
from next_category.components.infra_validator.component import InfraValidator
from next_category.components.pusher.component import Pusher
from next_category.components.serving_baseline.component import ServingBaseline
from next_category.components.tflite_converter.component import TFLiteConverter
from next_category.pipeline import configs
from next_category.pipeline import settings

# The Evaluator's own metrics (`components/evaluator/metrics.py`).
_METRICS_MODULE = "next_category.components.evaluator.metrics"


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
          # Top-1 and top-3 as Keras's sparse_categorical_accuracy and
          # sparse_top_k_categorical_accuracy, computed in NumPy rather than by
          # TFMA's Keras metric wrapper (about half the Evaluator's time).
          tfma.MetricConfig(
            class_name="SparseTopKAccuracy",
            module=_METRICS_MODULE,
            config='"top_k": 1, "name": "sparse_categorical_accuracy"',
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
            class_name="SparseTopKAccuracy",
            module=_METRICS_MODULE,
            config='"top_k": 3, "name": "top_3_accuracy"',
          ),
          # For the run report.
          tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
        ]
      )
    ],
  )


# The splits ImportExampleGen writes.
_SPLITS = ("train", "eval")


def _train_args(training: settings.TrainingSettings):
  """The Trainer's `train_args`: the steps as a proto, or the runtime parameter as it is."""
  value = training.train_steps
  if isinstance(value, tfx.dsl.experimental.RuntimeParameter):
    # KubeflowV2 binds it to a pipeline input holding the whole TrainArgs as JSON.
    if value.ptype is not str:
      raise ValueError(
        f"The train_steps runtime parameter {value.name!r} must have ptype str (the whole "
        f"TrainArgs as JSON), got {value.ptype.__name__}."
      )
    return value
  if value is None:
    # No num_steps: the Trainer trains for train_epochs (components/trainer/budget.py).
    return tfx.proto.TrainArgs()
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(
      "training.train_steps must be a positive number of steps, None or a RuntimeParameter, "
      f"got {value!r}."
    )
  return tfx.proto.TrainArgs(num_steps=value)


def _check_settings(data: settings.DataSettings, training: settings.TrainingSettings) -> None:
  if "{SPAN}" not in data.input_pattern:
    raise ValueError(
      f"input_pattern must contain {{SPAN}} to read span directories, got {data.input_pattern!r}."
    )
  if data.span is not None and data.span < 1:
    raise ValueError(f"span must be a span number of at least 1, got {data.span}.")
  if training.eval_steps < 1:
    raise ValueError(f"training.eval_steps must be positive, got {training.eval_steps}.")
  if training.train_epochs < 1:
    raise ValueError(f"training.train_epochs must be positive, got {training.train_epochs}.")
  if training.tune:
    if not training.tuner_fn:
      raise ValueError("tune needs tuner_fn, the dotted path of the Tuner's tuner_fn.")
    if training.tune_trials < 1:
      raise ValueError(f"tune_trials must be at least 1, got {training.tune_trials}.")
    if training.tune_train_steps < 1:
      raise ValueError(f"tune_train_steps must be at least 1, got {training.tune_train_steps}.")


def create_pipeline(
  paths: settings.Paths,
  serving: settings.ServingSettings,
  data: settings.DataSettings = settings.DataSettings(),
  training: settings.TrainingSettings = settings.TrainingSettings(),
  gates: settings.GateSettings = settings.GateSettings(),
  pipeline_name: str = configs.PIPELINE_NAME,
  enable_cache: bool = True,
  metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
  beam_pipeline_args: Optional[List[str]] = None,
) -> tfx.dsl.Pipeline:
  """Creates the next_category pipeline.

  Args:
    paths: where it reads and writes (`settings.Paths`).
    serving: where and how a blessed model is pushed.
    data: which examples, their split, label and slices.
    training: the Trainer's `run_fn`, steps and custom config.
    gates: what stops the run or the model.
    pipeline_name: the pipeline's name in ML Metadata.
    enable_cache: reuse outputs of unchanged components.
    metadata_connection_config: ML Metadata connection (None: the runner's
      default, as on Kubeflow).
    beam_pipeline_args: arguments of the components' Beam pipelines.

  Returns:
    The TFX pipeline.

  Raises:
    ValueError: for settings that cannot work.
  """
  _check_settings(data, training)
  train_args = _train_args(training)
  eval_args = tfx.proto.EvalArgs(num_steps=training.eval_steps)
  slice_features, label_key = data.slice_features, data.label_key
  if slice_features is None or label_key is None:
    data_contract = contract.load(paths.schema_path)
    slice_features = data_contract.slice_features if slice_features is None else slice_features
    label_key = label_key or data_contract.label.name
  data_root, input_pattern = paths.data_root, data.input_pattern
  span, schema_path = data.span, paths.schema_path
  serving_model_dir, model_signing_key = serving.serving_model_dir, serving.model_signing_key

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
          tfx.proto.SplitConfig.Split(name="train", hash_buckets=data.train_hash_buckets),
          tfx.proto.SplitConfig.Split(name="eval", hash_buckets=data.eval_hash_buckets),
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
    tolerated_anomalies=gates.tolerated_anomalies,
    report_dir=paths.report_dir,
  )

  # run_fn reads the budget with the rest of its settings.
  trainer_config = {**training.custom_config, "train_epochs": training.train_epochs}
  tuner = None
  if training.tune:
    # Searches the preset's hyperparameters with KerasTuner: `tune_trials`
    # trainings of `tune_train_steps` steps each, ranked by eval accuracy.
    tuner = tfx.components.Tuner(
      tuner_fn=training.tuner_fn,
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      train_args=tfx.proto.TrainArgs(num_steps=training.tune_train_steps),
      eval_args=eval_args,
      custom_config={**trainer_config, "tune_trials": training.tune_trials},
    )
    # Like the Trainer, it waits for the gate.
    tuner.add_upstream_node(anomaly_gate)

  # Trains the Transformer under MultiWorkerMirroredStrategy (with the Tuner's
  # best hyperparameters over the preset's, when it ran).
  trainer = tfx.components.Trainer(
    run_fn=training.run_fn,
    examples=example_gen.outputs["examples"],
    schema=schema_gen.outputs["schema"],
    train_args=train_args,
    eval_args=eval_args,
    hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
    custom_config=trainer_config,
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
      label_key, gates.accuracy_threshold, gates.accuracy_change_threshold, slice_features
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
    *([tuner] if tuner else []),
    trainer,
    serving_baseline,
    evaluator,
    infra_validator,
    pusher,
  ]
  if serving.tflite_push_base_directory:
    # Converts the trained model to int8 TFLite, checks size, accuracy and
    # latency against the SavedModel, and ships it under the Pusher's version.
    tflite_converter = TFLiteConverter(
      model=trainer.outputs["model"],
      examples=example_gen.outputs["examples"],
      pushed_model=pusher.outputs["pushed_model"],
      push_base_directory=serving.tflite_push_base_directory,
      max_accuracy_drop=gates.tflite_max_accuracy_drop,
      model_signing_key=model_signing_key,
    )
    components.append(tflite_converter)

  return tfx.dsl.Pipeline(
    pipeline_name=pipeline_name,
    pipeline_root=paths.pipeline_root,
    components=components,
    enable_cache=enable_cache,
    metadata_connection_config=metadata_connection_config,
    beam_pipeline_args=list(beam_pipeline_args or []),
  )
