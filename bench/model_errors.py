"""Error analysis: where the model falls short of the best possible on the generated data.

Scores a pipeline run's model on its eval split next to the generator's
Bayes-optimal classifier (`next_category.dataset.clickstream.LabelModel`), and breaks both
down by what the generator's label depends on: how often the last item was
seen in training (rare items), whether the model predicts the last item's
successor category (the relation the label mostly follows), the city tier,
and the history's length. Writes bench/results/model_errors.json and prints
the tables (docs/model.md reads them).

Usage: python -m bench.model_errors [--output_root artifacts] [--output FILE]
       python -m bench.model_errors --model_dir DIR --train_files GLOB --eval_files GLOB
"""

import argparse
import collections
import glob
import json
import os
import sys
from typing import Dict
from typing import List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench import bayes  # noqa: E402
from bench.quality import run_outputs  # noqa: E402
from next_category import contract  # noqa: E402
from next_category.dataset import clickstream  # noqa: E402

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OUTPUT = os.path.join(_PROJECT_ROOT, "bench", "results", "model_errors.json")
# Buckets of how often the eval example's last item occurs in the train split's histories.
_SEEN_BUCKETS = ((0, 0), (1, 4), (5, 19), (20, 99), (100, None))
# Histories up to this long are the generator's new users.
_SHORT_HISTORY = 8


def _records(pattern: str) -> List[bytes]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  files = sorted(glob.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No files match {pattern}.")
  return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _row(name: str, mask: np.ndarray, model_hits: np.ndarray, bayes_hits: np.ndarray, extra=None):
  n = int(mask.sum())
  row = {
    "group": name,
    "share": n / len(mask),
    "model_top_1": float(model_hits[mask].mean()) if n else None,
    "bayes_top_1": float(bayes_hits[mask].mean()) if n else None,
  }
  if n and extra is not None:
    row["predicts_successor"] = float(extra[mask].mean())
  # Points of the overall gap this group accounts for.
  row["gap_points"] = 100 * float((bayes_hits[mask].sum() - model_hits[mask].sum()) / len(mask))
  return row


def analyse(
  train_records: List[bytes], eval_records: List[bytes], model_dir: str, schema_path: str
) -> Dict[str, object]:
  """The model and the Bayes-optimal classifier on the eval split, overall and by group."""
  data_contract = contract.load(schema_path)
  label_model = clickstream.LabelModel(data_contract)
  train = run_outputs.parse_split(train_records, data_contract)
  evaluation = run_outputs.parse_split(eval_records, data_contract)
  labels = evaluation.labels
  model_p = run_outputs.model_scores(model_dir, eval_records)
  tier_index = 1 if len(data_contract.context) > 1 else None
  tiers = [c[tier_index] if tier_index is not None else "" for c in evaluation.context]
  bayes_p = label_model.probabilities(evaluation.sequences, tiers)
  model_hits = bayes.top_k_hits(model_p, labels, 1)
  bayes_hits = bayes.top_k_hits(bayes_p, labels, 1)
  last_items = np.array([s[-1] for s in evaluation.sequences])
  last_category = label_model.category(last_items)
  successor = label_model.successor[last_category]
  predicted = model_p.argmax(axis=1)
  predicts_successor = predicted == successor
  seen = collections.Counter(item for s in train.sequences for item in s)
  seen_last = collections.Counter(s[-1] for s in train.sequences)
  times_seen = np.array([seen[i] for i in last_items])
  by_seen = []
  for low, high in _SEEN_BUCKETS:
    mask = (times_seen >= low) & (times_seen <= (high if high is not None else np.inf))
    name = f"{low}" if low == high else (f"{low}+" if high is None else f"{low}-{high}")
    by_seen.append(_row(name, mask, model_hits, bayes_hits, predicts_successor))
  tier_rows = [
    _row(t, np.array([x == t for x in tiers]), model_hits, bayes_hits, predicts_successor)
    for t in sorted(set(tiers))
  ]
  lengths = np.array([len(s) for s in evaluation.sequences])
  length_rows = [
    _row(
      f"1-{_SHORT_HISTORY}", lengths <= _SHORT_HISTORY, model_hits, bayes_hits, predicts_successor
    ),
    _row(
      f"{_SHORT_HISTORY + 1}+", lengths > _SHORT_HISTORY, model_hits, bayes_hits, predicts_successor
    ),
  ]
  # What the model predicts when it does not predict the successor.
  other = ~predicts_successor
  kinds = {
    "successor of the last item's category": float(predicts_successor.mean()),
    "the last item's own category": float((other & (predicted == last_category)).mean()),
    "another category": float((other & (predicted != last_category)).mean()),
  }
  return {
    "examples": len(labels),
    "model_top_1": float(model_hits.mean()),
    "model_top_3": float(bayes.top_k_hits(model_p, labels, 3).mean()),
    "bayes_top_1": float(bayes_hits.mean()),
    "bayes_top_3": float(bayes.top_k_hits(bayes_p, labels, 3).mean()),
    "model_predicts": kinds,
    "last_item_never_last_in_train": float(np.mean([seen_last[i] == 0 for i in last_items])),
    "by_times_last_item_seen_in_train": by_seen,
    "by_tier": tier_rows,
    "by_history_length": length_rows,
  }


def _print_table(title: str, rows: List[Dict[str, object]]) -> None:
  print(f"\n{title}\n| group | share | model top-1 | Bayes top-1 | predicts successor | gap (pt) |")
  print("| --- | --- | --- | --- | --- | --- |")
  for r in rows:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(
      f"| {r['group']} | {r['share']:.3f} | {fmt(r['model_top_1'])} | {fmt(r['bayes_top_1'])} | "
      f"{fmt(r.get('predicts_successor'))} | {r['gap_points']:.2f} |"
    )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_root", default=os.path.join(_PROJECT_ROOT, "artifacts"))
  parser.add_argument("--schema_path", default=contract.DEFAULT_SCHEMA_PATH)
  parser.add_argument("--model_dir", help="A SavedModel, instead of the run's.")
  parser.add_argument(
    "--train_files", help="GZIP TFRecords (glob), instead of the run's train split."
  )
  parser.add_argument(
    "--eval_files", help="GZIP TFRecords (glob), instead of the run's eval split."
  )
  parser.add_argument("--output", default=_OUTPUT)
  args = parser.parse_args(argv)
  try:
    if args.model_dir and args.train_files and args.eval_files:
      model_dir = args.model_dir
      train_records, eval_records = _records(args.train_files), _records(args.eval_files)
    else:
      outputs = run_outputs.read(args.output_root, "next_category")
      model_dir = args.model_dir or outputs.model_dir
      train_records = run_outputs.serialized_examples(outputs.examples_uri, "train")
      eval_records = run_outputs.serialized_examples(outputs.examples_uri, "eval")
    result = analyse(train_records, eval_records, model_dir, args.schema_path)
  except (OSError, ValueError, contract.ContractError) as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 1
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(result, f, indent=2)
  print(
    f"{result['examples']:,} eval examples: model top-1 {result['model_top_1']:.4f} "
    f"top-3 {result['model_top_3']:.4f}; Bayes top-1 {result['bayes_top_1']:.4f} "
    f"top-3 {result['bayes_top_3']:.4f}"
  )
  print(
    "The model predicts: " + ", ".join(f"{k} {v:.3f}" for k, v in result["model_predicts"].items())
  )
  _print_table(
    "By how often the last item occurs in the train split",
    result["by_times_last_item_seen_in_train"],
  )
  _print_table("By city tier", result["by_tier"])
  _print_table("By history length", result["by_history_length"])
  print(f"Wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
