"""Reads the data contract from a tensorflow_metadata schema, by documented rules.

The schema is the only place the contract is written. Every feature of it has
one role, given by these rules (README: Data contract):

* the **label** is the feature absent from the SERVING environment (TFDV's
  environment rules: `in_environment`, or `default_environment` minus
  `not_in_environment`). It is an INT feature with an `int_domain` from 0 to
  `num_classes - 1`. Class names are the values of a top-level `string_domain`
  named like the label's `int_domain` (value i names class i); without one,
  class i is named `str(i)`;
* the **sequence** is the variable-length INT feature (its `value_count.max`
  is not 1): ids in `int_domain` [min, max], min >= 1 (0 is padding), at most
  `value_count.max` of them;
* every other feature is a **categorical context** feature: BYTES, single
  valued (`value_count.max` 1), with a `string_domain` (inline or by name) as
  its vocabulary. They are also the slice features, by default.

Features the schema marks deprecated or not in production
(`lifecycle_stage` PLANNED, ALPHA, DEBUG_ONLY, DEPRECATED, DISABLED) are left
out, as TFDV leaves them out of validation. The label and the sequence can be
named explicitly instead (`label_feature`, `sequence_feature`), as can the
slice features. A schema that fits none of this is a `ContractError` saying
which feature breaks which rule.
"""

import dataclasses
import json
import os
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

# The default dataset's schema, reviewed like code.
DEFAULT_SCHEMA_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas", "schema.pbtxt"
)
SERVING_ENVIRONMENT = "SERVING"
_VALUE_KINDS = {
  schema_pb2.INT: "int64_list",
  schema_pb2.FLOAT: "float_list",
  schema_pb2.BYTES: "bytes_list",
}
_NOT_IN_PRODUCTION = (
  schema_pb2.PLANNED,
  schema_pb2.ALPHA,
  schema_pb2.DEBUG_ONLY,
  schema_pb2.DEPRECATED,
  schema_pb2.DISABLED,
)
_RULES = "(README: Data contract)"


class ContractError(ValueError):
  """The schema does not fit the data contract's rules."""


@dataclasses.dataclass(frozen=True)
class SequenceFeature:
  """The variable-length id feature the model reads as a sequence.

  Attributes:
    name: the feature name.
    min_id: the smallest id (>= 1; 0 pads).
    max_id: the largest id.
    max_length: the most ids one example holds; longer histories keep their
      last `max_length`.
    min_length: the fewest ids one example holds.
  """

  name: str
  min_id: int
  max_id: int
  max_length: int
  min_length: int = 1


@dataclasses.dataclass(frozen=True)
class CategoricalFeature:
  """A single-valued string feature with a fixed vocabulary.

  Attributes:
    name: the feature name.
    vocabulary: its values, in schema order (index i encodes value i).
  """

  name: str
  vocabulary: Tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Label:
  """The class label.

  Attributes:
    name: the feature name.
    class_names: the name of each class id, 0 to num_classes - 1.
  """

  name: str
  class_names: Tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class DataContract:
  """Everything the pipeline, the model and the dataset know about the data.

  Attributes:
    sequence: the id sequence feature.
    context: the categorical context features, in schema order.
    label: the label.
    slice_features: features the evaluation reports slices of.
  """

  sequence: SequenceFeature
  context: Tuple[CategoricalFeature, ...]
  label: Label
  slice_features: Tuple[str, ...]

  @property
  def serving_features(self) -> Tuple[str, ...]:
    """The features a serving request carries: the sequence, then the context features."""
    return (self.sequence.name,) + tuple(f.name for f in self.context)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2)

  @classmethod
  def from_json(cls, text: str) -> "DataContract":
    """The inverse of `to_json`."""
    fields = json.loads(text)
    return cls(
      sequence=SequenceFeature(**fields["sequence"]),
      context=tuple(
        CategoricalFeature(f["name"], tuple(f["vocabulary"])) for f in fields["context"]
      ),
      label=Label(fields["label"]["name"], tuple(fields["label"]["class_names"])),
      slice_features=tuple(fields["slice_features"]),
    )


def load_schema(schema_path: str) -> schema_pb2.Schema:
  """Parses a text-format schema file, as `tfdv.load_schema_text` does.

  Raises:
    ContractError: if the file does not exist or is not a text Schema.
  """
  try:
    with open(schema_path) as f:
      text = f.read()
  except OSError as e:
    raise ContractError(f"Cannot read the schema {schema_path}: {e.strerror}.") from None
  try:
    return text_format.Parse(text, schema_pb2.Schema())
  except text_format.ParseError as e:
    raise ContractError(
      f"{schema_path} is not a text-format tensorflow_metadata Schema: {e}."
    ) from None


def feature_kinds(schema_path: str) -> Dict[str, str]:
  """Feature name -> the `tf.train.Feature` kind the schema expects, e.g. `int64_list`."""
  schema = load_schema(schema_path)
  return {f.name: _VALUE_KINDS[f.type] for f in schema.feature if f.type in _VALUE_KINDS}


def load(
  schema_path: str = DEFAULT_SCHEMA_PATH,
  label_feature: Optional[str] = None,
  sequence_feature: Optional[str] = None,
  slice_features: Optional[Sequence[str]] = None,
) -> DataContract:
  """Reads the data contract of a schema file.

  Args:
    schema_path: a text-format Schema (`schemas/schema.pbtxt` by default).
    label_feature: the label, instead of the feature absent from SERVING.
    sequence_feature: the sequence, instead of the variable-length INT feature.
    slice_features: slice features, instead of every categorical context feature.

  Returns:
    The contract.

  Raises:
    ContractError: if the schema cannot be read or breaks a rule (naming the
      feature and the rule).
  """
  schema = load_schema(schema_path)
  try:
    return from_schema(schema, label_feature, sequence_feature, slice_features)
  except ContractError as e:
    raise ContractError(f"{schema_path}: {e}") from None


def _in_environment(schema: schema_pb2.Schema, feature: schema_pb2.Feature, env: str) -> bool:
  # TFDV's rule (tensorflow_data_validation/anomalies/schema.cc, FeatureIsInEnvironment).
  if feature.in_environment:
    return env in feature.in_environment
  return env in schema.default_environment and env not in feature.not_in_environment


def _domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature, kind: str):
  """The feature's `int_domain` or `string_domain`, inline or named; None if it has none."""
  which = feature.WhichOneof("domain_info")
  if which == kind:
    return getattr(feature, kind)
  if which == "domain":
    for domain in getattr(schema, kind):
      if domain.name == feature.domain:
        return domain
  return None


def _is_single_valued(feature: schema_pb2.Feature) -> bool:
  return feature.HasField("value_count") and feature.value_count.max == 1


def _pick(candidates, override, role, rule, schema_names) -> schema_pb2.Feature:
  if override is not None:
    if override not in schema_names:
      raise ContractError(
        f"the {role} feature {override!r} is not in the schema; its features are "
        f"{sorted(schema_names)}."
      )
    return schema_names[override]
  if len(candidates) != 1:
    found = [f.name for f in candidates]
    raise ContractError(
      f"the {role} is {rule}; the schema has {len(found)} such features {found}. "
      f"Fix the schema, or name the {role} with --{role}_feature {_RULES}."
    )
  return candidates[0]


def _label(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> Label:
  domain = _domain(schema, feature, "int_domain")
  if feature.type != schema_pb2.INT or domain is None:
    raise ContractError(
      f"the label {feature.name!r} must be an INT feature with an int_domain of class ids {_RULES}."
    )
  if domain.min != 0 or domain.max < 1:
    raise ContractError(
      f"the label {feature.name!r} must have int_domain min 0 and max num_classes - 1 >= 1; "
      f"it has min {domain.min} and max {domain.max}."
    )
  if feature.HasField("value_count") and feature.value_count.max != 1:
    raise ContractError(f"the label {feature.name!r} must be single-valued (value_count max 1).")
  num_classes = domain.max + 1
  names = tuple(str(i) for i in range(num_classes))
  for string_domain in schema.string_domain:
    if domain.name and string_domain.name == domain.name:
      names = tuple(string_domain.value)
      if len(names) != num_classes or len(set(names)) != num_classes:
        raise ContractError(
          f"the string_domain {domain.name!r} names the classes of the label {feature.name!r}, "
          f"so it needs {num_classes} distinct values (int_domain 0..{domain.max}); it has "
          f"{len(names)}."
        )
  return Label(feature.name, names)


def _sequence(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> SequenceFeature:
  domain = _domain(schema, feature, "int_domain")
  if feature.type != schema_pb2.INT or domain is None:
    raise ContractError(
      f"the sequence {feature.name!r} must be an INT feature with an int_domain of ids {_RULES}."
    )
  if not domain.HasField("min") or not domain.HasField("max") or domain.min < 1:
    raise ContractError(
      f"the sequence {feature.name!r} needs int_domain min >= 1 (0 pads) and a max; it has "
      f"min {domain.min if domain.HasField('min') else 'unset'} and max "
      f"{domain.max if domain.HasField('max') else 'unset'}."
    )
  if domain.max < domain.min:
    raise ContractError(
      f"the sequence {feature.name!r} has int_domain max {domain.max} below min {domain.min}."
    )
  count = feature.value_count
  if not feature.HasField("value_count") or count.max < 1:
    raise ContractError(
      f"the sequence {feature.name!r} needs value_count max: the most ids an example holds."
    )
  return SequenceFeature(
    name=feature.name,
    min_id=int(domain.min),
    max_id=int(domain.max),
    max_length=int(count.max),
    min_length=int(max(count.min, 1)),
  )


def _context(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> CategoricalFeature:
  domain = _domain(schema, feature, "string_domain")
  if feature.type != schema_pb2.BYTES or domain is None or not _is_single_valued(feature):
    raise ContractError(
      f"feature {feature.name!r} is neither the label nor the sequence, so it must be a "
      "categorical context feature: BYTES, single-valued (value_count max 1), with a "
      f"string_domain {_RULES}. Drop it from the schema or fix its type, value_count or domain."
    )
  vocabulary = tuple(domain.value)
  if not vocabulary or len(set(vocabulary)) != len(vocabulary):
    raise ContractError(
      f"the string_domain of {feature.name!r} must list distinct values, at least one."
    )
  return CategoricalFeature(feature.name, vocabulary)


def from_schema(
  schema: schema_pb2.Schema,
  label_feature: Optional[str] = None,
  sequence_feature: Optional[str] = None,
  slice_features: Optional[Sequence[str]] = None,
) -> DataContract:
  """The data contract of a parsed schema; see `load`."""
  features = [
    f for f in schema.feature if not f.deprecated and f.lifecycle_stage not in _NOT_IN_PRODUCTION
  ]
  for feature in features:
    if feature.type not in (schema_pb2.INT, schema_pb2.BYTES):
      raise ContractError(
        f"feature {feature.name!r} has type {schema_pb2.FeatureType.Name(feature.type)}; the "
        f"contract knows INT and BYTES features {_RULES}."
      )
  by_name = {f.name: f for f in features}
  label = _pick(
    [f for f in features if not _in_environment(schema, f, SERVING_ENVIRONMENT)],
    label_feature,
    "label",
    "the feature absent from the SERVING environment",
    by_name,
  )
  sequence = _pick(
    [
      f
      for f in features
      if f.name != label.name and f.type == schema_pb2.INT and not _is_single_valued(f)
    ],
    sequence_feature,
    "sequence",
    "the variable-length INT feature (value_count max other than 1)",
    by_name,
  )
  if sequence.name == label.name:
    raise ContractError(f"{label.name!r} cannot be both the label and the sequence.")
  context = tuple(
    _context(schema, f) for f in features if f.name not in (label.name, sequence.name)
  )
  context_names = [f.name for f in context]
  if slice_features is None:
    slices = tuple(context_names)
  else:
    slices = tuple(slice_features)
    unknown = [name for name in slices if name not in context_names]
    if unknown:
      raise ContractError(
        f"slice features {unknown} are not categorical context features; choose among "
        f"{context_names}."
      )
  return DataContract(
    sequence=_sequence(schema, sequence),
    context=context,
    label=_label(schema, label),
    slice_features=slices,
  )
