"""Tests of the next-category Transformer, its layers and its Trainer module."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
from tfx import v1 as tfx

from next_category import contract
from next_category.components.trainer import export
from next_category.components.trainer import features
from next_category.components.trainer import layers
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.components.trainer.layers import transformer_encoder
from next_category.dataset import clickstream
from tests.testing import model_checks

_TINY = presets.get("tiny")
_CONTRACT = contract.load()


@pytest.fixture(scope="module")
def tiny_model():
  tf.keras.utils.set_random_seed(0)
  return model_lib._build_model(_TINY, _CONTRACT)


def _encode(histories, segments, tiers, pad=True):
  raw = {
    "item_history": tf.ragged.constant(histories, dtype=tf.int64),
    "user_segment": tf.constant(segments),
    "city_tier": tf.constant(tiers),
  }
  return features.encode(_CONTRACT, raw, pad=pad)


def _raw_inputs(histories, segments=None, tiers=None, width=None, left=False):
  width = width or max(len(h) for h in histories)
  padded = np.zeros((len(histories), width), np.int64)
  for row, history in enumerate(histories):
    if left:
      padded[row, width - len(history) :] = history
    else:
      padded[row, : len(history)] = history
  n = len(histories)
  return {
    "item_history": tf.constant(padded),
    "user_segment": tf.constant(segments or ["returning"] * n),
    "city_tier": tf.constant(tiers or ["tier1"] * n),
  }


_HISTORIES = [[5, 17, 3], [9998, 1], list(range(1, 51)), [42]]


def test_output_is_a_distribution_over_categories(tiny_model):
  inputs = _encode(
    _HISTORIES, ["new", "returning", "new", "returning"], ["tier1", "tier2", "tier3", "tier4"]
  )
  assert inputs["item_history"].shape == (4, 50)
  probabilities = tiny_model(inputs).numpy()
  assert probabilities.shape == (4, 10)
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_padding_does_not_change_predictions(tiny_model):
  signatures = export.serving_signatures(tiny_model, _CONTRACT)
  serve_raw = signatures[export.RAW_SIGNATURE_NAME]
  narrow = serve_raw(**_raw_inputs(_HISTORIES))["probabilities"].numpy()
  wide = serve_raw(**_raw_inputs(_HISTORIES, width=70))["probabilities"].numpy()
  left = serve_raw(**_raw_inputs(_HISTORIES, width=60, left=True))["probabilities"].numpy()
  np.testing.assert_allclose(narrow, wide, atol=1e-6)
  np.testing.assert_allclose(narrow, left, atol=1e-6)
  # The Keras model itself: right-padding to any width gives the same output.
  encoded = _encode(_HISTORIES, ["returning"] * 4, ["tier1"] * 4, pad=False)
  dense_20 = dict(encoded, item_history=encoded["item_history"].to_tensor(shape=[None, 50]))
  np.testing.assert_allclose(tiny_model(dense_20).numpy(), narrow, atol=1e-6)


def test_order_changes_predictions(tiny_model):
  serve_raw = export.serving_signatures(tiny_model, _CONTRACT)[export.RAW_SIGNATURE_NAME]
  forward = serve_raw(**_raw_inputs([[5, 17, 3, 800]]))["probabilities"].numpy()
  backward = serve_raw(**_raw_inputs([[800, 3, 17, 5]]))["probabilities"].numpy()
  assert np.abs(forward - backward).max() > 1e-4


def test_unknown_values_use_out_of_vocabulary_rows(tiny_model):
  inputs = _encode([[123456, 7]], ["vip"], ["tier9"])
  assert inputs["user_segment"].numpy().tolist() == [2]
  assert inputs["city_tier"].numpy().tolist() == [4]
  assert np.isfinite(tiny_model(inputs).numpy()).all()


def test_save_load_round_trip_gives_identical_outputs(tiny_model, tmp_path):
  examples = model_checks.serialized_examples(16)
  export_dir = str(tmp_path / "model")
  export.export_saved_model(tiny_model, _CONTRACT, export_dir)
  served = model_checks.assert_saved_model_matches(export_dir, tiny_model, examples)
  reloaded = tf.keras.models.load_model(export_dir)
  inputs = features.parse_and_encode(_CONTRACT, tf.constant(examples), with_label=False)
  np.testing.assert_array_equal(reloaded(inputs).numpy(), tiny_model(inputs).numpy())
  # The raw signature agrees with the tf.Example one.
  parsed = tf.io.parse_example(examples, features.feature_spec(_CONTRACT, with_label=False))
  raw = tf.saved_model.load(export_dir).signatures[export.RAW_SIGNATURE_NAME](
    item_history=parsed["item_history"].to_tensor(),
    user_segment=parsed["user_segment"],
    city_tier=parsed["city_tier"],
  )
  np.testing.assert_allclose(raw["probabilities"].numpy(), served, atol=1e-6)


def test_serving_rejects_examples_without_required_features(tiny_model):
  serve = export.serving_signatures(tiny_model, _CONTRACT)["serving_default"]
  example = clickstream.make_example(_CONTRACT, [1, 2], ["new", "tier1"], 0)
  del example.features.feature["user_segment"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="user_segment"):
    serve(examples=tf.constant([example.SerializeToString()]))


@pytest.mark.parametrize(
  "layer",
  [
    layers.ItemHistoryEmbedding(vocabulary_size=100, max_length=8, embedding_dim=4),
    layers.TransformerEncoder(intermediate_dim=16, num_heads=2, dropout=0.1),
    layers.MaskedMeanPooling(),
    layers.LastPositionPooling(),
    layers.RecencyWeightedBag(vocabulary_size=100, max_length=8, output_dim=3),
    layers.NeighbourContrast(weight=0.5),
  ],
)
def test_layer_config_round_trips(layer):
  config = layer.get_config()
  assert type(layer).from_config(config).get_config() == config


def test_last_position_pooling_picks_the_most_recent_real_position():
  x = tf.reshape(tf.range(8, dtype=tf.float32), (2, 4, 1))
  mask = tf.constant([[True, True, True, False], [False, False, False, False]])
  np.testing.assert_array_equal(
    layers.LastPositionPooling()(x, padding_mask=mask).numpy(), [[2.0], [0.0]]
  )


def test_neighbour_contrast_adds_its_loss_in_training_only():
  layer = layers.NeighbourContrast(weight=2.0)
  # Row 0: two real neighbours (1, 0) and (1, 0); row 1: (0, 1) then padding.
  x = tf.constant([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [5.0, 5.0]]])
  mask = tf.constant([[True, True], [True, False]])
  assert layer(x, padding_mask=mask) is x and not layer.losses
  np.testing.assert_array_equal(layer(x, padding_mask=mask, training=True).numpy(), x.numpy())
  # One pair: positive 1·1/2 = 0.5; its negative (row 1's padding) does not count.
  (loss,) = layer.losses
  np.testing.assert_allclose(loss.numpy(), 2.0 * np.log1p(np.exp(-0.5)), rtol=1e-6)


def test_recency_weighted_bag_sums_item_vectors_by_recency_weight():
  layer = layers.RecencyWeightedBag(vocabulary_size=4, max_length=2, output_dim=2)
  layer.build((None, None))
  # Rows 0..4: padding, ids 1..3, out of vocabulary.
  layer.item_vectors.embeddings.assign([[9, 9], [1, 0], [0, 1], [1, 1], [5, 5]])
  layer.recency_weights.embeddings.assign([[2.0], [0.5]])
  out = layer(tf.constant([[1, 2, 0], [3, 7, 0], [0, 0, 0]])).numpy()
  # [1, 2]: id 2 is the last (weight 2), id 1 before it (0.5); 7 is out of vocabulary.
  np.testing.assert_allclose(out, [[0.5, 2.0], [10.5, 10.5], [0.0, 0.0]])


def test_attention_key_bias_is_minus_log_of_real_keys_and_masks_padding():
  bias = transformer_encoder._key_bias(
    tf.constant([[True, True, False], [True, False, False]]), tf.float32
  )
  np.testing.assert_allclose(
    bias.numpy(),
    [
      [-np.log(2.0), -np.log(2.0), transformer_encoder.MASKED_LOGIT_BIAS],
      [0.0, transformer_encoder.MASKED_LOGIT_BIAS, transformer_encoder.MASKED_LOGIT_BIAS],
    ],
    rtol=1e-6,
  )


def test_dynamic_tanh_normalization_is_gamma_tanh_alpha_x_plus_beta():
  norm = transformer_encoder._DynamicTanh(alpha_init=0.5)
  norm.build((1, 2))
  norm.gamma.assign([2.0, -1.0])
  norm.beta.assign([0.0, 1.0])
  np.testing.assert_allclose(
    norm(tf.constant([[4.0, -2.0]])).numpy(),
    [[2.0 * np.tanh(2.0), -np.tanh(-1.0) + 1.0]],
    rtol=1e-6,
  )
  assert norm.get_config()["alpha_init"] == 0.5


def test_config_errors_name_the_problem():
  with pytest.raises(ValueError, match="Unknown model preset 'huge'"):
    presets.get("huge")
  with pytest.raises(ValueError, match=r"hidden_dim \(10\) must be divisible by num_heads"):
    presets.TransformerConfig(hidden_dim=10, num_heads=4)


def test_input_fn_batches_by_length_and_fails_clearly(tmp_path):
  paths = clickstream.write_span(str(tmp_path), num_examples=200)
  dataset = model_lib._input_fn(_CONTRACT, paths, batch_size=16, shuffle=True, seed=1)
  for inputs, labels in dataset.take(8):
    history = inputs["item_history"].numpy()
    assert history.shape[0] == 16 and labels.shape == (16,)
    assert history.shape[1] <= 50
    assert (history[:, -1] > 0).any()  # Padded only to the longest in the batch.
  with pytest.raises(FileNotFoundError, match="No training data files match"):
    model_lib._input_fn(_CONTRACT, [str(tmp_path / "nothing-*")], 16, shuffle=False)


def test_run_fn_trains_and_exports(tmp_path):
  paths = clickstream.write_span(str(tmp_path / "data"), num_examples=600, seed=3)
  fn_args = tfx.components.FnArgs(
    train_files=paths[:3],
    eval_files=paths[3:],
    train_steps=40,
    eval_steps=2,
    serving_model_dir=str(tmp_path / "serving"),
    model_run_dir=str(tmp_path / "run"),
    schema_path=contract.DEFAULT_SCHEMA_PATH,
    custom_config={"preset": "tiny", "seed": 1},
  )
  model_lib.run_fn(fn_args)
  with open(os.path.join(fn_args.model_run_dir, "history.json")) as f:
    history = json.load(f)
  assert set(history) >= {"loss", "accuracy", "val_loss", "val_accuracy"}
  loaded = tf.saved_model.load(fn_args.serving_model_dir)
  assert set(loaded.signatures) == {
    "serving_default",
    export.RAW_SIGNATURE_NAME,
    export.CLASSIFICATION_SIGNATURE_NAME,
  }
  out = loaded.signatures["serving_default"](
    examples=tf.constant(model_checks.serialized_examples(3))
  )
  assert out["probabilities"].shape == (3, 10)
  assert tf.io.gfile.glob(os.path.join(fn_args.model_run_dir, "train", "events.*"))
  # Warmup requests for TensorFlow Serving, in its format, without labels.
  path = os.path.join(fn_args.serving_model_dir, "assets.extra", "tf_serving_warmup_requests")
  logs = [
    prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)
  ]
  assert len(logs) == 8
  for log in logs:
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    (serialized,) = tf.make_ndarray(request.inputs["examples"]).tolist()
    example = tf.train.Example.FromString(serialized)
    assert sorted(example.features.feature) == ["city_tier", "item_history", "user_segment"]
  # The contract the model was trained on, for the TFLite conversion.
  assert export.read_contract(fn_args.serving_model_dir) == _CONTRACT


def test_tiny_model_learns(tmp_path):
  paths = clickstream.write_span(str(tmp_path), num_examples=800, seed=4)
  tf.keras.utils.set_random_seed(0)
  model = model_lib._build_model(_TINY, _CONTRACT)
  dataset = model_lib._input_fn(_CONTRACT, paths, batch_size=32, shuffle=True, seed=0)
  history = model.fit(dataset, epochs=4, steps_per_epoch=25, verbose=0)
  losses = history.history["loss"]
  assert losses[-1] < losses[0] - 0.1
