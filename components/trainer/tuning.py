"""Tuner module: searches the preset's hyperparameters with KerasTuner for TFX's Tuner.

The TFX Tuner imports this module and calls `tuner_fn`, its one public
function. The search space is centred on the Trainer's preset (its learning
rate, dropout, width and depth, each with neighbours around it), and each
hyperparameter is named after its `presets.TransformerConfig` field, so the
Trainer applies the best values over the preset by name
(`hyperparameters.tuned_custom_config`). Every trial trains a fresh model for
the Tuner's `train_args.num_steps` steps and scores it on `eval_args.num_steps`
eval batches: the search costs at most `tune_trials` such trainings.
"""

from typing import Any
from typing import Dict
from typing import List

import keras_tuner
import tensorflow as tf
from tfx import v1 as tfx

from next_category import contract
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets

# What a trial is ranked by: the metric the Evaluator blesses on.
_OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
_DEFAULT_TRIALS = 4
# Dropout rates searched besides the preset's own.
_DROPOUT_RATES = (0.0, 0.1, 0.2)
_PROJECT_NAME = "next_category"


def _learning_rates(config: presets.TransformerConfig) -> List[float]:
  """The preset's learning rate and a third and three times it."""
  rate = config.learning_rate
  return sorted({float(f"{rate / 3:.2g}"), rate, float(f"{rate * 3:.2g}")})


def _widths(config: presets.TransformerConfig) -> List[int]:
  """Half, the same and twice the preset's width, where the heads still divide it."""
  width, heads = config.hidden_dim, config.num_heads
  return sorted({w for w in (width // 2, width, width * 2) if w >= heads and w % heads == 0})


def _search_space(config: presets.TransformerConfig) -> keras_tuner.HyperParameters:
  """The hyperparameters searched, each defaulting to the preset's value."""
  hp = keras_tuner.HyperParameters()
  hp.Choice("learning_rate", _learning_rates(config), default=config.learning_rate)
  hp.Choice("dropout", sorted({*_DROPOUT_RATES, config.dropout}), default=config.dropout)
  hp.Choice("hidden_dim", _widths(config), default=config.hidden_dim)
  hp.Int("num_layers", 1, config.num_layers + 1, default=config.num_layers)
  return hp


class _TransformerHyperModel(keras_tuner.HyperModel):
  """Builds the Trainer's model (`model._build_model`) with a trial's values over the preset."""

  def __init__(
    self,
    preset: str,
    hparams: Dict[str, Any],
    data_contract: contract.DataContract,
    item_vectors=None,
  ):
    super().__init__(name="next_category_transformer")
    self.preset = preset
    self.hparams = dict(hparams)
    self.data_contract = data_contract
    self.item_vectors = item_vectors

  def build(self, hp: keras_tuner.HyperParameters) -> tf.keras.Model:
    config = presets.get(self.preset, **{**self.hparams, **hp.values})
    # The trials share the train split's co-occurrence vectors (the search
    # space does not change their width).
    vectors = self.item_vectors if config.cooccurrence_dim else None
    return model_lib._build_model(config, self.data_contract, item_vectors=vectors)


class _PresetFirstOracle(keras_tuner.oracles.RandomSearchOracle):
  """Random search whose first trial is the preset itself (every hyperparameter's default).

  So the search always scores the untuned model beside the others, and the
  best values it hands on are never worse than the preset's by its measure.
  """

  def populate_space(self, trial_id):
    if not self.trials:
      return {
        "status": keras_tuner.engine.trial.TrialStatus.RUNNING,
        "values": self.get_space().values,
      }
    return super().populate_space(trial_id)


class _TfKerasTuner(keras_tuner.Tuner):
  """A Tuner whose trials train the Trainer's tf.keras (Keras 2) model.

  KerasTuner 1.4 runs on Keras 3 and its default `run_trial` refuses a model
  of any other Keras; the pipeline's models are tf.keras (TFX 1.16 needs
  Keras 2). A `run_trial` that builds, fits and returns the trial's metrics
  is KerasTuner's own way to tune any model (its `Tuner.run_trial`
  docstring), and needs nothing from Keras 3.
  """

  def run_trial(self, trial, *fit_args, **fit_kwargs) -> Dict[str, float]:
    tf.keras.backend.clear_session()
    model = self.hypermodel.build(trial.hyperparameters)
    history = model.fit(*fit_args, **fit_kwargs)
    # The last epoch's metrics, the objective among them.
    return {name: float(values[-1]) for name, values in history.history.items()}


# TFX Tuner calls this.
def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
  """Returns a KerasTuner random search over the preset's hyperparameters and its fit arguments.

  `fn_args.custom_config` holds what the Trainer's gets (`preset`, `hparams`,
  `seed` and the contract overrides) and `tune_trials`, the number of trials
  (default 4); the first trial is the preset's own values, the others are
  drawn at random. Each trial trains `fn_args.train_steps` steps of the preset's
  batch size and is scored by its top-1 accuracy on `fn_args.eval_steps` eval
  batches.

  Raises:
    ValueError: for a bad preset, schema or trial count.
  """
  custom_config = fn_args.custom_config or {}
  preset = custom_config.get("preset", "small")
  hparams = dict(custom_config.get("hparams", {}))
  config = presets.get(preset, **hparams)
  data_contract = model_lib._data_contract(fn_args)
  trials = int(custom_config.get("tune_trials", _DEFAULT_TRIALS))
  if trials < 1:
    raise ValueError(f"tune_trials must be at least 1, got {trials}.")
  seed = int(custom_config.get("seed", 42))
  tf.keras.utils.set_random_seed(seed)

  tuner = _TfKerasTuner(
    oracle=_PresetFirstOracle(
      objective=_OBJECTIVE,
      max_trials=trials,
      seed=seed,
      hyperparameters=_search_space(config),
    ),
    hypermodel=_TransformerHyperModel(
      preset,
      hparams,
      data_contract,
      model_lib._item_vectors(config, data_contract, fn_args.train_files),
    ),
    directory=fn_args.working_dir,
    project_name=_PROJECT_NAME,
  )
  train_dataset = model_lib._input_fn(
    data_contract, fn_args.train_files, config.batch_size, shuffle=True, seed=seed
  )
  eval_dataset = model_lib._input_fn(
    data_contract, fn_args.eval_files, config.batch_size, shuffle=False
  )
  return tfx.components.TunerFnResult(
    tuner=tuner,
    fit_kwargs={
      "x": train_dataset,
      "validation_data": eval_dataset,
      "epochs": 1,
      "steps_per_epoch": fn_args.train_steps,
      "validation_steps": fn_args.eval_steps,
      "verbose": 2,
    },
  )
