"""Named settings of the next_category pipeline (constants and dotted paths only)."""

import os

PIPELINE_NAME = "next_category"
# The model name TensorFlow Serving serves the pushed SavedModel under.
SERVING_MODEL_NAME = "next_category"

# The project root, so default paths work from any working directory.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA_PATH = os.path.join(PROJECT_ROOT, "schemas", "schema.pbtxt")
DATA_ROOT = os.path.join(PROJECT_ROOT, "data", "default")
OUTPUT_ROOT = os.path.join(PROJECT_ROOT, "artifacts")

# ImportExampleGen reads the latest span-N/ directory under the data root.
INPUT_PATTERN = "span-{SPAN}/*"
# Train/eval hash split 4:1.
TRAIN_HASH_BUCKETS = 4
EVAL_HASH_BUCKETS = 1

# User code the Trainer calls.
RUN_FN = "components.trainer.model.run_fn"
MODEL_PRESET = "small"
# The training budget: epochs of the train split, with early stopping on the
# eval split and a cap for large data (components/trainer/budget.py). A set
# number of steps (--train_steps, TRAIN_STEPS) overrides it; None: no override.
TRAIN_EPOCHS = 4
TRAIN_NUM_STEPS = None
EVAL_NUM_STEPS = 40
TRAINING_SEED = 42

# Blessing: top-1 accuracy on the eval split must reach this, and must not be
# worse than the model serving now (the highest complete pushed version).
EVAL_ACCURACY_THRESHOLD = 0.5
EVAL_ACCURACY_CHANGE_THRESHOLD = -1e-10

# Components' own Beam pipelines: the DirectRunner in process. On the default
# 50,000 examples, starting worker processes (each imports TensorFlow) costs
# more than they save: ImportExampleGen and StatisticsGen take 4 s each in
# process against 13 s each with two worker processes.
BEAM_PIPELINE_ARGS = ("--direct_running_mode=in_memory",)
