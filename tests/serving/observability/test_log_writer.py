"""The log writer process (log_writer.py) and the queue feeding it (offload.py)."""

import glob
import json
import marshal
import os
import signal
import subprocess
import sys

import pytest
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.config import logging_config_pb2

from next_category import serving
from next_category.serving.observability import audit
from next_category.serving.observability import log_writer
from next_category.serving.observability import offload
from next_category.serving.observability import request_log
from tests.serving import conftest


def _audit_writer(path, dropped, **kwargs):
  return offload.BackgroundWriter(
    "audit-test",
    log_writer.AUDIT,
    {"path": str(path), "max_bytes": 1 << 20, "backup_count": 1},
    on_drop=dropped.append,
    interval_seconds=0.01,
    **kwargs,
  )


def _record(n):
  return tuple(
    audit.AuditRecord(
      1764496923.5 + n, "ipv4:127.0.0.1:1", "p", True, "m", "1", "Predict", "GRPC", "", n, "OK", 1.5
    )
  )


def test_records_are_written_in_order_and_bad_ones_counted(tmp_path):
  path, dropped = tmp_path / "audit.jsonl", []
  writer = _audit_writer(path, dropped)
  writer.submit(_record(1))
  writer.submit((object(),))  # marshal cannot write it: counted, never raised.
  writer.submit(("too", "short"))  # The writer cannot encode it: counted there.
  writer.submit(_record(2))
  writer.close()
  lines = [json.loads(line) for line in path.read_text().splitlines()]
  assert [line["examples"] for line in lines] == [1, 2]
  assert lines[0]["time"] == "2025-11-30T10:02:04.500000Z"
  assert dropped == ["write_error", "write_error"]


def test_the_writer_drops_what_is_not_a_frame_of_records_and_goes_on(tmp_path):
  path = tmp_path / "audit.jsonl"
  config = {"path": str(path), "max_bytes": 1 << 20, "backup_count": 1}
  good = marshal.dumps(_record(1), log_writer.MARSHAL_VERSION)
  junk = b"\x00not marshal"
  frames = [
    log_writer.frame([good]),
    len(junk).to_bytes(4, "little") + junk,  # A frame whose body is not a list of records.
    log_writer.frame([b"\xff", good]),  # One record that is not marshal, one that is.
  ]
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "next_category.serving.observability.log_writer",
      log_writer.AUDIT,
      json.dumps(config),
    ],
    input=b"".join(frames),
    capture_output=True,
    timeout=30,
  )
  assert done.returncode == 0, done.stderr
  assert done.stdout.decode().split() == ["write_error", "1", "write_error", "1"]
  assert [json.loads(line)["examples"] for line in path.read_text().splitlines()] == [1, 1]


def test_a_dead_writer_is_replaced(tmp_path):
  path, dropped = tmp_path / "audit.jsonl", []
  writer = _audit_writer(path, dropped)
  writer.submit(_record(1))
  conftest.wait_until(lambda: path.exists() and path.read_text(), timeout=10)
  os.kill(writer._process.pid, signal.SIGKILL)
  writer._process.wait()
  writer.submit(_record(2))
  writer.close()
  assert [json.loads(line)["examples"] for line in path.read_text().splitlines()] == [1, 2]
  assert dropped == []


def test_the_writer_outlives_sigint_and_sigterm(tmp_path):
  path, dropped = tmp_path / "audit.jsonl", []
  writer = _audit_writer(path, dropped)
  writer.submit(_record(1))
  conftest.wait_until(lambda: path.exists() and path.read_text(), timeout=10)
  # A Ctrl-C or a TERM to the server's process group reaches the writer too;
  # it keeps going until the server closes its input.
  process = writer._process
  os.kill(process.pid, signal.SIGINT)
  os.kill(process.pid, signal.SIGTERM)
  writer.submit(_record(2))
  conftest.wait_until(lambda: len(path.read_text().splitlines()) == 2, timeout=10)
  assert process.poll() is None and writer._process is process
  writer.close()
  assert process.returncode == 0 and dropped == []


def test_a_full_queue_drops_and_counts(tmp_path):
  dropped = []
  writer = _audit_writer(tmp_path / "audit.jsonl", dropped, max_queued=2)
  writer._stop.set()  # Hold the queue still.
  writer._thread.join()
  for n in range(5):
    writer.submit(_record(n))
  assert dropped == ["queue_full"] * 3
  writer.close()


def test_the_writer_imports_neither_tensorflow_nor_protobuf():
  code = (
    "import sys, next_category.serving.observability.log_writer; "
    "print(sorted(m.split('.')[0] for m in sys.modules))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(serving.__file__)))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
  assert out.returncode == 0, out.stderr
  assert "tensorflow" not in out.stdout and "protobuf" not in out.stdout


def test_embedded_field_reads_what_protobuf_wrote():
  response = predict_pb2.PredictResponse()
  response.model_spec.name = "m"
  response.model_spec.version.value = 7
  response.outputs["probabilities"].float_val.extend([0.25] * 40)
  data = response.SerializeToString()
  assert log_writer.embedded_field(data, 2) == response.model_spec.SerializeToString()
  assert log_writer.embedded_field(data, 3) == b""
  with pytest.raises(ValueError, match="ends inside a field|runs past the end"):
    log_writer.embedded_field(data[:-1], 2)


def test_one_builder_gives_each_record_its_own_metadata():
  # The builder remembers log_metadata by (model_spec, second): records of
  # other versions and seconds, in any order, must each get their own.
  sampling = logging_config_pb2.SamplingConfig(sampling_rate=0.5)
  build = log_writer.prediction_logs(request_log._log_settings(sampling.SerializeToString()))
  request = predict_pb2.PredictRequest()
  request.model_spec.name = "m"
  request.inputs["examples"].string_val.append(b"x" * 300)  # Lengths over one varint byte.
  for version, arrived in ((1, 100.2), (1, 100.7), (2, 100.9), (1, 101.0), (2, 0.5), (1, 100.1)):
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "m"
    response.model_spec.version.value = version
    response.outputs["probabilities"].float_val.extend([0.25] * 40)
    expected = prediction_log_pb2.PredictionLog()
    expected.log_metadata.model_spec.CopyFrom(response.model_spec)
    expected.log_metadata.sampling_config.CopyFrom(sampling)
    expected.log_metadata.timestamp_secs = int(arrived)
    expected.predict_log.request.CopyFrom(request)
    expected.predict_log.response.CopyFrom(response)
    record = build(("Predict", request.SerializeToString(), response.SerializeToString(), arrived))
    assert prediction_log_pb2.PredictionLog.FromString(record) == expected, (version, arrived)


def test_request_log_files_rotate_at_their_size_whatever_the_rounds(tmp_path):
  prefix = str(tmp_path / "m")
  log_file = log_writer.RotatingTFRecordFile(prefix, max_file_bytes=3000, max_files=10)
  record = log_writer.tfrecord(b"x" * 984)  # 1,000 bytes framed.
  log_file.write([record, record])  # The round that opens the first file.
  log_file.write([record, record])  # The third record fills it.
  log_file.close()
  assert len(glob.glob(prefix + "-*" + log_writer.TFRECORD_SUFFIX)) == 2


def _audit_lines(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def _lines_of(n):
  return [log_writer.audit_line(_record(i)) for i in range(n)]


def _record_with(**fields):
  return tuple(
    audit.AuditRecord(1.0, "", "", False, "", "", "", "", "", 0, "OK", 0.0)._replace(**fields)
  )


@pytest.mark.parametrize("how", ["deleted", "replaced", "moved", "truncated"])
def test_an_audit_file_deleted_replaced_moved_or_truncated_is_written_again(tmp_path, how):
  path = tmp_path / "audit.jsonl"
  lost = []
  audit_file = log_writer.RotatingFile(
    str(path), 1 << 20, 2, on_lost=lambda reason, count: lost.append((reason, count))
  )
  audit_file.write(_lines_of(3))
  audit_file.write(_lines_of(2))
  if how == "deleted":
    path.unlink()
  elif how == "replaced":
    (tmp_path / "other").write_text('{"forged": 1}\n')
    os.replace(tmp_path / "other", path)
  elif how == "moved":
    os.replace(path, tmp_path / "audit.jsonl.rotated-by-logrotate")
  else:
    with open(path, "r+b") as f:  # Keeps the first 2 lines.
      f.truncate(len(b"".join(_lines_of(2))))
  audit_file.write(_lines_of(1))
  audit_file.write(_lines_of(1))
  audit_file.close()

  lines = _audit_lines(path)
  kept = {"deleted": 0, "replaced": 1, "moved": 0, "truncated": 2}[how]
  notice = lines[kept]
  expected_lost = {"deleted": 5, "replaced": 5, "moved": 0, "truncated": 3}[how]
  assert notice["event"] == "audit_log_reopened"
  assert (notice["reason"], notice["lines_lost"]) == (how, expected_lost)
  assert notice["time"].endswith("Z")
  assert len(lines) == kept + 3  # The notice, then the two lines written since.
  assert lost == ([(f"file_{how}", expected_lost)] if expected_lost else [])
  if how == "moved":
    assert len(_audit_lines(tmp_path / "audit.jsonl.rotated-by-logrotate")) == 5


def test_audit_fields_are_capped_and_marked_however_long(tmp_path):
  line = json.loads(
    log_writer.audit_line(
      _record_with(
        peer="p" * 300,
        principal="\u00e9" * 10_000,
        model="m" * 257,
        version="1" * 256,
        signature="s" * (1 << 20),
        status="x" * 1000,
        details={"removed": ["r" * 300] * 100, "error": "e" * 5000},
      )
    )
  )
  for key in ("peer", "principal", "model", "signature", "status", "error"):
    assert len(line[key]) == log_writer.MAX_FIELD_CHARS, key
    assert line[key].endswith(" characters]"), key
  assert line["model"].endswith("...[cut from 257 characters]")
  assert line["version"] == "1" * 256  # At the limit: whole.
  assert len(line["removed"]) == log_writer.MAX_LIST_ITEMS + 1
  assert line["removed"][-1] == f"...[{100 - log_writer.MAX_LIST_ITEMS} more]"
  assert log_writer.cap(line["model"]) == line["model"]  # Capping twice changes nothing.


def test_request_log_files_of_a_model_whose_prefix_extends_anothers_are_never_deleted(tmp_path):
  # Issue 21: clearing next_category's old files deleted next_category-canary's.
  canary = log_writer.RotatingTFRecordFile(str(tmp_path / "next_category-canary"), 1000, 10)
  for _ in range(3):
    canary.write([log_writer.tfrecord(b"c" * 1000)])
  canary.close()
  canary_files = sorted(glob.glob(str(tmp_path / "next_category-canary-*")))
  assert len(canary_files) == 3
  main = log_writer.RotatingTFRecordFile(str(tmp_path / "next_category"), 1000, 2)
  for _ in range(4):
    main.write([log_writer.tfrecord(b"m" * 1000)])
  main.close()
  assert sorted(glob.glob(str(tmp_path / "next_category-canary-*"))) == canary_files
  own = set(glob.glob(str(tmp_path / "next_category-*"))) - set(canary_files)
  assert len(own) == 2
