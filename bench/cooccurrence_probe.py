"""How well the Trainer's co-occurrence vectors alone tell an item's category.

    python -m bench.cooccurrence_probe [--num_examples=50000] [--power_iterations=2,4,6]

Generates the default data (seed 42), takes the first 80% as the train split's
histories, makes the vectors as the Trainer does
(`components/trainer/cooccurrence.py`), and classifies every item by the
nearest centroid of the vectors of items that occur 100 times or more, per
category (the generator's own item categories). Prints, by how often an item
occurs, how often that is its category, for each number of power iterations.
Writes bench/results/cooccurrence_probe.json. See docs/model.md.
"""

import argparse
import json
import os
import sys
from typing import Optional
from typing import Sequence

import numpy as np

from next_category import contract
from next_category.components.trainer import cooccurrence
from next_category.dataset import clickstream

RESULTS_PATH = os.path.join("bench", "results", "cooccurrence_probe.json")
_BUCKETS = ((1, 5), (5, 20), (20, 100), (100, None))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.cooccurrence_probe", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--num_examples", type=int, default=clickstream.DEFAULT_NUM_EXAMPLES)
  parser.add_argument("--dim", type=int, default=32)
  parser.add_argument("--power_iterations", default="2,4,6")
  parser.add_argument("--output", default=RESULTS_PATH)
  args = parser.parse_args(argv)
  data_contract = contract.load()
  name = data_contract.sequence.name
  histories = [
    list(example.features.feature[name].int64_list.value)
    for example in clickstream.generate_examples(args.num_examples)
  ]
  train = histories[: len(histories) * 4 // 5]
  padded = np.zeros((len(train), max(map(len, train))), np.int64)
  for row, history in zip(padded, train, strict=True):
    row[: len(history)] = history
  batches = [padded[i : i + 4096] for i in range(0, len(padded), 4096)]
  vocabulary = data_contract.sequence.max_id + 1
  categories = clickstream.LabelModel(data_contract).category(np.arange(vocabulary))
  occurrences = np.bincount(padded.ravel(), minlength=vocabulary)
  occurrences[0] = 0
  frequent = occurrences >= 100
  report = {"num_examples": args.num_examples, "dim": args.dim, "rows": []}
  header = " ".join(f"{'iter ' + i:>8}" for i in args.power_iterations.split(","))
  print(f"{'occurs':>8} {'items':>6} {header}")
  accuracy = {}
  for iterations in (int(i) for i in args.power_iterations.split(",")):
    cooccurrence._POWER_ITERATIONS = iterations
    vectors = cooccurrence.item_vectors(batches, vocabulary, args.dim)
    centroids = np.stack(
      [vectors[frequent & (categories == c)].mean(0) for c in range(categories.max() + 1)]
    )
    told = np.argmax(vectors @ centroids.T, axis=1) == categories
    for low, high in _BUCKETS:
      items = (occurrences >= low) & (occurrences < (high or np.inf))
      accuracy.setdefault((low, high), {})[iterations] = float(told[items].mean())
  for (low, high), by_iterations in accuracy.items():
    items = int(((occurrences >= low) & (occurrences < (high or np.inf))).sum())
    label = f"{low}-{high - 1}" if high else f"{low}+"
    report["rows"].append({"occurs": label, "items": items, "told_right": by_iterations})
    print(f"{label:>8} {items:>6} " + " ".join(f"{v:>8.3f}" for v in by_iterations.values()))
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
