"""Runs the canary on a SavedModel by hand, as the pipeline's InfraValidator step does.

    python -m next_category.components.infra_validator --saved_model_dir=PATH \\
        --examples='data/default/span-1/*.tfrecord.gz' --num_examples=200

Prints the verdict and the latency table; `--output_json` keeps the measurements.
"""

import argparse
import json
import os
import sys
import tempfile
from typing import Optional
from typing import Sequence

from next_category.components.infra_validator import executor


def main(argv: Optional[Sequence[str]] = None) -> int:
  defaults = executor.Options()
  parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  parser.add_argument("--saved_model_dir", required=True, help="The SavedModel to serve.")
  parser.add_argument(
    "--examples", required=True, help="TFRecord file, directory or glob of tf.Examples."
  )
  parser.add_argument("--num_examples", type=int, default=defaults.num_examples)
  parser.add_argument("--load_timeout_seconds", type=float, default=defaults.load_timeout_seconds)
  parser.add_argument("--max_abs_difference", type=float, default=defaults.max_abs_difference)
  parser.add_argument("--output_json", default="", help="Also write the measurements here.")
  args = parser.parse_args(argv)
  if args.num_examples < 1:
    parser.error(f"--num_examples must be at least 1, got {args.num_examples}.")
  if not os.path.isdir(args.saved_model_dir):
    parser.error(f"--saved_model_dir {args.saved_model_dir} is not a directory.")
  options = executor.Options(
    num_examples=args.num_examples,
    load_timeout_seconds=args.load_timeout_seconds,
    max_abs_difference=args.max_abs_difference,
  )
  with tempfile.TemporaryDirectory() as scratch:
    log_path = os.path.join(scratch, executor.SERVER_LOG_FILE)
    measurements = executor.validate(args.saved_model_dir, args.examples, log_path, options)
  print(measurements["reason"])
  latency = measurements.get("latency_ms", {})
  rows = [(api, latency[api]) for api in ("predict", "classify") if latency.get(api)]
  if rows:
    print(f"\n{'API':<10} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8}")
    queried = measurements["queries"]
    for api, values in rows:
      count = queried[f"{api}_requests"]
      print(f"{api:<10} {count:>8} {values['p50']:>8.2f} {values['p99']:>8.2f}")
  if args.output_json:
    with open(args.output_json, "w") as f:
      json.dump(measurements, f, indent=2, sort_keys=True)
  return 0 if measurements["blessed"] else 1


if __name__ == "__main__":
  sys.exit(main())
