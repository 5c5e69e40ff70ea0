"""The data contract, read from the schema: the bottom layer every other package may import.

See `next_category.contract.schema_contract` for the rules that give each schema feature its
role (sequence, categorical context, label).
"""

from next_category.contract.schema_contract import DEFAULT_SCHEMA_PATH
from next_category.contract.schema_contract import CategoricalFeature
from next_category.contract.schema_contract import ContractError
from next_category.contract.schema_contract import DataContract
from next_category.contract.schema_contract import Label
from next_category.contract.schema_contract import SequenceFeature
from next_category.contract.schema_contract import feature_kinds
from next_category.contract.schema_contract import from_schema
from next_category.contract.schema_contract import load
from next_category.contract.schema_contract import load_schema

__all__ = [
  "DEFAULT_SCHEMA_PATH",
  "CategoricalFeature",
  "ContractError",
  "DataContract",
  "Label",
  "SequenceFeature",
  "feature_kinds",
  "from_schema",
  "load",
  "load_schema",
]
