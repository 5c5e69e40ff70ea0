"""The skew loop closed: the server logs requests, `make skew-report` reads the logs directly."""

import grpc
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.dataset import clickstream
from next_category.pipeline.reports import skew_report
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.testing import bad_examples


def _requests(count, seed, drift=None):
  examples = []
  for example in clickstream.generate_examples(count, seed=seed, drift=drift):
    del example.features.feature["label"]
    examples.append(example.SerializeToString())
  return examples


def _send(channel, model_name, examples, per_request=20):
  stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
  for start in range(0, len(examples), per_request):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.inputs["examples"].CopyFrom(
      tf.make_tensor_proto(examples[start : start + per_request], dtype=tf.string)
    )
    stub.Predict(request, timeout=DEADLINE_SECONDS)


@pytest.mark.e2e
def test_skew_report_flags_a_shifted_segment_mix_in_the_request_logs(canned, tmp_path, capsys):
  train = bad_examples.write(
    str(tmp_path / "train.tfrecord"), clickstream.generate_examples(2000, seed=31)
  )
  stats_path = str(tmp_path / "train_stats.pbtxt")
  tfdv.write_stats_text(tfdv.generate_statistics_from_tfrecord(train), stats_path)
  logs = tmp_path / "logs"
  logs.mkdir()
  # Two names for the same model: one gets requests like training, one all new users.
  config = tmp_path / "models.config"
  config.write_text(
    "model_config_list {\n"
    + "".join(
      f'  config {{ name: "{name}" base_path: "{canned.base_path}" model_platform: "tensorflow" '
      f"logging_config {{ "
      f"sampling_config {{ sampling_rate: 1.0 }} "
      f'log_collector_config {{ type: "tfrecord" filename_prefix: "{logs}/{name}" }} }} }}\n'
      for name in ("steady", "shifted")
    )
    + "}\n"
  )
  server = conftest.start_server(
    wait_for=("steady", "shifted"), model_config_file=str(config), file_system_poll_wait_seconds=0
  )
  try:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
      _send(channel, "steady", _requests(300, 32))
      _send(channel, "shifted", _requests(300, 34, clickstream.Drift(segment_mix=1.0)))
  finally:
    server.stop()  # Closes the log files.

  def report(name):
    return skew_report.main(
      [
        f"--serving_data={logs}/{name}-*.tfrecord.gz",
        f"--training_statistics={stats_path}",
        f"--report_dir={tmp_path}/reports-{name}",
      ]
    )

  assert report("steady") == 0
  assert "(300 requests)" in capsys.readouterr().out
  assert report("shifted") == 1
  captured = capsys.readouterr()
  assert "(300 requests)" in captured.out
  assert "user_segment   L_INFTY" in captured.out and "OVER" in captured.out
  assert "[skew] user_segment: COMPARATOR_L_INFTY_HIGH" in captured.err
