"""Trainer module: trains the next-category Transformer and exports it for serving.

The TFX Trainer imports this module and calls `run_fn`, its one public
function. The features, their vocabularies, the label and its classes come
from the data contract, read from the schema the Trainer is given
(`fn_args.schema_path`). Training always runs under
`tf.distribute.MultiWorkerMirroredStrategy`: with TF_CONFIG set (by Kubernetes
or the Training Operator) this process joins that cluster; with `num_workers`
> 1 and no TF_CONFIG it starts a local cluster of that many worker processes,
each running `_train` (named by dotted path, so `multi_worker` imports nothing
from here); otherwise it is a single local worker.
"""

import json
import os
from typing import List
from typing import Optional

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx

from next_category import contract
from next_category.components.trainer import budget as training_budget
from next_category.components.trainer import cooccurrence
from next_category.components.trainer import export
from next_category.components.trainer import features
from next_category.components.trainer import hyperparameters
from next_category.components.trainer import layers
from next_category.components.trainer import multi_worker
from next_category.components.trainer import presets
from next_category.components.trainer import progress_callback

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
# The function each worker of a local cluster runs.
_TRAIN_FN = "next_category.components.trainer.model._train"
# The learning rate ends its cosine decay at this fraction of the peak.
_FINAL_LEARNING_RATE_FRACTION = 0.05
# The frozen co-occurrence rows (see `_build_model`).
_COOCCURRENCE_LAYER = "item_cooccurrence"
# Train examples read for the co-occurrence vectors at most: counts of this
# many histories already place every item that occurs often enough to matter.
_COOCCURRENCE_EXAMPLES = 400_000
# custom_config keys that override the contract's rules (README: Data contract).
_CONTRACT_OVERRIDES = ("label_feature", "sequence_feature", "slice_features")


def _input_fn(
  data_contract: contract.DataContract,
  file_pattern: List[str],
  batch_size: int,
  shuffle: bool,
  seed: Optional[int] = None,
  cache: bool = True,
  repeat: bool = True,
) -> tf.data.Dataset:
  """Reads GZIP TFRecords of tf.Example into repeated `(inputs, label)` batches.

  Parsing runs batched and in parallel; parsed examples are cached in memory
  (when `cache`) so epochs after the first never touch the files again.
  Batches group sequences of similar length (see `_LENGTH_BUCKET_BOUNDARIES`),
  so the sequence input is [batch, longest sequence in the batch], right-padded.

  Args:
    data_contract: the features and the label.
    file_pattern: file patterns of the split (as FnArgs.train_files).
    batch_size: the global batch size.
    shuffle: shuffle examples (training) or keep file order (evaluation).
    seed: shuffle seed.
    cache: keep parsed examples in memory after the first pass.
    repeat: read the split again and again; False: once, with the last
      partial batches kept.

  Returns:
    A `tf.data.Dataset` of `(dict of model inputs, label)` batches, infinite
    when `repeat`.

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
      lambda serialized: features.parse_and_encode(
        data_contract, serialized, with_label=True, pad=False
      ),
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
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.bucket_by_sequence_length(
    element_length_func=lambda inputs, _: tf.shape(inputs[data_contract.sequence.name])[0],
    bucket_boundaries=list(_LENGTH_BUCKET_BOUNDARIES),
    bucket_batch_sizes=[batch_size] * (len(_LENGTH_BUCKET_BOUNDARIES) + 1),
    drop_remainder=repeat,
  )
  return dataset.prefetch(tf.data.AUTOTUNE)


def _learning_rate(
  config: presets.TransformerConfig, budget: Optional[training_budget.TrainingBudget]
):
  """The preset's learning rate, scheduled over the budget (warmup, then cosine decay)."""
  if budget is None:
    return config.learning_rate
  decay_steps = max(1, budget.total_steps - budget.warmup_steps)
  return tf.keras.optimizers.schedules.CosineDecay(
    initial_learning_rate=config.learning_rate / 10
    if budget.warmup_steps
    else config.learning_rate,
    decay_steps=decay_steps,
    alpha=_FINAL_LEARNING_RATE_FRACTION,
    warmup_target=config.learning_rate if budget.warmup_steps else None,
    warmup_steps=budget.warmup_steps,
  )


def _loss(label_smoothing: float, num_classes: int):
  """Cross-entropy of integer labels, smoothed when `label_smoothing` > 0."""
  if not label_smoothing:
    return tf.keras.losses.SparseCategoricalCrossentropy()

  def smoothed_cross_entropy(labels, probabilities):
    targets = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes)
    return tf.keras.losses.categorical_crossentropy(
      targets, probabilities, label_smoothing=label_smoothing
    )

  return smoothed_cross_entropy


def _build_model(
  config: presets.TransformerConfig,
  data_contract: contract.DataContract,
  budget: Optional[training_budget.TrainingBudget] = None,
  item_vectors: Optional[np.ndarray] = None,
) -> tf.keras.Model:
  """Builds the compiled next-category Transformer.

  Inputs are the encoded features (see `features.encode`), named after them:
  the sequence [batch, length] int64 ids (0 = padding) and each context
  feature [batch] int64 vocabulary indices. The output is `probabilities`
  [batch, num_classes]. Id range, sequence length, vocabularies and classes
  come from the contract. The learning rate warms up linearly to the
  preset's over `budget.warmup_steps`, then decays along a cosine to 5% of it
  at `budget.total_steps`; without a budget it is constant. With the
  preset's `cooccurrence_dim`, `item_vectors` ([ids, cooccurrence_dim], from
  `cooccurrence.item_vectors`) are the frozen co-occurrence rows; None leaves
  them at their random start (an untrained model).
  """
  sequence = data_contract.sequence
  ids = tf.keras.Input(shape=(None,), dtype=tf.int64, name=sequence.name)
  context = [tf.keras.Input(shape=(), dtype=tf.int64, name=f.name) for f in data_contract.context]

  padding_mask = tf.math.not_equal(ids, 0)
  embedded_items = layers.ItemHistoryEmbedding(
    vocabulary_size=sequence.max_id + 1,
    max_length=sequence.max_length,
    embedding_dim=config.hidden_dim,
    name=f"{sequence.name}_embedding",
  )(ids)
  cooccurrence_rows = None
  if config.cooccurrence_dim:
    # Frozen: what the co-occurrences say about a rare item is not
    # overwritten by the few histories it ends.
    cooccurrence_rows = tf.keras.layers.Embedding(
      sequence.max_id + 1,
      config.cooccurrence_dim,
      trainable=False,
      name=_COOCCURRENCE_LAYER,
    )
    projected = tf.keras.layers.Dense(
      config.hidden_dim, use_bias=False, name="cooccurrence_projection"
    )(cooccurrence_rows(ids))
    embedded_items = tf.keras.layers.Add(name="items_and_cooccurrences")(
      [embedded_items, projected]
    )
  if config.neighbour_loss_weight:
    embedded_items = layers.NeighbourContrast(
      weight=config.neighbour_loss_weight, name="neighbour_contrast"
    )(embedded_items, padding_mask=padding_mask)
  x = tf.keras.layers.Dropout(config.dropout)(embedded_items)
  for i in range(config.num_layers):
    x = layers.TransformerEncoder(
      intermediate_dim=config.intermediate_dim,
      num_heads=config.num_heads,
      dropout=config.dropout,
      name=f"transformer_encoder_{i}",
    )(x, padding_mask=padding_mask)
  # Three views of the sequence: the encoder at the most recent position
  # (what comes next depends most on it), the encoder's mean, and the mean of
  # the embeddings themselves, a bag of items as fastText pools words, which
  # is what long documents need and a small dataset learns quickly.
  pooled = [
    layers.LastPositionPooling(name="last_position")(x, padding_mask=padding_mask),
    layers.MaskedMeanPooling(name="pooling")(x, padding_mask=padding_mask),
    layers.MaskedMeanPooling(name="bag_of_items")(embedded_items, padding_mask=padding_mask),
  ]
  # The last row of each context embedding is the out-of-vocabulary bucket.
  embedded = [
    tf.keras.layers.Embedding(
      len(feature.vocabulary) + 1, config.hidden_dim, name=f"{feature.name}_embedding"
    )(index)
    for feature, index in zip(data_contract.context, context, strict=True)
  ]
  x = tf.keras.layers.Concatenate()(pooled + embedded)
  x = tf.keras.layers.Dropout(config.dropout)(x)
  x = tf.keras.layers.Dense(config.hidden_dim, activation="relu", name="head")(x)
  x = tf.keras.layers.Dropout(config.dropout)(x)
  deep_logits = tf.keras.layers.Dense(data_contract.label.num_classes, name="deep_logits")(x)
  # The wide half: class logits per item, summed over the history by recency.
  wide_logits = layers.RecencyWeightedBag(
    vocabulary_size=sequence.max_id + 1,
    max_length=sequence.max_length,
    output_dim=data_contract.label.num_classes,
    name="wide_logits",
  )(ids)
  logits = tf.keras.layers.Add(name="logits")([deep_logits, wide_logits])
  probabilities = tf.keras.layers.Softmax(name=export.PROBABILITIES_KEY)(logits)
  model = tf.keras.Model(
    inputs={
      sequence.name: ids,
      **{f.name: i for f, i in zip(data_contract.context, context, strict=True)},
    },
    outputs=probabilities,
    name="next_category_transformer",
  )
  if item_vectors is not None:
    if cooccurrence_rows is None:
      raise ValueError("item_vectors were given, but the preset's cooccurrence_dim is 0.")
    cooccurrence_rows.set_weights([item_vectors])
  model.compile(
    optimizer=tf.keras.optimizers.Adam(
      learning_rate=_learning_rate(config, budget), weight_decay=config.weight_decay or None
    ),
    loss=_loss(config.label_smoothing, data_contract.label.num_classes),
    metrics=[
      tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
      tf.keras.metrics.SparseTopKCategoricalAccuracy(
        k=min(3, data_contract.label.num_classes), name="top_3_accuracy"
      ),
    ],
  )
  return model


def _item_vectors(
  config: presets.TransformerConfig, data_contract: contract.DataContract, file_pattern: List[str]
) -> Optional[np.ndarray]:
  """The co-occurrence vectors of the split's histories, or None without `cooccurrence_dim`."""
  if not config.cooccurrence_dim:
    return None
  histories = (
    _input_fn(data_contract, file_pattern, _PARSE_BATCH, shuffle=False, cache=False, repeat=False)
    .take(-(-_COOCCURRENCE_EXAMPLES // _PARSE_BATCH))
    .map(lambda inputs, _: inputs[data_contract.sequence.name])
  )
  return cooccurrence.item_vectors(
    histories.as_numpy_iterator(), data_contract.sequence.max_id + 1, config.cooccurrence_dim
  )


def _count_examples(file_pattern: List[str]) -> int:
  """The number of records in the files (one pass over them, without parsing)."""
  files = sorted(f for pattern in file_pattern for f in tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No training data files match {file_pattern}.")
  records = tf.data.TFRecordDataset(
    files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE
  )
  return int(records.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def _warmup_examples(label: str, file_pattern: List[str]) -> List[bytes]:
  """A few serialized eval examples without their label, as clients send them."""
  files = sorted(f for pattern in file_pattern for f in tf.io.gfile.glob(pattern))
  examples = []
  for record in tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(_WARMUP_EXAMPLES):
    example = tf.train.Example.FromString(record.numpy())
    del example.features.feature[label]
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


def _data_contract(fn_args: tfx.components.FnArgs) -> contract.DataContract:
  """The contract of the Trainer's schema, with any overrides from `custom_config`."""
  if not fn_args.schema_path:
    raise ValueError(
      "The Trainer was given no schema: pass schema= to the Trainer component. The model's "
      "features, vocabularies and classes are read from it."
    )
  custom_config = fn_args.custom_config or {}
  return contract.load(
    fn_args.schema_path, **{k: custom_config[k] for k in _CONTRACT_OVERRIDES if k in custom_config}
  )


def _train(fn_args: tfx.components.FnArgs) -> None:
  """Trains and exports the model in this process, as one worker of the strategy.

  `fn_args.custom_config` may hold `preset` (a name in `presets.PRESETS`,
  default "small"), `hparams` (overrides of the preset's fields), `seed`,
  `train_epochs` (the budget when `fn_args.train_steps` is None; see `budget`),
  `collective_timeout_seconds` and the contract overrides `label_feature`,
  `sequence_feature`, `slice_features`. The preset's batch size is the global
  batch, split across all replicas, so a run gives the same updates whatever
  the number of workers.
  """
  custom_config = fn_args.custom_config or {}
  config = presets.get(custom_config.get("preset", "small"), **custom_config.get("hparams", {}))
  data_contract = _data_contract(fn_args)
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
  train_epochs = custom_config.get("train_epochs")
  budget = training_budget.plan(
    _count_examples(fn_args.train_files),
    config.batch_size,
    train_epochs=int(train_epochs) if train_epochs else None,
    train_steps=fn_args.train_steps,
  )
  # Validation reads the eval split at most once (a small split is not
  # re-read to make up `eval_steps`).
  eval_batches = max(1, -(-_count_examples(fn_args.eval_files) // config.batch_size))
  validation_steps = min(fn_args.eval_steps or eval_batches, eval_batches)
  train_dataset = _input_fn(
    data_contract, fn_args.train_files, config.batch_size, shuffle=True, seed=seed
  )
  eval_dataset = _input_fn(data_contract, fn_args.eval_files, config.batch_size, shuffle=False)

  item_vectors = _item_vectors(config, data_contract, fn_args.train_files)
  with strategy.scope():
    model = _build_model(config, data_contract, budget, item_vectors)

  model_dir = _model_dir_for_worker(fn_args, strategy)
  # Only the chief's logs go to the run directory TensorBoard reads.
  log_dir = fn_args.model_run_dir
  if not _is_chief(strategy):
    log_dir = multi_worker.worker_dir(fn_args.model_run_dir, strategy.cluster_resolver.task_id)
  # Keras epochs are validation periods of `budget.validation_every` steps;
  # progress and the run report speak of epochs of the train split.
  early_stopping = tf.keras.callbacks.EarlyStopping(
    monitor="val_loss", patience=budget.patience, restore_best_weights=True
  )
  history = model.fit(
    train_dataset,
    epochs=budget.periods,
    steps_per_epoch=budget.validation_every,
    validation_data=eval_dataset,
    validation_steps=validation_steps,
    callbacks=[
      tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=max(1, budget.total_steps // 20)),
      # A restarted worker resumes from the last backup instead of step 0.
      tf.keras.callbacks.BackupAndRestore(
        backup_dir=os.path.join(fn_args.model_run_dir, "backup"),
      ),
      early_stopping,
      *progress_callback.callbacks(budget, config.batch_size, _is_chief(strategy)),
    ],
    verbose=2,
  )
  val_losses = history.history.get("val_loss", [])
  periods_run = len(val_losses)
  best_period = int(min(range(periods_run), key=val_losses.__getitem__)) + 1 if val_losses else 0
  stopping = training_budget.StoppingPoint(
    budget=budget,
    steps_run=periods_run * budget.validation_every,
    best_step=best_period * budget.validation_every,
    stopped_early=periods_run < budget.periods,
  )
  # TensorFlow Serving replays the warmup requests at load, so the first real
  # request does not pay for tracing and graph optimisation.
  export.export_saved_model(
    model,
    data_contract,
    model_dir,
    warmup_examples=_warmup_examples(data_contract.label.name, fn_args.eval_files),
  )
  if _is_chief(strategy):
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
      json.dump({k: [float(v) for v in values] for k, values in history.history.items()}, f)
    training_budget.write_stopping_point(fn_args.model_run_dir, stopping)


# TFX Trainer calls this.
def run_fn(fn_args: tfx.components.FnArgs) -> None:
  """Trains the model and writes the serving SavedModel.

  `fn_args.custom_config` may hold, besides what `_train` reads, `num_workers`
  (default 1) and `worker_timeout_seconds` (default 3600) for a local cluster.

  Raises:
    ValueError: for a bad preset, worker count or schema, before training.
  """
  # The Tuner's best values, when the Trainer was given them, override the preset's.
  fn_args.custom_config = hyperparameters.tuned_custom_config(
    fn_args.custom_config, fn_args.hyperparameters
  )
  custom_config = fn_args.custom_config
  # Fail on a bad preset or schema here, before any worker process starts.
  presets.get(custom_config.get("preset", "small"), **custom_config.get("hparams", {}))
  _data_contract(fn_args)
  num_workers = int(custom_config.get("num_workers", 1))
  if num_workers < 1:
    raise ValueError(f"num_workers must be at least 1, got {num_workers}.")
  if num_workers > 1 and "TF_CONFIG" not in os.environ:
    multi_worker.run_local_cluster(
      _TRAIN_FN,
      {
        "train_files": list(fn_args.train_files),
        "eval_files": list(fn_args.eval_files),
        "train_steps": fn_args.train_steps,
        "eval_steps": fn_args.eval_steps,
        "serving_model_dir": fn_args.serving_model_dir,
        "model_run_dir": fn_args.model_run_dir,
        "schema_path": fn_args.schema_path,
        "custom_config": dict(custom_config),
      },
      num_workers=num_workers,
      timeout_seconds=float(custom_config.get("worker_timeout_seconds", 3600)),
    )
    return
  _train(fn_args)
