"""Benchmark: the best accuracy any model can reach on the generated data (Bayes-optimal).

The generator knows p(label | example) (`next_category.dataset.clickstream.LabelModel`);
ranking the classes by it is the Bayes-optimal classifier. This scores it on
the examples the generator writes for a seed, a size and a schema (all of
them, or every file of an existing data root), so a model's accuracy can be
read against the best possible on the same data.

Writes bench/results/bayes.json and prints a table.

Usage: python -m bench.bayes [--num_examples 50000] [--seed 42] [--schema_path PATH]
           [--data_root DIR] [--output FILE]
"""

import argparse
import glob
import json
import os
import sys
from typing import Dict
from typing import Iterable

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from next_category import contract  # noqa: E402
from next_category.dataset import clickstream  # noqa: E402

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUTPUT = os.path.join(_PROJECT_ROOT, "bench", "results", "bayes.json")
_BATCH = 4096


def top_k_hits(probabilities: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Whether each label is among its row's k most probable classes (ties: lower class first)."""
  order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
  return (order == labels[:, None]).any(axis=1)


def score(
  examples: Iterable[tf.train.Example], label_model: clickstream.LabelModel
) -> Dict[str, float]:
  """Top-1 and top-3 accuracy of the Bayes-optimal classifier on `examples`."""
  label = label_model.data_contract.label.name
  top_1 = top_3 = count = 0
  batch = []

  def flush():
    nonlocal top_1, top_3, count
    labels = np.array([e.features.feature[label].int64_list.value[0] for e in batch])
    probabilities = label_model.probabilities_of_examples(batch)
    top_1 += int(top_k_hits(probabilities, labels, 1).sum())
    top_3 += int(top_k_hits(probabilities, labels, 3).sum())
    count += len(batch)
    batch.clear()

  for example in examples:
    batch.append(example)
    if len(batch) == _BATCH:
      flush()
  if batch:
    flush()
  if not count:
    raise ValueError("There are no examples to score.")
  return {"examples": count, "top_1": top_1 / count, "top_3": top_3 / count}


def _read_examples(data_root: str) -> Iterable[tf.train.Example]:
  files = sorted(glob.glob(os.path.join(data_root, "**", "*.gz"), recursive=True))
  if not files:
    raise FileNotFoundError(f"No *.gz TFRecord files under {data_root}.")
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    yield tf.train.Example.FromString(record.numpy())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num_examples", type=int, default=clickstream.DEFAULT_NUM_EXAMPLES)
  parser.add_argument("--seed", type=int, default=clickstream.DEFAULT_SEED)
  parser.add_argument("--schema_path", default=contract.DEFAULT_SCHEMA_PATH)
  parser.add_argument(
    "--data_root",
    default=None,
    help="Score the generated examples already written here instead of generating them.",
  )
  parser.add_argument("--output", default=_OUTPUT)
  args = parser.parse_args(argv)
  if args.num_examples < 1:
    parser.error(f"--num_examples must be positive, got {args.num_examples}.")
  try:
    data_contract = contract.load(args.schema_path)
    label_model = clickstream.LabelModel(data_contract)
    if args.data_root:
      examples = _read_examples(args.data_root)
    else:
      examples = clickstream.generate_examples(args.num_examples, args.seed, None, data_contract)
    result = score(examples, label_model)
  except (OSError, ValueError, contract.ContractError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  result.update(
    {
      "seed": args.seed,
      "schema_path": os.path.relpath(os.path.abspath(args.schema_path), _PROJECT_ROOT),
      "data_root": args.data_root,
    }
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  source = args.data_root or f"generated, seed {args.seed}"
  print("| data | examples | Bayes top-1 | Bayes top-3 |\n| --- | --- | --- | --- |")
  print(f"| {source} | {result['examples']:,} | {result['top_1']:.4f} | {result['top_3']:.4f} |")
  print(f"Wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
