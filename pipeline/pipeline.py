"""Composition of the next_category TFX pipeline.

`create_pipeline` is pure: every setting is a parameter, so the Beam, local and
Kubeflow runners build exactly the same pipeline from their own flags.
"""

from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.anomaly_gate.component import AnomalyGate
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
                  # Ignored on the first run, when no model is
                  # blessed yet.
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


def create_pipeline(
  pipeline_name: str,
  pipeline_root: str,
  data_root: str,
  schema_path: str,
  run_fn: str,
  serving_model_dir: str,
  train_steps: int,
  eval_steps: int,
  accuracy_threshold: float,
  accuracy_change_threshold: float = -1e-10,
  input_pattern: str = "span-{SPAN}/*",
  span: Optional[int] = None,
  tolerated_anomalies: Sequence[str] = (),
  report_dir: Optional[str] = None,
  tflite_push_base_directory: Optional[str] = None,
  tflite_max_accuracy_drop: float = 1.0,
  train_hash_buckets: int = 4,
  eval_hash_buckets: int = 1,
  slice_features: Sequence[str] = ("user_segment", "city_tier"),
  label_key: str = "label",
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
    train_steps: Trainer training steps.
    eval_steps: Trainer evaluation steps.
    accuracy_threshold: minimum eval top-1 accuracy for blessing.
    accuracy_change_threshold: minimum accuracy difference to the latest
      blessed model (a small negative number means "no worse").
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
    train_hash_buckets: hash buckets of the train split.
    eval_hash_buckets: hash buckets of the eval split.
    slice_features: features the Evaluator slices by (each, and all crossed).
    label_key: the label feature.
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
  if train_steps < 1 or eval_steps < 1:
    raise ValueError(
      f"train_steps and eval_steps must be positive, got {train_steps} and {eval_steps}."
    )
  if "{SPAN}" not in input_pattern:
    raise ValueError(
      f"input_pattern must contain {{SPAN}} to read span directories, got {input_pattern!r}."
    )
  if span is not None and span < 1:
    raise ValueError(f"span must be a span number of at least 1, got {span}.")

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
    train_args=tfx.proto.TrainArgs(num_steps=train_steps),
    eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
    custom_config=dict(trainer_custom_config or {}),
  )
  # The Trainer consumes no output of the gate, so the order is explicit.
  trainer.add_upstream_node(anomaly_gate)

  # Finds the latest blessed model, the baseline a new model must not lose to.
  latest_blessed_model_resolver = tfx.dsl.Resolver(
    strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
    model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
    model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id("latest_blessed_model_resolver")

  # Evaluates per slice with TFMA and blesses the model if it passes.
  evaluator = tfx.components.Evaluator(
    examples=example_gen.outputs["examples"],
    model=trainer.outputs["model"],
    baseline_model=latest_blessed_model_resolver.outputs["model"],
    eval_config=_eval_config(
      label_key, accuracy_threshold, accuracy_change_threshold, slice_features
    ),
  )

  # Pushes a blessed model to the base path TensorFlow Serving watches.
  pusher = tfx.components.Pusher(
    model=trainer.outputs["model"],
    model_blessing=evaluator.outputs["blessing"],
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
    latest_blessed_model_resolver,
    evaluator,
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
