"""The runners take the data contract from `--schema_path`: label, slices and Trainer settings."""

import json
import os

from next_category import contract
from next_category.dataset import clickstream
from next_category.pipeline import configs
from next_category.pipeline.run import beam_runner
from next_category.pipeline.run import runner_flags

_DEPARTMENTS = os.path.join(configs.PROJECT_ROOT, "schemas", "examples", "departments.pbtxt")


def _components(tmp_path, *flags):
  data_root = tmp_path / "data"
  clickstream.write_span(
    str(data_root), num_examples=20, num_shards=1, data_contract=contract.load(_DEPARTMENTS)
  )
  args = runner_flags.parse_args(
    [f"--data_root={data_root}", f"--output_root={tmp_path}/out", *flags], ""
  )
  return {c.id: c for c in runner_flags.build_pipeline(args).components}


def _evaluation(components):
  eval_config = json.loads(components["Evaluator"].exec_properties["eval_config"])
  slices = [spec.get("feature_keys", []) for spec in eval_config["slicing_specs"]]
  return eval_config["model_specs"][0]["label_key"], slices


def test_another_schema_sets_label_slices_and_schema(tmp_path):
  components = _components(tmp_path, f"--schema_path={_DEPARTMENTS}")
  assert _evaluation(components) == (
    "next_department",
    [[], ["membership"], ["region"], ["membership", "region"]],
  )
  assert components["ImportSchemaGen"].exec_properties["schema_file"] == _DEPARTMENTS
  custom_config = json.loads(components["Trainer"].exec_properties["custom_config"])
  assert not {"label_feature", "sequence_feature", "slice_features"} & set(custom_config)


def test_contract_flags_override_the_rules_and_reach_the_trainer(tmp_path):
  components = _components(
    tmp_path,
    f"--schema_path={_DEPARTMENTS}",
    "--slice_features=region",
    "--label_feature=next_department",
  )
  assert _evaluation(components) == ("next_department", [[], ["region"]])
  custom_config = json.loads(components["Trainer"].exec_properties["custom_config"])
  assert custom_config["slice_features"] == ["region"]
  assert custom_config["label_feature"] == "next_department"


def test_a_schema_that_breaks_the_rules_stops_before_any_component(tmp_path, capsys):
  schema = tmp_path / "schema.pbtxt"
  with open(_DEPARTMENTS) as f:
    schema.write_text(f.read() + '\nfeature { name: "price" type: FLOAT }\n')
  data_root = tmp_path / "data"
  clickstream.write_span(
    str(data_root), num_examples=5, num_shards=1, data_contract=contract.load(_DEPARTMENTS)
  )
  code = beam_runner.main(
    [f"--data_root={data_root}", f"--output_root={tmp_path}/out", f"--schema_path={schema}"]
  )
  assert code == 2
  assert capsys.readouterr().err.strip() == (
    f"ERROR: {schema}: feature 'price' has type FLOAT; the contract knows INT and BYTES "
    "features (README: Data contract)."
  )
  assert not os.path.exists(tmp_path / "out" / "metadata.sqlite")
