"""Benchmark: the int8 TFLite model against the float TFLite model and the SavedModel.

Trains a preset (`small` by default) briefly on generated data, then runs exactly the
checks TFLiteConverter runs in the pipeline (`executor.convert_and_check`):
size of the int8 model against the float TFLite conversion, top-1 accuracy
against the SavedModel on held-out examples (overall and per slice), and
single-example latency (p50/p99) of the three, taking turns in one process,
with both TFLite models also run on TFLite's builtin kernels alone (no XNNPACK
delegate), so the int8 model as served meets the float model under its faster
option. Also lists the ops of the int8 model XNNPACK does not run: those run
TFLite's own kernels and split the graph into several XNNPACK partitions.

Targets: size <= 0.27x float; accuracy drop <= 1.0 point; int8 p50 >= 2x
faster than float TFLite (its faster option) and well below the SavedModel.

`--preset base` (the reference size) measures latency and size with random
weights (`--train_steps 0`, its default there): training `base` on CPU takes
hours, and latency does not depend on the weights' values. Its accuracy is
not meaningful and is not checked; accuracy is measured on `small`.

Usage: python -m bench.tflite_bench [--preset small] [--train_steps 300]
Writes bench/results/tflite[-PRESET].json and prints a table.
"""

import argparse
import collections
import json
import os
import platform
import tempfile
import time

import tensorflow as tf

from next_category import contract
from next_category.components.tflite_converter import executor
from next_category.components.trainer import export
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.dataset import clickstream

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
_NUM_SHARDS = 6  # Five train shards, one eval shard.
# Presets measured with random weights by default, and their smaller sample
# sizes (a float `base` call takes ~40 ms).
_LATENCY_ONLY = {
  "base": dict(
    train_steps=0,
    num_examples=3000,
    representative_examples=100,
    eval_examples=200,
    latency_examples=60,
    latency_rounds=3,
  )
}
_DEFAULTS = dict(
  train_steps=300,
  num_examples=24000,
  representative_examples=500,
  eval_examples=4000,
  latency_examples=300,
  latency_rounds=5,
)


def _ops_outside_xnnpack(model_path: str) -> dict:
  """Op counts by type that the default XNNPACK delegate leaves to TFLite, and its partitions."""
  interpreter = tf.lite.Interpreter(model_path=model_path, num_threads=1)
  interpreter.allocate_tensors()
  ops = interpreter._get_ops_details()  # pylint: disable=protected-access
  producer = {t: op["index"] for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
  delegated = set()
  partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
  for partition in partitions:
    # Walk back from each partition's outputs to its inputs: the ops between
    # are the ones it replaced.
    inputs, stack = set(partition["inputs"].tolist()), list(partition["outputs"])
    while stack:
      tensor = stack.pop()
      if tensor in inputs or tensor not in producer or producer[tensor] in delegated:
        continue
      delegated.add(producer[tensor])
      stack.extend(ops[producer[tensor]]["inputs"].tolist())
  outside = collections.Counter(
    op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in delegated
  )
  return {
    "xnnpack_partitions": len(partitions),
    "ops_outside_xnnpack": dict(sorted(outside.items())),
  }


def _train(preset: str, train_files, eval_files, steps: int, export_dir: str) -> dict:
  """Trains `steps` steps (0: random weights) and exports the model as the Trainer does."""
  config = presets.get(preset)
  data_contract = contract.load()
  tf.keras.utils.set_random_seed(0)
  model = model_lib._build_model(config, data_contract)  # pylint: disable=protected-access
  start = time.perf_counter()
  val_accuracy = None
  if steps:
    history = model.fit(
      model_lib._input_fn(data_contract, train_files, config.batch_size, shuffle=True, seed=0),
      epochs=1,
      steps_per_epoch=steps,
      validation_data=model_lib._input_fn(
        data_contract, eval_files, config.batch_size, shuffle=False
      ),
      validation_steps=10,
      verbose=0,
    )
    val_accuracy = float(history.history["val_accuracy"][-1])
  seconds = time.perf_counter() - start
  export.export_saved_model(model, data_contract, export_dir)
  return {
    "preset": preset,
    "steps": steps,
    "seconds": round(seconds, 1),
    "val_accuracy": val_accuracy,
    "weights": "trained" if steps else "random (latency and size only)",
  }


def _row(name, value, target, ok):
  return f"  {name:<34} {value:>22}   {target:<16} {'PASS' if ok else 'MISS'}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="small", choices=sorted(presets.PRESETS))
  parser.add_argument("--num_examples", type=int, help="Train + eval examples.")
  parser.add_argument("--train_steps", type=int, help="0: random weights (latency only).")
  parser.add_argument("--representative_examples", type=int)
  parser.add_argument("--eval_examples", type=int)
  parser.add_argument("--latency_examples", type=int)
  parser.add_argument("--latency_rounds", type=int)
  parser.add_argument(
    "--output", help="Default: bench/results/tflite.json, tflite-PRESET.json for other presets."
  )
  parser.epilog = f"Defaults: {_DEFAULTS}; " + "; ".join(
    f"for {preset}: {defaults}" for preset, defaults in _LATENCY_ONLY.items()
  )
  args = parser.parse_args(argv)
  for name, value in {**_DEFAULTS, **_LATENCY_ONLY.get(args.preset, {})}.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  if args.output is None:
    suffix = "" if args.preset == "small" else f"-{args.preset}"
    args.output = os.path.join(_RESULTS, f"tflite{suffix}.json")
  trained = args.train_steps > 0

  with tempfile.TemporaryDirectory() as work_dir:
    files = clickstream.write_span(
      os.path.join(work_dir, "data"), num_examples=args.num_examples, num_shards=_NUM_SHARDS
    )
    train_files, eval_files = files[:-1], files[-1:]
    saved_model_dir = os.path.join(work_dir, "saved_model")
    training = _train(args.preset, train_files, eval_files, args.train_steps, saved_model_dir)
    options = executor.Options(
      num_representative_examples=args.representative_examples,
      max_eval_examples=args.eval_examples,
      num_latency_examples=args.latency_examples,
      latency_rounds=args.latency_rounds,
    )
    output_dir = os.path.join(work_dir, "tflite")
    metrics = executor.convert_and_check(
      saved_model_dir, train_files, eval_files, output_dir, options
    )
    int8_graph = _ops_outside_xnnpack(os.path.join(output_dir, executor.MODEL_FILE))

  size, accuracy, latency = metrics["size_bytes"], metrics["accuracy"], metrics["latency"]
  results = {
    "training": training,
    "size_bytes": size,
    "accuracy": accuracy,
    "latency": latency,
    "blessed": metrics["blessed"],
    "reason": metrics["reason"],
    "int8_graph": int8_graph,
    "environment": {
      "cpu": platform.processor() or platform.machine(),
      "cpu_count": os.cpu_count(),
      "load_average_1m": os.getloadavg()[0],
      "tensorflow": tf.__version__,
    },
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)

  int8 = latency[executor.INT8]
  drop = accuracy["drop_points"][executor.INT8]
  speedup = latency["int8_speedup_vs_float_p50"]
  print(
    f"TFLite int8 benchmark: preset {args.preset}, {training['steps']} training steps "
    f"({training['seconds']} s, weights {training['weights']}), {accuracy['examples']} eval "
    f"examples, load average {results['environment']['load_average_1m']:.1f}"
  )
  print(f"  {'':<34} {'measured':>22}   {'target':<16}")
  print(
    _row(
      "size int8 / float TFLite",
      f"{size['int8_to_float_ratio']:.3f} ({size[executor.INT8] // 1024} KiB)",
      "<= 0.27",
      size["int8_to_float_ratio"] <= 0.27,
    )
  )
  accuracy_text = (
    f"{100 * accuracy['accuracy'][executor.SAVED_MODEL]:.2f} -> "
    f"{100 * accuracy['accuracy'][executor.INT8]:.2f}"
  )
  if not trained:
    print(f"  {'top-1 accuracy SavedModel -> int8':<34} {accuracy_text:>22}   (random weights)")
  else:
    print(_row("top-1 accuracy SavedModel -> int8", accuracy_text, "drop <= 1.0 pt", drop <= 1.0))
  for feature, values in accuracy["slices"].items() if trained else ():
    for value, report in values.items():
      drop_text = f"{report['drop_points'][executor.INT8]:+.2f} pt drop"
      print(f"    {feature + '=' + value:<32} {drop_text:>22}   n={report['examples']}")
  print(
    _row(
      "latency p50 / p99, us: int8 XNNPACK",
      f"{int8['p50_us']:.0f} / {int8['p99_us']:.0f}",
      ">= 2x faster",
      speedup >= 2.0,
    )
  )
  for name, key in (
    ("int8 builtin kernels", executor.INT8_BUILTIN_KERNELS),
    ("float XNNPACK", executor.FLOAT),
    ("float builtin kernels", executor.FLOAT_BUILTIN_KERNELS),
    ("SavedModel serving_default", executor.SAVED_MODEL),
  ):
    measured = f"{latency[key]['p50_us']:.0f} / {latency[key]['p99_us']:.0f}"
    print(f"  {'    ' + name:<34} {measured:>22}")
  print(
    f"  {'int8 speedup p50 vs fastest float':<34} {speedup:>22.2f}x   ({latency['fastest_float']})"
  )
  print(
    f"  {'int8 speedup p50 vs SavedModel':<34} {latency['int8_speedup_vs_saved_model_p50']:>22.1f}x"
  )
  print(
    f"  int8 ops outside XNNPACK ({int8_graph['xnnpack_partitions']} partitions): "
    f"{int8_graph['ops_outside_xnnpack']}"
  )
  print(f"  {metrics['reason']}")
  print(f"Wrote {args.output}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
