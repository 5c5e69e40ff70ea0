"""Tests of the runner's pre-flight check: each bad file is named before anything runs."""

import gzip
import os
import shutil

import pytest

from next_category.pipeline import configs
from next_category.pipeline.run import beam_runner
from next_category.pipeline.run import preflight
from tests.testing import bad_examples

_PATTERN = "span-{SPAN}/*"


def _check(root, span=None):
  return preflight.check_input(str(root), _PATTERN, configs.SCHEMA_PATH, span=span)


def _span(root, span, name="data.tfrecord", examples=None, compression=None):
  os.makedirs(root / f"span-{span}", exist_ok=True)
  examples = examples if examples is not None else [bad_examples.example()] * 10
  return bad_examples.write(str(root / f"span-{span}" / name), examples, compression)


def test_latest_span_and_the_previous_one_are_checked(tmp_path):
  _span(tmp_path, 1)
  _span(tmp_path, 3, "a.tfrecord.gz", compression="GZIP")
  # Plain and GZIP files side by side: compression is chosen per file by
  # extension, as ImportExampleGen (Beam) chooses it, so both are read.
  _span(tmp_path, 3, "b.tfrecord", examples=[bad_examples.example()] * 5)
  checked = _check(tmp_path)
  assert [(c.span, len(c.files), c.examples) for c in checked] == [(3, 2, 15), (1, 1, 10)]
  assert [(c.span, c.examples) for c in _check(tmp_path, span=1)] == [(1, 10)]


def test_empty_data_root(tmp_path):
  with pytest.raises(preflight.BadInputError, match=f"Data root {tmp_path} is empty; expected"):
    _check(tmp_path)


def test_no_span_directory(tmp_path):
  bad_examples.write(str(tmp_path / "data.tfrecord"), [bad_examples.example()])
  with pytest.raises(
    preflight.BadInputError,
    match=f"Data root {tmp_path} holds no span: expected TFRecord files as {tmp_path}/span-N/",
  ):
    _check(tmp_path)


def test_only_empty_span_directories(tmp_path):
  os.makedirs(tmp_path / "span-1")
  with pytest.raises(preflight.BadInputError, match=r"No span under .* holds files: span-1/"):
    _check(tmp_path)


def test_empty_latest_span_would_be_skipped_silently(tmp_path):
  _span(tmp_path, 1)
  os.makedirs(tmp_path / "span-2")
  with pytest.raises(
    preflight.BadInputError,
    match=r"span-2 is empty, so the pipeline would silently ingest span 1 instead",
  ):
    _check(tmp_path)


def test_span_of_empty_files(tmp_path):
  _span(tmp_path, 1, examples=[])
  with pytest.raises(
    preflight.BadInputError, match=r"Span 1 under .* holds no examples: its 1 file\(s\) are empty"
  ):
    _check(tmp_path)


def test_pinned_span_that_does_not_exist(tmp_path):
  _span(tmp_path, 1)
  with pytest.raises(
    preflight.BadInputError, match=r"Span 4 under .* does not exist; spans with files: 1"
  ):
    _check(tmp_path, span=4)


def test_truncated_file_is_named(tmp_path):
  path = _span(tmp_path, 1)
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:-9])
  with pytest.raises(preflight.BadInputError, match=f"{path} is truncated .truncated record at"):
    _check(tmp_path)


def test_truncated_gzip_file_is_named(tmp_path):
  # tf.data and Beam read every whole record of a GZIP file cut short.
  path = _span(tmp_path, 1, "data.tfrecord.gz", compression="GZIP")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 8)
  with pytest.raises(preflight.BadInputError, match=f"{path} is truncated: its GZIP stream ends"):
    _check(tmp_path)


def test_tiny_file_that_is_not_tfrecord_is_named(tmp_path):
  os.makedirs(tmp_path / "span-1")
  path = tmp_path / "span-1" / "ids.txt"
  path.write_text("1,2,3\n")
  with pytest.raises(preflight.BadInputError, match=f"{path} is not a TFRecord file .its bytes"):
    _check(tmp_path)


def test_file_that_is_not_tfrecord_is_named(tmp_path):
  os.makedirs(tmp_path / "span-1")
  path = tmp_path / "span-1" / "clicks.csv"
  path.write_text("item_history,user_segment,city_tier,label\n5 6,new,tier1,3\n")
  with pytest.raises(preflight.BadInputError, match=f"{path} is not a TFRecord file"):
    _check(tmp_path)


def test_gzip_file_without_gz_extension_is_refused(tmp_path):
  path = _span(tmp_path, 1, "data.tfrecord", compression="GZIP")
  with pytest.raises(
    preflight.BadInputError,
    match=f"{path} is GZIP-compressed but its name does not end in .gz.*rename it to {path}.gz",
  ):
    _check(tmp_path)


def test_plain_file_named_gz_is_refused(tmp_path):
  path = _span(tmp_path, 1, "data.tfrecord.gz")
  with pytest.raises(preflight.BadInputError, match=f"{path} is named .gz but is not GZIP"):
    _check(tmp_path)


def test_other_compression_is_refused(tmp_path):
  path = _span(tmp_path, 1, "data.tfrecord")
  shutil.move(path, path + ".bz2")
  with pytest.raises(preflight.BadInputError, match=r"compression '.bz2' is not supported"):
    _check(tmp_path)


def test_gzip_of_a_text_file_is_not_tfrecord(tmp_path):
  os.makedirs(tmp_path / "span-1")
  path = tmp_path / "span-1" / "notes.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"hello, not a TFRecord\n")
  with pytest.raises(preflight.BadInputError, match=f"{path} is not a TFRecord file"):
    _check(tmp_path)


@pytest.mark.parametrize(
  "bad, feature, found, expected",
  [
    (bad_examples.example(item_history=(5.0,)), "item_history", "float_list", "int64_list"),
    (bad_examples.example(label=(b"3",)), "label", "bytes_list", "int64_list"),
  ],
  ids=["float_item_ids", "bytes_label"],
)
def test_wrong_typed_feature_is_named_with_its_file(tmp_path, bad, feature, found, expected):
  path = _span(tmp_path, 1, examples=[bad_examples.example()] * 3 + [bad])
  with pytest.raises(
    preflight.BadInputError,
    match=f"{path}: record 4 holds feature '{feature}' as {found}, but the schema says {expected}",
  ):
    _check(tmp_path)


def test_runner_exits_2_with_the_message_before_running_anything(tmp_path, capsys):
  data_root = tmp_path / "data"
  os.makedirs(data_root)
  code = beam_runner.main([f"--data_root={data_root}", f"--output_root={tmp_path}/out"])
  assert code == 2
  assert f"ERROR: Data root {data_root} is empty" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")
