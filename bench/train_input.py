"""Benchmark: is the Trainer's tf.data input pipeline ever the bottleneck?

Trains the same model twice, side by side in one process: once fed by the
Trainer's `input_fn` (reading GZIP TFRecords, parsing, caching, shuffling,
length bucketing, prefetching) and once by plain Keras `fit` over the very same
batches already held in memory as NumPy arrays. The ratio of their training
examples/second is the input pipeline's cost (target: >= 0.9). The pipeline
alone (no model) is timed too, to show its headroom.

Usage: python -m bench.train_input [--preset small] [--steps 150]
Writes bench/results/train_input.json.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from next_category import contract
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.dataset import clickstream

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class _InMemoryBatches(tf.keras.utils.Sequence):
  """Plain Keras input: a list of ready (inputs, labels) NumPy batches."""

  def __init__(self, batches):
    super().__init__()
    self._batches = batches

  def __len__(self):
    return len(self._batches)

  def __getitem__(self, index):
    return self._batches[index]


def _timed_fit(model, data, steps):
  start = time.perf_counter()
  model.fit(data, epochs=1, steps_per_epoch=steps, verbose=0)
  return time.perf_counter() - start


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--num_examples", type=int, default=20000)
  parser.add_argument(
    "--steps", type=int, default=150, help="Measured training steps per input (after warm-up)."
  )
  parser.add_argument("--warmup_steps", type=int, default=30)
  args = parser.parse_args(argv)
  config = presets.get(args.preset)
  batch = config.batch_size

  with tempfile.TemporaryDirectory() as data_root:
    files = clickstream.write_span(data_root, num_examples=args.num_examples, seed=1)
    dataset = model_lib._input_fn(contract.load(), files, batch, shuffle=True, seed=0)

    # The pipeline alone: a full pass fills the cache, then steady state.
    iterator = iter(dataset)
    start = time.perf_counter()
    for _ in range(args.num_examples // batch):
      next(iterator)
    first_pass = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
      next(iterator)
    pipeline_only = args.steps * batch / (time.perf_counter() - start)

    # The same batches, in memory, for the plain-Keras baseline.
    total = args.warmup_steps + args.steps
    batches = [({k: v.numpy() for k, v in x.items()}, y.numpy()) for x, y in dataset.take(total)]

    results = {}
    for name, data in (
      ("tf.data input_fn", dataset.take(total)),
      ("in-memory Keras fit", _InMemoryBatches(batches)),
    ):
      tf.keras.utils.set_random_seed(0)
      strategy = tf.distribute.MultiWorkerMirroredStrategy()
      with strategy.scope():
        model = model_lib.build_model(config)
      if isinstance(data, tf.data.Dataset):
        data = iter(data.repeat())
      _timed_fit(model, data, args.warmup_steps)
      seconds = _timed_fit(model, data, args.steps)
      results[name] = args.steps * batch / seconds

  ratio = results["tf.data input_fn"] / results["in-memory Keras fit"]
  report = {
    "preset": args.preset,
    "batch_size": batch,
    "measured_steps": args.steps,
    "train_examples_per_second": results,
    "ratio_tfdata_to_in_memory": ratio,
    "pipeline_only_examples_per_second": pipeline_only,
    "first_pass_seconds": first_pass,
  }
  os.makedirs(_RESULTS, exist_ok=True)
  with open(os.path.join(_RESULTS, "train_input.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(f"\nTrainer input benchmark (preset {args.preset}, batch {batch}, {args.steps} steps)")
  print(f"{'input':<24} {'train examples/s':>17}")
  for name, value in results.items():
    print(f"{name:<24} {value:>17.0f}")
  print(f"{'ratio':<24} {ratio:>17.2f}  (target >= 0.90)")
  print(
    f"{'pipeline alone':<24} {pipeline_only:>17.0f}  (first pass with parsing: {first_pass:.1f} s)"
  )
  return 0 if np.isfinite(ratio) else 1


if __name__ == "__main__":
  raise SystemExit(main())
