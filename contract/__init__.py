"""The data contract, read from the schema: the bottom layer every other package may import.

See `contract.schema_contract` for the rules that give each schema feature its
role (sequence, categorical context, label).
"""

from contract.schema_contract import DEFAULT_SCHEMA_PATH
from contract.schema_contract import CategoricalFeature
from contract.schema_contract import ContractError
from contract.schema_contract import DataContract
from contract.schema_contract import Label
from contract.schema_contract import SequenceFeature
from contract.schema_contract import feature_kinds
from contract.schema_contract import from_schema
from contract.schema_contract import load
from contract.schema_contract import load_schema

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
