"""The Tuner's best hyperparameters as overrides of the Trainer's preset.

TFX's Tuner writes KerasTuner's best `HyperParameters.get_config()` as JSON,
and the Trainer hands it to `run_fn` as `fn_args.hyperparameters`. The search
space names its hyperparameters after fields of `presets.TransformerConfig`
(`tuning.tuner_fn`), so the best values replace the preset's by name.
"""

from typing import Any
from typing import Dict
from typing import Optional


def tuned_custom_config(
  custom_config: Optional[Dict[str, Any]], hyperparameters: Optional[Dict[str, Any]]
) -> Dict[str, Any]:
  """The Trainer's `custom_config` with the Tuner's best values over its `hparams`.

  Args:
    custom_config: `fn_args.custom_config` (None: empty).
    hyperparameters: `fn_args.hyperparameters`, a KerasTuner
      `HyperParameters.get_config()` dict; None when the Trainer was given no
      `hyperparameters` input.

  Returns:
    A copy of `custom_config`; with hyperparameters, its `hparams` hold their
    `values` over any given there.

  Raises:
    ValueError: if `hyperparameters` is not a KerasTuner config.
  """
  custom_config = dict(custom_config or {})
  if hyperparameters is None:
    return custom_config
  values = hyperparameters.get("values") if isinstance(hyperparameters, dict) else None
  if not isinstance(values, dict):
    raise ValueError(
      "The Trainer's hyperparameters must be a KerasTuner HyperParameters config (a dict "
      f"with a 'values' dict, as TFX's Tuner writes it), got {hyperparameters!r}."
    )
  custom_config["hparams"] = {**custom_config.get("hparams", {}), **values}
  return custom_config
