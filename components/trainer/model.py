"""Trainer module: trains the next-category Transformer and exports it for serving.

The TFX Trainer imports this module and calls `run_fn`. Training always runs
under `tf.distribute.MultiWorkerMirroredStrategy`: with TF_CONFIG set (by
Kubernetes or the Training Operator) this process joins that cluster; with
`num_workers` > 1 and no TF_CONFIG it starts a local cluster of that many
worker processes; otherwise it is a single local worker.
"""

import json
import os
from typing import Dict
from typing import List
from typing import Optional

import tensorflow as tf
from tfx import v1 as tfx

from components.trainer import constants
from components.trainer import features
from components.trainer import layers
from components.trainer import multi_worker
from components.trainer import presets
from components.trainer import progress_callback
from serving import warmup

# Examples buffered for shuffling; the default dataset's train split fits.
_SHUFFLE_BUFFER = 50_000
# Serialized examples parsed per call: batched parsing is much faster.
_PARSE_BATCH = 512
# Histories are batched with others of similar length and padded only to the
# longest in their batch: most histories are far shorter than the maximum,
# and the encoder's cost grows with the padded length.
_LENGTH_BUCKET_BOUNDARIES = (9, 17, 33)
# Requests written to the SavedModel's assets.extra for TensorFlow Serving warmup.
_WARMUP_EXAMPLES = 8


def input_fn(
  file_pattern: List[str],
  batch_size: int,
  shuffle: bool,
  seed: Optional[int] = None,
  cache: bool = True,
) -> tf.data.Dataset:
  """Reads GZIP TFRecords of tf.Example into repeated `(inputs, label)` batches.

  Parsing runs batched and in parallel; parsed examples are cached in memory
  (when `cache`) so epochs after the first never touch the files again.
  Batches group histories of similar length (see `_LENGTH_BUCKET_BOUNDARIES`),
  so `item_history` is [batch, longest history in the batch], right-padded.

  Args:
    file_pattern: file patterns of the split (as FnArgs.train_files).
    batch_size: the global batch size.
    shuffle: shuffle examples (training) or keep file order (evaluation).
    seed: shuffle seed.
    cache: keep parsed examples in memory after the first pass.

  Returns:
    An infinite `tf.data.Dataset` of `(dict of model inputs, label)` batches.

  Raises:
    FileNotFoundError: if the patterns match no file.
  """
  files = sorted(f for pattern in file_pattern for f in tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No training data files match {file_pattern}.")
  dataset = tf.data.TFRecordDataset(
    files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE
  )
  dataset = (
    dataset.batch(_PARSE_BATCH)
    .map(
      lambda serialized: features.parse_and_encode(serialized, with_label=True, pad=False),
      num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=not shuffle,
    )
    .unbatch()
  )
  # Unbatched ragged rows carry a RaggedTensorSpec although they are plain
  # 1-D tensors; passing them through a map makes them dense, which
  # bucket_by_sequence_length needs.
  dataset = dataset.map(lambda inputs, label: (dict(inputs), label))
  # Workers of a cluster read every file and keep their share of the
  # examples: a split may have fewer files than there are workers.
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  dataset = dataset.with_options(options)
  if cache:
    dataset = dataset.cache()
  if shuffle:
    dataset = dataset.shuffle(_SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.repeat().bucket_by_sequence_length(
    element_length_func=lambda inputs, _: tf.shape(inputs[constants.ITEM_HISTORY_KEY])[0],
    bucket_boundaries=list(_LENGTH_BUCKET_BOUNDARIES),
    bucket_batch_sizes=[batch_size] * (len(_LENGTH_BUCKET_BOUNDARIES) + 1),
    drop_remainder=True,
  )
  return dataset.prefetch(tf.data.AUTOTUNE)


def build_model(config: presets.TransformerConfig) -> tf.keras.Model:
  """Builds the compiled next-category Transformer.

  Inputs are the encoded features (see `features.encode`): `item_history`
  [batch, length] int64 ids (0 = padding), `user_segment` and `city_tier`
  [batch] int64 vocabulary indices. The output is `probabilities`
  [batch, NUM_CATEGORIES].
  """
  item_history = tf.keras.Input(shape=(None,), dtype=tf.int64, name=constants.ITEM_HISTORY_KEY)
  user_segment = tf.keras.Input(shape=(), dtype=tf.int64, name=constants.USER_SEGMENT_KEY)
  city_tier = tf.keras.Input(shape=(), dtype=tf.int64, name=constants.CITY_TIER_KEY)

  padding_mask = tf.math.not_equal(item_history, 0)
  x = layers.ItemHistoryEmbedding(
    vocabulary_size=config.vocabulary_size,
    max_length=config.max_history_length,
    embedding_dim=config.hidden_dim,
    name="item_history_embedding",
  )(item_history)
  x = tf.keras.layers.Dropout(config.dropout)(x)
  for i in range(config.num_layers):
    x = layers.TransformerEncoder(
      intermediate_dim=config.intermediate_dim,
      num_heads=config.num_heads,
      dropout=config.dropout,
      name=f"transformer_encoder_{i}",
    )(x, padding_mask=padding_mask)
  pooled = layers.MaskedMeanPooling(name="pooling")(x, padding_mask=padding_mask)
  # The last row of each context embedding is the out-of-vocabulary bucket.
  segment = tf.keras.layers.Embedding(
    len(constants.USER_SEGMENTS) + 1, config.hidden_dim, name="user_segment_embedding"
  )(user_segment)
  tier = tf.keras.layers.Embedding(
    len(constants.CITY_TIERS) + 1, config.hidden_dim, name="city_tier_embedding"
  )(city_tier)
  x = tf.keras.layers.Concatenate()([pooled, segment, tier])
  x = tf.keras.layers.Dense(config.hidden_dim, activation="relu", name="head")(x)
  x = tf.keras.layers.Dropout(config.dropout)(x)
  probabilities = tf.keras.layers.Dense(
    constants.NUM_CATEGORIES, activation="softmax", name=constants.PROBABILITIES_KEY
  )(x)
  model = tf.keras.Model(
    inputs={
      constants.ITEM_HISTORY_KEY: item_history,
      constants.USER_SEGMENT_KEY: user_segment,
      constants.CITY_TIER_KEY: city_tier,
    },
    outputs=probabilities,
    name="next_category_transformer",
  )
  model.compile(
    optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate),
    loss=tf.keras.losses.SparseCategoricalCrossentropy(),
    metrics=[
      tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
      tf.keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top_3_accuracy"),
    ],
  )
  return model


def make_serving_signatures(
  model: tf.keras.Model,
) -> Dict[str, tf.types.experimental.ConcreteFunction]:
  """The SavedModel's serving signatures.

  `serving_default` takes serialized tf.Examples (label absent), as TensorFlow
  Serving's Predict and TFMA send them. `serving_raw` takes the raw features
  for callers that do not build tf.Examples: `item_history` as a padded
  [batch, length] int64 tensor (0 = padding, on either side; most recent item
  last), `user_segment` and `city_tier` as [batch] strings.
  """

  @tf.function(
    input_signature=[tf.TensorSpec([None], tf.string, name=constants.SERIALIZED_EXAMPLES_KEY)]
  )
  def serve_examples(examples):
    inputs = features.parse_and_encode(examples, with_label=False)
    return {constants.PROBABILITIES_KEY: model(inputs, training=False)}

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None], tf.int64, name=constants.ITEM_HISTORY_KEY),
      tf.TensorSpec([None], tf.string, name=constants.USER_SEGMENT_KEY),
      tf.TensorSpec([None], tf.string, name=constants.CITY_TIER_KEY),
    ]
  )
  def serve_raw(item_history, user_segment, city_tier):
    # Drop padding wherever it is, then pad the way the model was trained.
    history = tf.ragged.boolean_mask(item_history, item_history > 0)
    inputs = features.encode(history, user_segment, city_tier)
    return {constants.PROBABILITIES_KEY: model(inputs, training=False)}

  return {
    "serving_default": serve_examples.get_concrete_function(),
    constants.RAW_SIGNATURE_NAME: serve_raw.get_concrete_function(),
  }


def _warmup_examples(file_pattern: List[str]) -> List[bytes]:
  """A few serialized eval examples without their label, as clients send them."""
  files = sorted(f for pattern in file_pattern for f in tf.io.gfile.glob(pattern))
  examples = []
  for record in tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(_WARMUP_EXAMPLES):
    example = tf.train.Example.FromString(record.numpy())
    del example.features.feature[constants.LABEL_KEY]
    examples.append(example.SerializeToString())
  return examples


def _is_chief(strategy: tf.distribute.Strategy) -> bool:
  resolver = strategy.cluster_resolver
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _model_dir_for_worker(fn_args: tfx.components.FnArgs, strategy: tf.distribute.Strategy) -> str:
  # Every worker must save (saving runs collectives), but only the chief's
  # copy is the real one; the others write beside their logs.
  if _is_chief(strategy):
    return fn_args.serving_model_dir
  task_id = strategy.cluster_resolver.task_id
  return os.path.join(multi_worker.worker_dir(fn_args.model_run_dir, task_id), "model")


def train(fn_args: tfx.components.FnArgs) -> None:
  """Trains and exports the model in this process, as one worker of the strategy.

  `fn_args.custom_config` may hold `preset` (a name in `presets.PRESETS`,
  default "small"), `hparams` (overrides of the preset's fields), `seed` and
  `collective_timeout_seconds`. The preset's
  batch size is the global batch, split across all replicas, so a run gives
  the same updates whatever the number of workers.
  """
  custom_config = fn_args.custom_config or {}
  config = presets.get(custom_config.get("preset", "small"), **custom_config.get("hparams", {}))
  seed = int(custom_config.get("seed", 42))
  tf.keras.utils.set_random_seed(seed)

  strategy = tf.distribute.MultiWorkerMirroredStrategy(
    communication_options=tf.distribute.experimental.CommunicationOptions(
      timeout_seconds=float(custom_config.get("collective_timeout_seconds", 600))
    )
  )
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ValueError(
      f"The batch size {config.batch_size} must be divisible by the {replicas} replicas."
    )
  train_dataset = input_fn(fn_args.train_files, config.batch_size, shuffle=True, seed=seed)
  eval_dataset = input_fn(fn_args.eval_files, config.batch_size, shuffle=False)

  with strategy.scope():
    model = build_model(config)

  model_dir = _model_dir_for_worker(fn_args, strategy)
  # Only the chief's logs go to the run directory TensorBoard reads.
  log_dir = fn_args.model_run_dir
  if not _is_chief(strategy):
    log_dir = multi_worker.worker_dir(fn_args.model_run_dir, strategy.cluster_resolver.task_id)
  history = model.fit(
    train_dataset,
    epochs=1,
    steps_per_epoch=fn_args.train_steps,
    validation_data=eval_dataset,
    validation_steps=fn_args.eval_steps,
    callbacks=[
      tf.keras.callbacks.TensorBoard(
        log_dir=log_dir, update_freq=max(1, fn_args.train_steps // 20)
      ),
      # A restarted worker resumes from the last backup instead of step 0.
      tf.keras.callbacks.BackupAndRestore(
        backup_dir=os.path.join(fn_args.model_run_dir, "backup"),
        save_freq=max(1, fn_args.train_steps // 4),
      ),
      *progress_callback.callbacks(fn_args.train_steps, config.batch_size, _is_chief(strategy)),
    ],
    verbose=2,
  )
  # No per-layer traces: the layers are registered and serializable, and tracing them
  # for the SavedModel doubled the export time. Signatures are traced as before.
  model.save(
    model_dir, save_format="tf", signatures=make_serving_signatures(model), save_traces=False
  )
  # TensorFlow Serving replays these at load, so the first real request does
  # not pay for tracing and graph optimisation.
  warmup.write_warmup_requests(model_dir, _warmup_examples(fn_args.eval_files))
  if _is_chief(strategy):
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
      json.dump({k: [float(v) for v in values] for k, values in history.history.items()}, f)


# TFX Trainer calls this.
def run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Trains the model and writes the serving SavedModel.

  `fn_args.custom_config` may hold, besides what `train` reads, `num_workers`
  (default 1) and `worker_timeout_seconds` (default 3600) for a local cluster.
  """
  custom_config = fn_args.custom_config or {}
  # Fail on a bad preset here, before any worker process starts.
  presets.get(custom_config.get("preset", "small"), **custom_config.get("hparams", {}))
  num_workers = int(custom_config.get("num_workers", 1))
  if num_workers < 1:
    raise ValueError(f"num_workers must be at least 1, got {num_workers}.")
  if num_workers > 1 and "TF_CONFIG" not in os.environ:
    multi_worker.run_local_cluster(
      {
        "train_files": list(fn_args.train_files),
        "eval_files": list(fn_args.eval_files),
        "train_steps": fn_args.train_steps,
        "eval_steps": fn_args.eval_steps,
        "serving_model_dir": fn_args.serving_model_dir,
        "model_run_dir": fn_args.model_run_dir,
        "custom_config": dict(custom_config),
      },
      num_workers=num_workers,
      timeout_seconds=float(custom_config.get("worker_timeout_seconds", 3600)),
    )
    return
  train(fn_args)
