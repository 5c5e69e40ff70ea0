"""Named settings of the next_category pipeline (constants and dotted paths only)."""

import os

from next_category import contract

PIPELINE_NAME = "next_category"
# The model name TensorFlow Serving serves the pushed SavedModel under.
SERVING_MODEL_NAME = "next_category"

# The folder above the package's: the checkout, when run from one (`make
# install` installs it editable; the Kubeflow compiler reads the image's files
# there).
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the default data and outputs go: the checkout, so they are found from
# any working directory; an installed copy (`pip install .`) has none, so the
# working directory, as the TFX template's runners write theirs, never
# site-packages.
_WORK_ROOT = (
  PROJECT_ROOT if os.path.isfile(os.path.join(PROJECT_ROOT, "pyproject.toml")) else os.getcwd()
)
# One default schema: the data contract's.
SCHEMA_PATH = contract.DEFAULT_SCHEMA_PATH
DATA_ROOT = os.path.join(_WORK_ROOT, "data", "default")
OUTPUT_ROOT = os.path.join(_WORK_ROOT, "artifacts")

# ImportExampleGen reads the latest span-N/ directory under the data root.
INPUT_PATTERN = "span-{SPAN}/*"
# Train/eval hash split 4:1.
TRAIN_HASH_BUCKETS = 4
EVAL_HASH_BUCKETS = 1

# User code the Trainer calls.
RUN_FN = "next_category.components.trainer.model.run_fn"
MODEL_PRESET = "small"
# The training budget: epochs of the train split, with early stopping on the
# eval split and a cap for large data (components/trainer/budget.py). A set
# number of steps (--train_steps, TRAIN_STEPS) overrides it; None: no override.
TRAIN_EPOCHS = 2
TRAIN_NUM_STEPS = None
EVAL_NUM_STEPS = 40
TRAINING_SEED = 42

# TFX's Tuner (`--tune`): the user code it calls, how many hyperparameter sets
# it tries, and the training steps of each (its eval steps are the Trainer's).
TUNER_FN = "next_category.components.trainer.tuning.tuner_fn"
TUNE_TRIALS = 6
TUNE_TRAIN_STEPS = 200

# Blessing: top-1 accuracy on the eval split must reach this, and must not be
# worse than the model serving now (the highest complete pushed version).
EVAL_ACCURACY_THRESHOLD = 0.5
EVAL_ACCURACY_CHANGE_THRESHOLD = -1e-10
# The int8 TFLite model ships only if its top-1 accuracy is at most this many
# points below the SavedModel's.
TFLITE_MAX_ACCURACY_DROP = 1.0

# Components' own Beam pipelines: the DirectRunner in process; on the default
# data, worker processes cost more than they save (measured: docs/beam.md).
BEAM_PIPELINE_ARGS = ("--direct_running_mode=in_memory",)
