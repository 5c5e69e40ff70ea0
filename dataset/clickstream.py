"""Seeded generator of the synthetic e-commerce clickstream (the default dataset).

Each example is one user's recent item history and the category of the item they
buy next. The generating process has the structure the model is meant to learn:

* items belong to one of the label's classes (categories), with Zipf-like
  popularity inside each category, so a few items per category carry most of
  the traffic;
* a session drifts between categories as a Markov chain: it mostly stays, often
  moves on to the category's fixed "successor" (phone -> phone case), and
  otherwise jumps to a category drawn from the user's city-tier mix;
* the next purchase follows the same chain from the *last* item's category, so
  recent items matter more than old ones and order matters: a bag of items
  cannot tell which category the session is in now;
* new users have short histories, returning users long ones;
* each city tier has its own category mix.

Everything about the data's shape comes from a data contract (`contract`,
read from a schema; the default schema by default): feature names, the id
range, history lengths, the number of categories and the vocabularies. The
contract's first categorical context feature plays the user segment (its
first value is "new": short histories), the second the city tier (one
category mix per value); further ones are drawn uniformly. So the generator
writes data for any schema that fits the contract's rules, which is how the
tests try the pipeline on other schemas.

The generator is pure NumPy with an explicit seed, so the same seed always gives
byte-identical TFRecord files.
"""

import dataclasses
import os
from typing import Iterator
from typing import List
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from next_category import contract

DEFAULT_NUM_EXAMPLES = 50_000
DEFAULT_NUM_SHARDS = 4
DEFAULT_SEED = 42


@dataclasses.dataclass(frozen=True)
class Drift:
  """How far a span's distribution moves away from the default one.

  Each field is a strength in [0, 1]; 0 leaves that part of the generating
  process unchanged. Used to write later spans that demonstrate drift checks.

  Attributes:
    segment_mix: shifts users towards the `new` segment.
    category_mix: rotates every city tier's category mix towards other
      categories.
    history_length: shortens histories of returning users.
  """

  segment_mix: float = 0.0
  category_mix: float = 0.0
  history_length: float = 0.0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"Drift.{field.name} must be between 0 and 1, got {value}.")


@dataclasses.dataclass(frozen=True)
class _World:
  """The fixed structure shared by every example of one seed."""

  item_category: np.ndarray  # [max_id + 1] category of each item id.
  category_items: List[np.ndarray]  # Item ids per category, by popularity.
  category_item_cdf: List[np.ndarray]  # Cumulative Zipf weights of the above.
  successor: np.ndarray  # [num_categories] next category along a path.
  tier_cdf: np.ndarray  # [tiers, num_categories] cumulative mix.


def _num_tiers(data_contract: contract.DataContract) -> int:
  return len(data_contract.context[1].vocabulary) if len(data_contract.context) > 1 else 1


def _make_world(
  rng: np.random.Generator, drift: Drift, data_contract: contract.DataContract
) -> _World:
  sequence = data_contract.sequence
  num_categories = data_contract.label.num_classes
  num_items = sequence.max_id - sequence.min_id + 1
  if num_items < num_categories:
    raise ValueError(
      f"The generator needs at least one item id per category: ids {sequence.min_id}.."
      f"{sequence.max_id} cannot cover {num_categories} categories."
    )
  item_ids = rng.permutation(np.arange(sequence.min_id, sequence.max_id + 1))
  # Categories differ in size as well as popularity.
  sizes = rng.dirichlet(np.full(num_categories, 4.0))
  bounds = np.round(np.cumsum(sizes) * num_items).astype(int)
  bounds[-1] = num_items
  # Every category keeps at least one item (a no-op unless ids are few).
  for i in range(num_categories - 1):
    bounds[i] = min(
      max(bounds[i], bounds[i - 1] + 1 if i else 1), num_items - num_categories + i + 1
    )
  splits = np.split(item_ids, bounds[:-1])
  item_category = np.zeros(sequence.max_id + 1, dtype=np.int64)
  category_item_cdf = []
  for category, items in enumerate(splits):
    item_category[items] = category
    ranks = np.arange(1, len(items) + 1, dtype=np.float64)
    weights = 1.0 / ranks**1.1
    category_item_cdf.append(np.cumsum(weights / weights.sum()))
  successor = rng.permutation(num_categories)
  # A successor must differ from its category, or "move on" would be "stay".
  for category in range(num_categories):
    if successor[category] == category:
      successor[category] = (category + 1) % num_categories
  tier_mix = rng.dirichlet(np.full(num_categories, 0.8), size=_num_tiers(data_contract))
  if drift.category_mix:
    shifted = np.roll(tier_mix, shift=3, axis=1)
    tier_mix = (1 - drift.category_mix) * tier_mix + drift.category_mix * shifted
  return _World(item_category, splits, category_item_cdf, successor, np.cumsum(tier_mix, axis=1))


def _sample(rng: np.random.Generator, cdf: np.ndarray) -> int:
  # searchsorted on a cumulative table is ~10x faster than rng.choice(p=...).
  return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)


# Transition probabilities of the session chain: stay, move to the successor,
# or jump to a category drawn from the tier mix.
_P_STAY = 0.55
_P_SUCCESSOR = 0.3
# The next purchase leans more on the successor than browsing does.
_P_LABEL_STAY = 0.15
_P_LABEL_SUCCESSOR = 0.65


def _next_category(rng, world, category, tier, p_stay, p_successor) -> int:
  u = rng.random()
  if u < p_stay:
    return category
  if u < p_stay + p_successor:
    return int(world.successor[category])
  return _sample(rng, world.tier_cdf[tier])


def _draw_item(rng, world, category) -> int:
  return int(world.category_items[category][_sample(rng, world.category_item_cdf[category])])


def generate_examples(
  num_examples: int,
  seed: int = DEFAULT_SEED,
  drift: Optional[Drift] = None,
  data_contract: Optional[contract.DataContract] = None,
) -> Iterator[tf.train.Example]:
  """Yields `num_examples` clickstream examples, deterministic for `seed`.

  Args:
    num_examples: how many examples to generate.
    seed: the random seed; the same seed always yields the same examples.
    drift: optional shift of the distribution (see `Drift`).
    data_contract: the features to write; None for the default schema's.

  Yields:
    `tf.train.Example` protos with the contract's sequence, context features
    and label (README: Data contract).

  Raises:
    ValueError: if `num_examples` is negative, or the contract has fewer ids
      than categories.
  """
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}.")
  drift = drift or Drift()
  data_contract = data_contract or contract.load()
  rng = np.random.default_rng(seed)
  # Every seed shares one world (item categories, successors, tier mixes), so
  # spans differ by their users and by `drift` only, never by what there is to
  # learn. The seed's own world is still drawn, and dropped, so that `rng`
  # continues as before and seed 42 writes the same files as ever.
  _make_world(rng, drift, data_contract)
  world = _make_world(np.random.default_rng(DEFAULT_SEED), drift, data_contract)
  p_new = 0.35 + 0.5 * drift.segment_mix
  # Tier i is drawn with weight (tiers - i): 0.4, 0.3, 0.2, 0.1 for four.
  tier_weights = np.arange(_num_tiers(data_contract), 0, -1)
  tier_cdf = np.cumsum(tier_weights / tier_weights.sum())
  sequence = data_contract.sequence
  shortest_new = sequence.min_length
  longest_new = max(shortest_new, min(8, sequence.max_length))
  shortest_returning = max(sequence.min_length, min(5, sequence.max_length))
  vocabularies = [f.vocabulary for f in data_contract.context]
  for _ in range(num_examples):
    is_new = rng.random() < p_new
    tier = _sample(rng, tier_cdf)
    if is_new:
      length = int(rng.integers(shortest_new, longest_new + 1))
    else:
      longest = int(round(sequence.max_length * (1 - 0.7 * drift.history_length)))
      length = int(rng.integers(shortest_returning, max(shortest_returning, longest) + 1))
    category = _sample(rng, world.tier_cdf[tier])
    history = []
    for _ in range(length):
      history.append(_draw_item(rng, world, category))
      category = _next_category(rng, world, category, tier, _P_STAY, _P_SUCCESSOR)
    last_category = int(world.item_category[history[-1]])
    label = _next_category(rng, world, last_category, tier, _P_LABEL_STAY, _P_LABEL_SUCCESSOR)
    context = []
    if vocabularies:
      segments = len(vocabularies[0])
      segment = 0 if is_new or segments == 1 else 1
      if not is_new and segments > 2:
        segment = 1 + int(rng.integers(segments - 1))
      context.append(vocabularies[0][segment])
    if len(vocabularies) > 1:
      context.append(vocabularies[1][tier])
    context += [vocabulary[int(rng.integers(len(vocabulary)))] for vocabulary in vocabularies[2:]]
    yield make_example(data_contract, history, context, label)


class LabelModel:
  """The generator's own p(label | example): what the best possible classifier knows.

  The label depends only on the last item's category c and the city tier:
  p(label) = 0.15·[label = c] + 0.65·[label = successor(c)]
  + 0.20·tier_mix[tier][label] (`_next_category` with the label's
  probabilities). Ranking classes by it is the Bayes-optimal classifier, so
  its accuracy on a set of examples is the best any model can score there
  (`bench/bayes.py`); its `category`, `successor` and `tier_of` name where a
  model's errors come from (`bench/model_errors.py`).

  Args:
    data_contract: the features; None for the default schema's.
    drift: the drift the examples were written with (its `category_mix`
      changes the tier mixes).

  Example:

  >>> label_model = LabelModel()
  >>> label_model.probabilities([[5, 17, 3]], ["tier1"]).shape
  (1, 10)
  """

  def __init__(
    self, data_contract: Optional[contract.DataContract] = None, drift: Optional[Drift] = None
  ):
    self.data_contract = data_contract or contract.load()
    self.drift = drift or Drift()
    self._world = _make_world(np.random.default_rng(DEFAULT_SEED), self.drift, self.data_contract)
    tier_cdf = self._world.tier_cdf
    self.tier_mix = np.diff(tier_cdf, axis=1, prepend=0.0)
    context = self.data_contract.context
    self._tiers = list(context[1].vocabulary) if len(context) > 1 else []

  @property
  def successor(self) -> np.ndarray:
    """[num_classes] the category a session most often moves on to from each one."""
    return self._world.successor

  def category(self, item_ids: np.ndarray) -> np.ndarray:
    """The category of each item id (ids outside the contract's range raise IndexError)."""
    return self._world.item_category[np.asarray(item_ids, dtype=np.int64)]

  def popularity_rank(self, item_ids: np.ndarray) -> np.ndarray:
    """Each item's rank by popularity inside its category (0 = the most popular)."""
    ranks = np.zeros(len(self._world.item_category), dtype=np.int64)
    for items in self._world.category_items:
      ranks[items] = np.arange(len(items))
    return ranks[np.asarray(item_ids, dtype=np.int64)]

  def tier_of(self, tiers: Sequence[str]) -> np.ndarray:
    """The tier index of each city-tier value (0 when the contract has no tier feature).

    Raises:
      ValueError: for a value that is not in the tier feature's vocabulary.
    """
    if not self._tiers:
      return np.zeros(len(tiers), dtype=np.int64)
    unknown = sorted(set(tiers) - set(self._tiers))
    if unknown:
      raise ValueError(f"Unknown city tier values {unknown}; expected some of {self._tiers}.")
    return np.array([self._tiers.index(t) for t in tiers], dtype=np.int64)

  def probabilities(self, histories: Sequence[Sequence[int]], tiers: Sequence[str]) -> np.ndarray:
    """[n, num_classes] p(label | history, tier) for each example.

    Args:
      histories: each example's item ids, oldest first.
      tiers: each example's city-tier value (ignored without a tier feature).
    """
    if len(histories) != len(tiers):
      raise ValueError(f"Got {len(histories)} histories but {len(tiers)} tiers.")
    last = self.category([history[-1] for history in histories])
    rows = np.arange(len(last))
    p = _P_LABEL_STAY + _P_LABEL_SUCCESSOR
    probabilities = (1 - p) * self.tier_mix[self.tier_of(tiers)]
    probabilities[rows, last] += _P_LABEL_STAY
    probabilities[rows, self.successor[last]] += _P_LABEL_SUCCESSOR
    return probabilities

  def probabilities_of_examples(self, examples: Sequence[tf.train.Example]) -> np.ndarray:
    """`probabilities` of tf.Examples with the contract's features."""
    sequence = self.data_contract.sequence.name
    histories = [list(e.features.feature[sequence].int64_list.value) for e in examples]
    if self._tiers:
      name = self.data_contract.context[1].name
      tiers = [e.features.feature[name].bytes_list.value[0].decode() for e in examples]
    else:
      tiers = [""] * len(examples)
    return self.probabilities(histories, tiers)


def make_example(
  data_contract: contract.DataContract,
  history: Sequence[int],
  context: Sequence[str],
  label: Optional[int] = None,
) -> tf.train.Example:
  """One tf.Example of the contract's features.

  Args:
    data_contract: the feature names.
    history: the sequence's ids.
    context: one value per context feature, in contract order.
    label: the class id; None leaves the label out, as serving requests do.
  """
  if len(context) != len(data_contract.context):
    names = [f.name for f in data_contract.context]
    raise ValueError(f"Expected one context value for each of {names}, got {list(context)}.")
  feature = {data_contract.sequence.name: _int64_feature(history)}
  for spec, value in zip(data_contract.context, context, strict=True):
    feature[spec.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
  if label is not None:
    feature[data_contract.label.name] = _int64_feature([label])
  return tf.train.Example(features=tf.train.Features(feature=feature))


def _int64_feature(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def write_span(
  data_root: str,
  span: int = 1,
  num_examples: int = DEFAULT_NUM_EXAMPLES,
  seed: int = DEFAULT_SEED,
  num_shards: int = DEFAULT_NUM_SHARDS,
  drift: Optional[Drift] = None,
  overwrite: bool = False,
  data_contract: Optional[contract.DataContract] = None,
) -> List[str]:
  """Writes one span of the dataset as GZIP TFRecord shards.

  Files go to `{data_root}/span-{span}/data-0000i-of-0000n.tfrecord.gz`, the
  layout the pipeline's ImportExampleGen reads.

  Args:
    data_root: the dataset's root directory.
    span: the span number (>= 1).
    num_examples: examples in the span.
    seed: the random seed.
    num_shards: how many files to spread the examples over.
    drift: optional distribution shift for this span.
    overwrite: replace an existing span directory instead of refusing.
    data_contract: the features to write; None for the default schema's.

  Returns:
    The paths written, in shard order.

  Raises:
    ValueError: for a bad span or shard count.
    FileExistsError: if the span directory already holds files and
      `overwrite` is False (existing data is never silently replaced).
  """
  if span < 1:
    raise ValueError(f"span must be >= 1, got {span}.")
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  span_dir = os.path.join(data_root, f"span-{span}")
  if tf.io.gfile.exists(span_dir) and tf.io.gfile.listdir(span_dir):
    if not overwrite:
      raise FileExistsError(f"{span_dir} already holds files; pass overwrite to replace them.")
    tf.io.gfile.rmtree(span_dir)
  tf.io.gfile.makedirs(span_dir)
  paths = [
    os.path.join(span_dir, f"data-{i:05d}-of-{num_shards:05d}.tfrecord.gz")
    for i in range(num_shards)
  ]
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  # Write to temporary names first so a crash never leaves a partial span that
  # the pipeline would pick up as the latest one.
  writers = [tf.io.TFRecordWriter(p + ".tmp", options) for p in paths]
  try:
    for i, example in enumerate(generate_examples(num_examples, seed, drift, data_contract)):
      writers[i % num_shards].write(example.SerializeToString())
  finally:
    for writer in writers:
      writer.close()
  for path in paths:
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)
  return paths
