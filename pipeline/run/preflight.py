"""Pre-flight check of the input files, in-process, before any component runs.

ImportExampleGen reads a span's files with Beam and fails on the first bad one
with an error that names no file ("Not a valid TFRecord"), and it silently
skips an empty latest span for the one before it. The runners call
`check_input` first: it lists the spans the pipeline will read (the ingested
span, and the previous one AnomalyGate compares it with), reads every record of
their files with tf.data, with compression chosen by file extension exactly as
Beam chooses it, and parses the first and last record of each file against the
schema's feature types. Each problem is a `BadInputError` naming the file.

Problems inside the examples (a missing label, out-of-domain values, wrong
lengths) are not looked for here: StatisticsGen and ExampleValidator see every
example, and AnomalyGate stops the run on them.
"""

import dataclasses
import os
import re
import zlib
from typing import Dict
from typing import List
from typing import Optional

import tensorflow as tf
from google.protobuf import message

from next_category import contract
from next_category.components.anomaly_gate import spans

_GZIP_MAGIC = b"\x1f\x8b"
# Extensions Beam (and so ImportExampleGen) reads as compressed; tf.data reads
# only GZIP of them, and the data contract allows only GZIP.
_OTHER_COMPRESSIONS = (".bz2", ".deflate", ".zst", ".zstd", ".xz", ".lzma")
_CONTRACT = (
  "the pipeline reads TFRecord files of serialized tf.Example, GZIP-compressed when the "
  "name ends in .gz (README: Data contract)"
)


class BadInputError(ValueError):
  """The input data cannot be read as the data contract says."""


@dataclasses.dataclass(frozen=True)
class SpanFiles:
  """One checked span.

  Attributes:
    span: the span number.
    files: its files.
    examples: how many records they hold.
  """

  span: int
  files: List[str]
  examples: int


def _span_dirs(data_root: str, input_pattern: str) -> Dict[int, str]:
  """Span directories, files or not, when `{SPAN}` names a directory."""
  parts = input_pattern.split("/")
  for depth, part in enumerate(parts[:-1]):
    if spans.SPAN_SPEC in part:
      pattern = "/".join(parts[: depth + 1])
      regex = re.compile(re.escape(part).replace(re.escape(spans.SPAN_SPEC), r"(\d+)") + "$")
      found = {}
      for path in tf.io.gfile.glob(os.path.join(data_root, pattern.replace(spans.SPAN_SPEC, "*"))):
        match = regex.match(os.path.basename(path))
        if match and tf.io.gfile.isdir(path):
          found[int(match.group(1))] = path
      return found
  return {}


def check_file(path: str, feature_kinds: Dict[str, str]) -> int:
  """Reads every record of one TFRecord file.

  Args:
    path: the file; GZIP-compressed if and only if its name ends in `.gz`.
    feature_kinds: feature name -> the `tf.train.Feature` kind the schema
      expects (`int64_list`, `float_list`, `bytes_list`).

  Returns:
    The number of records.

  Raises:
    BadInputError: naming the file and what is wrong with it.
  """
  lowered = path.lower()
  if lowered.endswith(_OTHER_COMPRESSIONS):
    raise BadInputError(
      f"{path}: compression {os.path.splitext(path)[1]!r} is not supported; {_CONTRACT}."
    )
  gzipped = lowered.endswith(".gz")
  with tf.io.gfile.GFile(path, "rb") as f:
    magic = f.read(2)
  if magic == _GZIP_MAGIC and not gzipped:
    raise BadInputError(
      f"{path} is GZIP-compressed but its name does not end in .gz, and the pipeline "
      f"(like ImportExampleGen) picks compression by extension: rename it to {path}.gz."
    )
  if gzipped and magic and magic != _GZIP_MAGIC:
    raise BadInputError(
      f"{path} is named .gz but is not GZIP-compressed: gzip it, or drop the .gz extension "
      "if it is a plain TFRecord file."
    )
  if gzipped and magic and not _gzip_stream_complete(path):
    # tf.data and Beam both read a GZIP file cut short without complaint as
    # long as its records are whole: a copy that stopped early would pass.
    raise BadInputError(
      f"{path} is truncated: its GZIP stream ends before its end marker; copy or write the "
      "file again."
    )
  records = tf.data.TFRecordDataset(path, compression_type="GZIP" if gzipped else "")
  try:
    count, last = records.reduce(
      (tf.constant(0, tf.int64), tf.constant(b"")), lambda state, record: (state[0] + 1, record)
    )
    count = int(count)
    first = next(iter(records.take(1))).numpy() if count else b""
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    reason = _reason(e.message)
    if "truncated" in reason:
      raise BadInputError(
        f"{path} is truncated ({reason}): copy or write the file again."
      ) from None
    raise BadInputError(f"{path} is not a TFRecord file ({reason}); {_CONTRACT}.") from None
  if not count and tf.io.gfile.stat(path).length:
    raise BadInputError(
      f"{path} is not a TFRecord file (its bytes hold no complete record); {_CONTRACT}."
    )
  if count:
    for number, record in ((1, first), (count, last.numpy())):
      _check_example(path, number, record, feature_kinds)
  return count


def _gzip_stream_complete(path: str) -> bool:
  decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
  with tf.io.gfile.GFile(path, "rb") as f:
    while not decompressor.eof:
      chunk = f.read(1 << 20)
      if not chunk:
        return False
      try:
        decompressor.decompress(chunk)
      except zlib.error:
        return False
  return True


def _reason(message_text: str) -> str:
  """The gist of a tf.data read error, without the op's name and device."""
  found = re.search(r"(truncated|corrupted) record at (\d+)", message_text)
  if found:
    return f"{found.group(1)} record at byte {found.group(2)}"
  message_text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message_text)
  return re.sub(r"\s*\[Op:\w+\].*$", "", message_text, flags=re.S).strip()


def _check_example(path: str, number: int, record: bytes, feature_kinds: Dict[str, str]) -> None:
  try:
    example = tf.train.Example.FromString(record)
  except message.DecodeError:
    raise BadInputError(
      f"{path}: record {number} is not a serialized tf.Example; {_CONTRACT}."
    ) from None
  for name, feature in sorted(example.features.feature.items()):
    kind = feature.WhichOneof("kind")
    expected = feature_kinds.get(name)
    if expected and kind and kind != expected:
      raise BadInputError(
        f"{path}: record {number} holds feature {name!r} as {kind}, but the schema says "
        f"{expected} (README: Data contract)."
      )


def check_input(
  data_root: str, input_pattern: str, schema_path: str, span: Optional[int] = None
) -> List[SpanFiles]:
  """Checks the files of the span the pipeline will ingest, and of the one before.

  Args:
    data_root: the data root (it exists).
    input_pattern: ImportExampleGen's pattern under `data_root`, with `{SPAN}`.
    schema_path: the schema, for the expected feature types.
    span: the span to ingest; None for the latest one.

  Returns:
    The ingested span, then the previous one if there is one.

  Raises:
    BadInputError: for an empty data root, no span, an empty latest or pinned
      span, or an unreadable file (naming it).
  """
  with_files = spans.files_by_span(data_root, input_pattern)
  span_dirs = _span_dirs(data_root, input_pattern)
  expected = f"{data_root}/{input_pattern.replace(spans.SPAN_SPEC, 'N')}"
  if not with_files:
    if not tf.io.gfile.listdir(data_root):
      raise BadInputError(
        f"Data root {data_root} is empty; expected TFRecord files as {expected} "
        "(`make data` writes the default dataset)."
      )
    if span_dirs:
      names = ", ".join(os.path.basename(d) + "/" for _, d in sorted(span_dirs.items()))
      raise BadInputError(f"No span under {data_root} holds files: {names} empty.")
    raise BadInputError(
      f"Data root {data_root} holds no span: expected TFRecord files as {expected}."
    )
  latest_dir = max(span_dirs) if span_dirs else 0
  if span is None:
    span = max(with_files)
    if latest_dir > span:
      raise BadInputError(
        f"{span_dirs[latest_dir]} is empty, so the pipeline would silently ingest span {span} "
        f"instead: add span {latest_dir}'s files, or remove the empty directory."
      )
  elif span not in with_files:
    present = ", ".join(str(s) for s in with_files)
    state = "is empty" if span in span_dirs else "does not exist"
    raise BadInputError(f"Span {span} under {data_root} {state}; spans with files: {present}.")
  kinds = contract.feature_kinds(schema_path)
  checked = []
  previous = spans.previous_span(data_root, input_pattern, span)
  for number, files in [(span, with_files[span])] + ([previous] if previous else []):
    examples = sum(check_file(path, kinds) for path in files)
    if not examples:
      raise BadInputError(
        f"Span {number} under {data_root} holds no examples: its {len(files)} file(s) are empty."
      )
    checked.append(SpanFiles(number, files, examples))
  return checked
