"""Benchmark: Trainer examples/second with 1 and 2 local workers.

Runs the Trainer's `run_fn` on generated data with `num_workers` 1 and 2 (a
real MultiWorkerMirroredStrategy cluster of processes on loopback) and the same
global batch, and reports wall time and examples/second, start-up included.
On a 2-core machine both workers share the same cores, so no speed-up is
expected: the point is what the cluster costs.

Usage: python -m bench.multi_worker [--preset small] [--train_steps 150]
Writes bench/results/multi_worker.json.
"""

import argparse
import json
import os
import tempfile
import time

from tfx import v1 as tfx

from next_category import contract
from next_category.components.trainer import model as model_lib
from next_category.components.trainer import presets
from next_category.dataset import clickstream

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--train_steps", type=int, default=150)
  parser.add_argument("--num_examples", type=int, default=20000)
  parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts.")
  args = parser.parse_args(argv)
  batch = presets.get(args.preset).batch_size
  rows = []
  with tempfile.TemporaryDirectory() as root:
    files = clickstream.write_span(os.path.join(root, "data"), num_examples=args.num_examples)
    for num_workers in [int(w) for w in args.workers.split(",")]:
      run_dir = os.path.join(root, f"workers-{num_workers}")
      fn_args = tfx.components.FnArgs(
        train_files=files[:3],
        eval_files=files[3:],
        train_steps=args.train_steps,
        eval_steps=5,
        serving_model_dir=os.path.join(run_dir, "serving"),
        model_run_dir=os.path.join(run_dir, "run"),
        schema_path=contract.DEFAULT_SCHEMA_PATH,
        custom_config={"preset": args.preset, "num_workers": num_workers},
      )
      start = time.perf_counter()
      model_lib.run_fn(fn_args)
      seconds = time.perf_counter() - start
      rows.append(
        {
          "num_workers": num_workers,
          "seconds": seconds,
          "examples_per_second": args.train_steps * batch / seconds,
        }
      )
  os.makedirs(_RESULTS, exist_ok=True)
  with open(os.path.join(_RESULTS, "multi_worker.json"), "w") as f:
    json.dump(
      {"preset": args.preset, "global_batch": batch, "train_steps": args.train_steps, "runs": rows},
      f,
      indent=2,
    )
  print(
    f"\nTrainer run_fn, preset {args.preset}, global batch {batch}, "
    f"{args.train_steps} steps (start-up, training, eval and export included)"
  )
  print(f"{'workers':>7} {'seconds':>8} {'examples/s':>11}")
  for row in rows:
    print(f"{row['num_workers']:>7} {row['seconds']:>8.1f} {row['examples_per_second']:>11.0f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
