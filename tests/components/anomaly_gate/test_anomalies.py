"""Tests of anomaly rows, the tolerate switch, and the gate's error message."""

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2

from next_category.components.anomaly_gate import anomalies

_FOUND = text_format.Parse(
  """
  anomaly_info {
    key: "user_segment"
    value {
      reason {
        type: ENUM_TYPE_UNEXPECTED_STRING_VALUES
        short_description: "Unexpected string values"
        description: "Examples contain values missing from the schema: vip (~2%)."
      }
    }
  }
  anomaly_info {
    key: "label"
    value {
      reason {
        type: COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH
        short_description: "High approximate Jensen-Shannon divergence"
        description: "The divergence is 0.2 (up to six significant digits), above 0.01."
      }
    }
  }
  dataset_anomaly_info {
    reason {
      type: DATASET_LOW_NUM_EXAMPLES
      short_description: "Low num examples in dataset."
      description: "The dataset has 0 examples."
    }
  }
  """,
  anomalies_pb2.Anomalies(),
)


def test_rows_are_sorted_by_feature_then_dataset_level():
  rows = anomalies.from_proto(_FOUND, "train")
  assert [(r.split, r.feature, r.kind) for r in rows] == [
    ("train", "label", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"),
    ("train", "user_segment", "ENUM_TYPE_UNEXPECTED_STRING_VALUES"),
    ("train", "(dataset)", "DATASET_LOW_NUM_EXAMPLES"),
  ]
  assert rows[0].description == "The divergence is 0.2, above 0.01."
  assert rows[1].line() == (
    "[train] user_segment: ENUM_TYPE_UNEXPECTED_STRING_VALUES: Unexpected string values: "
    "Examples contain values missing from the schema: vip (~2%)."
  )


def test_tolerated_entries_are_checked():
  assert anomalies.check_tolerated(
    [" ENUM_TYPE_UNEXPECTED_STRING_VALUES", "", "label:INT_TYPE_BIG_INT", "label:INT_TYPE_BIG_INT"]
  ) == ["ENUM_TYPE_UNEXPECTED_STRING_VALUES", "label:INT_TYPE_BIG_INT"]
  with pytest.raises(ValueError, match=r"Cannot tolerate 'NO_SUCH_KIND', 'label:BIG'"):
    anomalies.check_tolerated(["NO_SUCH_KIND", "label:BIG", "INT_TYPE_BIG_INT"])


def test_split_tolerated_by_kind_or_feature_and_kind():
  rows = anomalies.from_proto(_FOUND, "train")
  blocking, tolerated = anomalies.split_tolerated(
    rows, ["DATASET_LOW_NUM_EXAMPLES", "label:COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH"]
  )
  assert [r.feature for r in blocking] == ["user_segment"]
  assert [r.feature for r in tolerated] == ["label", "(dataset)"]
  blocking, _ = anomalies.split_tolerated(rows, ["user_segment:COMPARATOR_L_INFTY_HIGH"])
  assert len(blocking) == 3


def test_error_lines_survive_beam_wrapping():
  rows = anomalies.from_proto(_FOUND, "train")
  message = anomalies.error_message(rows[:2], rows[2:])
  assert message.splitlines()[0] == (
    "2 data anomalies stop the run before training (1 more tolerated); fix the data, or "
    "accept known kinds with --tolerate_anomalies=KIND[,feature:KIND...]:"
  )
  # Beam appends the transform's name to the message of an error it re-raises.
  wrapped = "Traceback ...\n" + message + " [while running 'Run[AnomalyGate]']\n"
  assert anomalies.error_lines(wrapped) == message.splitlines()
  assert anomalies.error_lines("ValueError: something else\n  [x] y") == []
