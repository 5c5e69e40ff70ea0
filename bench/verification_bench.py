"""Benchmark: what verify-then-load from a private copy costs, against loading a version as it is.

For SavedModel versions of about 1, 10 and 100 MiB (one float32 variable of
that size, signed as the Pusher signs them), in one process, taking turns:

- `load`: the server's loader with no key (TensorFlow loads the directory),
- `verify_in_place`: OpenSSF verification of the source directory (the
  old way, which left the verify-then-load gap),
- `copy`: the private copy alone (`verification.private_copy`),
- `copy_verify`: copy, verification of the copy, signed ignore list and
  identity checks (`verification.verified_copy`),
- `load_signed`: the loader with the key (copy, verify, load from the copy).

Each is timed `--repeats` times (files in the page cache) and the median is
kept. The disk cost of the copy is the version's size while it is loaded.

Usage: python -m bench.verification_bench [--repeats 5] [--sizes_mib 1,10,100]
Writes bench/results/verification.json and prints a table.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Optional
from typing import Sequence

import tensorflow as tf

from next_category.components import version_signing
from next_category.serving.models import loader
from next_category.serving.models import verification

_RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RESULTS_PATH = os.path.join(_RESULTS, "verification.json")
MODEL_NAME = "bench_model"
VERSION = 1


def _write_version(path: str, mib: int) -> None:
  module = tf.Module()
  module.weights = tf.Variable(tf.random.uniform([mib * (1 << 20) // 4], seed=1))
  module.serve = tf.function(
    lambda x: x * tf.reduce_sum(module.weights[:4]),
    input_signature=[tf.TensorSpec([None], tf.float32, name="x")],
  )
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


def _size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, files in os.walk(path) for f in files)


def _ms(function) -> float:
  start = time.perf_counter()
  function()
  return (time.perf_counter() - start) * 1e3


def run_benchmark(sizes_mib: Sequence[int], repeats: int) -> dict:
  rows = []
  with tempfile.TemporaryDirectory(prefix="verification-bench-") as root:
    private_key, public_key = version_signing.generate_key_pair(os.path.join(root, "keys"))
    plain = loader.VersionLoader()
    signed = loader.VersionLoader(verification_key_file=public_key)
    for mib in sizes_mib:
      path = os.path.join(root, MODEL_NAME, str(mib), str(VERSION))
      _write_version(path, mib)
      version_signing.sign_version(path, private_key, MODEL_NAME, VERSION)

      def verify_in_place(path=path):
        verification.verify_copy(path, MODEL_NAME, VERSION, public_key)

      def copy(path=path):
        verification.remove_copy(verification.private_copy(path))

      def copy_verify(path=path):
        verification.remove_copy(verification.verified_copy(MODEL_NAME, VERSION, path, public_key))

      steps = {
        "load": lambda p=path: plain(MODEL_NAME, VERSION, p).close(),
        "verify_in_place": verify_in_place,
        "copy": copy,
        "copy_verify": copy_verify,
        "load_signed": lambda p=path: signed(MODEL_NAME, VERSION, p).close(),
      }
      row = {
        "size_mib": round(_size(path) / (1 << 20), 2),
        "files": sum(len(files) for _, _, files in os.walk(path)),
      }
      # Taking turns: one of each per round, so drift weighs on all alike.
      timings = {name: [] for name in steps}
      for _ in range(repeats):
        for name, step in steps.items():
          timings[name].append(_ms(step))
      for name, values in timings.items():
        row[f"{name}_ms"] = round(statistics.median(values), 1)
      row["copy_verify_share_of_load_signed"] = round(
        row["copy_verify_ms"] / row["load_signed_ms"], 3
      )
      rows.append(row)
      shutil.rmtree(os.path.dirname(path))
  return {
    "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    "repeats": repeats,
    "rows": rows,
  }


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.verification_bench", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--repeats", type=int, default=5, help="Rounds; the median is kept.")
  parser.add_argument(
    "--sizes_mib",
    type=lambda text: [int(size) for size in text.split(",")],
    default=[1, 10, 100],
    help="Version sizes to measure, comma-separated MiB.",
  )
  parser.add_argument("--output", default=RESULTS_PATH, help="The JSON report.")
  args = parser.parse_args(argv)
  if args.repeats < 1 or any(size < 1 for size in args.sizes_mib):
    parser.error("--repeats and every size must be at least 1.")
  report = run_benchmark(args.sizes_mib, args.repeats)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  columns = ("load", "verify_in_place", "copy", "copy_verify", "load_signed")
  print(f"{'MiB':>7} {'files':>5} " + " ".join(f"{name + ' ms':>18}" for name in columns))
  for row in report["rows"]:
    print(
      f"{row['size_mib']:7.1f} {row['files']:5d} "
      + " ".join(f"{row[name + '_ms']:18.1f}" for name in columns)
    )
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
