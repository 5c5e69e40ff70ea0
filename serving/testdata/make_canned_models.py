"""Builds the tiny canned next_category models the serving tests serve.

Like TensorFlow Serving's half_plus_two test models, but generated at test time
instead of checked in: the `tiny` preset, untrained (exact-value tests compare
the server with the same SavedModel called in-process).

    python -m serving.testdata.make_canned_models --output_dir=/tmp/canned

writes

    <output_dir>/next_category/1/             SavedModel with warmup requests
    <output_dir>/staging/2/                   SavedModel, other weights (to push)
    <output_dir>/staging/broken/              a version directory that fails to load
    <output_dir>/tflite/next_category/1/model.tflite   the v1 weights in TFLite
"""

import argparse
import dataclasses
import os
import sys
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

MODEL_NAME = "next_category"
NUM_WARMUP_EXAMPLES = 4
_SEED = 1


@dataclasses.dataclass(frozen=True)
class CannedModels:
  """Where `make_canned_models` wrote each model.

  Attributes:
    base_path: the model base path, holding version 1.
    version_1: the version 1 SavedModel directory.
    version_2: a SavedModel with different weights, outside the base path.
    broken: a version directory whose SavedModel cannot be loaded.
    tflite_base_path: base path of the TFLite model, holding version 1.
  """

  base_path: str
  version_1: str
  version_2: str
  broken: str
  tflite_base_path: str


def make_canned_models(
  output_dir: str, preset: str = "tiny", with_tflite: bool = True
) -> CannedModels:
  """Writes the canned models under `output_dir` (see the module docstring)."""
  # Imported here: the trainer module pulls in TFX, which only this needs.
  from components.trainer import constants  # pylint: disable=g-import-not-at-top
  from components.trainer import model as model_lib  # pylint: disable=g-import-not-at-top
  from components.trainer import presets  # pylint: disable=g-import-not-at-top
  from dataset import clickstream  # pylint: disable=g-import-not-at-top
  from serving import warmup  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(_SEED)
  model = model_lib.build_model(presets.get(preset))
  signatures = model_lib.make_serving_signatures(model)
  base_path = os.path.join(output_dir, MODEL_NAME)
  version_1 = os.path.join(base_path, "1")
  # Layer traces are only needed to reload the Keras model; serving needs the
  # signatures, and skipping the traces makes saving several times faster.
  model.save(version_1, save_format="tf", signatures=signatures, save_traces=False)
  examples = []
  for example in clickstream.generate_examples(NUM_WARMUP_EXAMPLES, seed=_SEED):
    del example.features.feature[constants.LABEL_KEY]
    examples.append(example.SerializeToString())
  warmup.write_warmup_requests(version_1, examples, model_name=MODEL_NAME)

  tflite_base_path = os.path.join(output_dir, "tflite", MODEL_NAME)
  if with_tflite:
    _write_tflite(model, os.path.join(tflite_base_path, "1", "model.tflite"))

  # Version 2: the same graph with other weights, so answers tell versions apart.
  rng = np.random.default_rng(_SEED + 1)
  for variable in model.trainable_variables:
    variable.assign(
      variable + rng.normal(0.0, 0.5, variable.shape).astype(variable.dtype.as_numpy_dtype)
    )
  version_2 = os.path.join(output_dir, "staging", "2")
  model.save(version_2, save_format="tf", signatures=signatures, save_traces=False)

  broken = os.path.join(output_dir, "staging", "broken")
  tf.io.gfile.makedirs(broken)
  with tf.io.gfile.GFile(os.path.join(broken, "saved_model.pb"), "wb") as f:
    f.write(b"this is not a SavedModel")
  return CannedModels(base_path, version_1, version_2, broken, tflite_base_path)


def _write_tflite(model: tf.keras.Model, path: str) -> None:
  # The pipeline's own conversion (float here: calibration is not needed to
  # test serving), so the canned file has the layout the pipeline ships.
  from components.tflite_converter import conversion  # pylint: disable=g-import-not-at-top

  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(conversion.convert(model))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--output_dir", required=True, help="Where to write the models.")
  parser.add_argument("--preset", default="tiny", help="Model preset (default: tiny).")
  args = parser.parse_args(argv)
  canned = make_canned_models(args.output_dir, args.preset)
  for field in dataclasses.fields(canned):
    print(f"{field.name}: {getattr(canned, field.name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
