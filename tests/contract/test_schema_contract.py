"""Tests of the data contract's rules: what each schema feature is, and clear errors."""

import os
import subprocess
import sys

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from next_category import contract

_DEPARTMENTS = os.path.join(
  os.path.dirname(contract.DEFAULT_SCHEMA_PATH), "examples", "departments.pbtxt"
)


def _schema(path=_DEPARTMENTS):
  return contract.load_schema(path)


def _without(schema, *names):
  kept = [f for f in schema.feature if f.name not in names]
  del schema.feature[:]
  schema.feature.extend(kept)
  return schema


def test_default_schema_gives_the_default_contract():
  assert contract.load() == contract.DataContract(
    sequence=contract.SequenceFeature("item_history", 1, 9999, 50, 1),
    context=(
      contract.CategoricalFeature("user_segment", ("new", "returning")),
      contract.CategoricalFeature("city_tier", ("tier1", "tier2", "tier3", "tier4")),
    ),
    label=contract.Label("label", tuple(f"category_{i}" for i in range(10))),
    slice_features=("user_segment", "city_tier"),
  )


def test_another_schema_gives_its_own_contract():
  data_contract = contract.load(_DEPARTMENTS)
  assert data_contract.sequence == contract.SequenceFeature("viewed_products", 1, 2000, 20, 1)
  assert [(f.name, len(f.vocabulary)) for f in data_contract.context] == [
    ("membership", 3),
    ("region", 5),
  ]
  assert data_contract.label.name == "next_department"
  assert data_contract.label.class_names == ("books", "garden", "toys", "music")
  assert data_contract.label.num_classes == 4
  assert data_contract.serving_features == ("viewed_products", "membership", "region")
  assert contract.DataContract.from_json(data_contract.to_json()) == data_contract


def test_no_context_features_and_class_ids_as_names():
  schema = _without(_schema(), "membership", "region")
  del schema.string_domain[0]  # The class names.
  data_contract = contract.from_schema(schema)
  assert data_contract.context == () and data_contract.slice_features == ()
  assert data_contract.label.class_names == ("0", "1", "2", "3")


def test_flags_override_the_rules():
  schema = _schema()
  # Both INT features are in SERVING: no rule finds the label, the flag names it.
  del schema.feature[3].not_in_environment[:]
  with pytest.raises(contract.ContractError, match="absent from the SERVING environment"):
    contract.from_schema(schema)
  data_contract = contract.from_schema(
    schema,
    label_feature="next_department",
    sequence_feature="viewed_products",
    slice_features=["region"],
  )
  assert data_contract.label.name == "next_department"
  assert data_contract.slice_features == ("region",)
  with pytest.raises(contract.ContractError, match=r"slice features \['viewed_products'\]"):
    contract.from_schema(schema, "next_department", slice_features=["viewed_products"])
  with pytest.raises(contract.ContractError, match="the label feature 'nope' is not in the schema"):
    contract.from_schema(schema, label_feature="nope")


def test_deprecated_features_are_left_out():
  schema = _schema()
  extra = schema.feature.add(name="old_score", type=schema_pb2.FLOAT)
  extra.lifecycle_stage = schema_pb2.DEPRECATED
  assert contract.from_schema(schema) == contract.load(_DEPARTMENTS)


def _feature(schema, name):
  return next(f for f in schema.feature if f.name == name)


@pytest.mark.parametrize(
  "edit, message",
  [
    (
      lambda s: s.feature.add(name="price", type=schema_pb2.FLOAT),
      "feature 'price' has type FLOAT; the contract knows INT and BYTES features",
    ),
    (
      lambda s: text_format.Merge(
        'name: "clicked_ads" type: INT value_count { min: 1 max: 5 }', s.feature.add()
      ),
      r"the sequence is the variable-length INT feature .* 2 such features "
      r"\['viewed_products', 'clicked_ads'\]\. .* --sequence_feature",
    ),
    (
      lambda s: s.feature.add(name="device", type=schema_pb2.BYTES),
      "feature 'device' is neither the label nor the sequence, so it must be a categorical",
    ),
    (
      lambda s: setattr(_feature(s, "next_department").int_domain, "min", 1),
      "must have int_domain min 0 and max num_classes - 1 >= 1; it has min 1 and max 3",
    ),
    (
      lambda s: s.string_domain[0].value.append("food"),
      "string_domain 'department' names the classes .* needs 4 distinct values .* it has 5",
    ),
    (
      lambda s: setattr(_feature(s, "viewed_products").int_domain, "min", 0),
      r"the sequence 'viewed_products' needs int_domain min >= 1 \(0 pads\)",
    ),
    (
      lambda s: _feature(s, "viewed_products").ClearField("value_count"),
      "the sequence 'viewed_products' needs value_count max",
    ),
    (
      lambda s: s.string_domain[1].value.append("guest"),
      "the string_domain of 'membership' must list distinct values",
    ),
  ],
)
def test_schemas_that_break_a_rule_are_clear_errors(tmp_path, edit, message):
  schema = _schema()
  edit(schema)
  path = tmp_path / "schema.pbtxt"
  path.write_text(text_format.MessageToString(schema))
  with pytest.raises(contract.ContractError, match=f"^{path}: .*{message}"):
    contract.load(str(path))


def test_unreadable_schemas_are_clear_errors(tmp_path):
  with pytest.raises(contract.ContractError, match="Cannot read the schema .*missing.pbtxt"):
    contract.load(str(tmp_path / "missing.pbtxt"))
  (tmp_path / "bad.pbtxt").write_text("feature { nme: 1 }")
  with pytest.raises(contract.ContractError, match="is not a text-format tensorflow_metadata"):
    contract.load(str(tmp_path / "bad.pbtxt"))


def test_feature_kinds_are_the_example_value_lists():
  assert contract.feature_kinds(_DEPARTMENTS) == {
    "viewed_products": "int64_list",
    "membership": "bytes_list",
    "region": "bytes_list",
    "next_department": "int64_list",
  }


def test_contract_is_the_bottom_layer():
  code = (
    "import sys, contract; contract.load(); "
    "print(sorted({m.split('.')[0] for m in sys.modules} & "
    "{'dataset', 'components', 'pipeline', 'serving', 'tensorflow'}))"
  )
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(contract.__file__)))
  out = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
  )
  assert out.stdout.strip() == "[]"
