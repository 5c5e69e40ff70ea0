"""Benchmarks serving's TensorProto conversions against TensorFlow's stock ones.

    python -m bench.tensors_bench [--repeats=5] [--number=2000]

Side by side in one process, microseconds per call (best of `repeats`):
reading request tensors with `next_category.serving.apis.tensors.to_ndarray` against
`tf.make_ndarray`, and writing outputs with
`next_category.serving.apis.tensors.fill_tensor_proto` (typed `*_val` fields, TensorFlow
Serving's default) against `tf.make_tensor_proto` (`tensor_content`). Every
pair is first checked to give the same values. Writes bench/results/tensors.json and prints a table.
"""

import argparse
import json
import os
import sys
import timeit
from typing import Callable
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from next_category.serving.apis import tensors
from next_category.serving.testdata import make_canned_models

RESULTS_PATH = os.path.join("bench", "results", "tensors.json")


def _microseconds(fn: Callable[[], object], repeats: int, number: int) -> float:
  return min(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def _request_tensors() -> dict:
  examples = make_canned_models.make_examples(8)
  typed = tf.make_tensor_proto(0, dtype=tf.int64, shape=[8, 50])
  typed.ClearField("int64_val")
  typed.int64_val.extend(range(400))
  return {
    "examples[1] string_val": tf.make_tensor_proto(examples[:1], dtype=tf.string),
    "examples[8] string_val": tf.make_tensor_proto(examples, dtype=tf.string),
    "int64[8,50] tensor_content": tf.make_tensor_proto(
      np.arange(400, dtype=np.int64).reshape(8, 50)
    ),
    "int64[8,50] int64_val": typed,
  }


def run_benchmark(repeats: int, number: int) -> dict:
  """Times every conversion; returns the report."""
  reads = []
  for name, proto in _request_tensors().items():
    served, stock = tensors.to_ndarray(proto, "x"), tf.make_ndarray(proto)
    np.testing.assert_array_equal(served, stock)
    reads.append(
      {
        "tensor": name,
        "serving_us": _microseconds(lambda p=proto: tensors.to_ndarray(p, "x"), repeats, number),
        "tf_make_ndarray_us": _microseconds(lambda p=proto: tf.make_ndarray(p), repeats, number),
      }
    )
  writes = []
  rng = np.random.default_rng(0)
  for shape in ([1, 10], [8, 10], [32, 10]):
    array = rng.random(shape, np.float32)

    def typed(array=array):
      proto = tensor_pb2.TensorProto()
      tensors.fill_tensor_proto(array, proto)
      return proto

    np.testing.assert_array_equal(tf.make_ndarray(typed()), array)
    writes.append(
      {
        "output": f"float32{shape}",
        "serving_us": _microseconds(typed, repeats, number),
        "tf_make_tensor_proto_us": _microseconds(
          lambda a=array: tf.make_tensor_proto(a), repeats, number
        ),
      }
    )
  return {"repeats": repeats, "number": number, "reads": reads, "writes": writes}


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.tensors_bench", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--repeats", type=int, default=5, help="Timing repeats (best is kept).")
  parser.add_argument("--number", type=int, default=2000, help="Calls per repeat.")
  parser.add_argument("--output", default=RESULTS_PATH, help="The JSON report.")
  args = parser.parse_args(argv)
  report = run_benchmark(args.repeats, args.number)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"{'request tensor':28} {'serving us':>10} {'tf.make_ndarray us':>18}")
  for row in report["reads"]:
    print(f"{row['tensor']:28} {row['serving_us']:10.2f} {row['tf_make_ndarray_us']:18.2f}")
  print(f"{'output':28} {'serving us':>10} {'tf.make_tensor_proto us':>23}")
  for row in report["writes"]:
    print(f"{row['output']:28} {row['serving_us']:10.2f} {row['tf_make_tensor_proto_us']:23.2f}")
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
