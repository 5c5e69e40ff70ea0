"""Dynamic batching: the scheduler on its own, then on a real server."""

import concurrent.futures
import threading

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from next_category.serving import client
from next_category.serving import status
from next_category.serving.models import batching
from tests.serving import conftest
from tests.serving.conftest import DEADLINE_SECONDS
from tests.serving.conftest import MODEL_NAME


class _Recorder:
  """A process function that doubles its input and remembers each batch."""

  def __init__(self, block: threading.Event = None):
    self.batches = []
    self.started = threading.Event()
    self._block = block

  def __call__(self, signature_name, inputs):
    self.started.set()
    if self._block is not None:
      self._block.wait(DEADLINE_SECONDS)
    x = inputs["x"]
    if (x < 0).any():
      raise status.invalid_argument("negative input")
    self.batches.append(x.shape)
    return {"y": x * 2}


def _options(**kwargs):
  kwargs.setdefault("num_batch_threads", 1)
  return batching.BatchingOptions(**kwargs)


def test_requests_are_batched_and_split_back():
  block = threading.Event()
  recorder = _Recorder(block)
  scheduler = batching.BatchScheduler(recorder, _options(max_batch_size=8))
  try:
    first = scheduler.schedule("s", {"x": np.array([[1.0]])}, 1)
    recorder.started.wait(DEADLINE_SECONDS)  # The thread now holds a batch of one.
    queued = [scheduler.schedule("s", {"x": np.array([[i], [i + 0.5]])}, 2) for i in range(3)]
    block.set()
    assert first.result(DEADLINE_SECONDS)["y"].tolist() == [[2.0]]
    for i, future in enumerate(queued):
      assert future.result(DEADLINE_SECONDS)["y"].tolist() == [[2 * i], [2 * i + 1]]
  finally:
    scheduler.close()
  assert recorder.batches == [(1, 1), (6, 1)]


def test_full_queue_refuses_at_once():
  block = threading.Event()
  recorder = _Recorder(block)
  scheduler = batching.BatchScheduler(recorder, _options(max_batch_size=2, max_enqueued_batches=1))
  try:
    running = scheduler.schedule("s", {"x": np.ones([2, 1])}, 2)
    recorder.started.wait(DEADLINE_SECONDS)
    queued = scheduler.schedule("s", {"x": np.ones([2, 1])}, 2)
    with pytest.raises(status.ServingError) as raised:
      scheduler.schedule("s", {"x": np.ones([1, 1])}, 1)
    assert raised.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.message == batching.QUEUE_FULL_MESSAGE
    block.set()
    running.result(DEADLINE_SECONDS)
    queued.result(DEADLINE_SECONDS)
  finally:
    scheduler.close()


def test_task_larger_than_max_batch_size_is_invalid():
  scheduler = batching.BatchScheduler(_Recorder(), _options(max_batch_size=2))
  try:
    with pytest.raises(status.ServingError) as raised:
      scheduler.schedule("s", {"x": np.ones([3, 1])}, 3)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.message == "Task size 3 is larger than maximum input batch size 2"
  finally:
    scheduler.close()


def test_allowed_batch_sizes_pad_with_the_first_row():
  recorder = _Recorder()
  observed = []
  scheduler = batching.BatchScheduler(
    recorder,
    _options(max_batch_size=8, allowed_batch_sizes=(4, 8)),
    observer=lambda size, padding: observed.append((size, padding)),
  )
  try:
    result = scheduler.schedule("s", {"x": np.array([[3.0], [5.0], [7.0]])}, 3)
    assert result.result(DEADLINE_SECONDS)["y"].tolist() == [[6.0], [10.0], [14.0]]
  finally:
    scheduler.close()
  assert recorder.batches == [(4, 1)]
  assert observed == [(3, 1)]


def test_bad_request_fails_alone():
  block = threading.Event()
  recorder = _Recorder(block)
  scheduler = batching.BatchScheduler(recorder, _options(max_batch_size=8))
  try:
    first = scheduler.schedule("s", {"x": np.array([[1.0]])}, 1)
    recorder.started.wait(DEADLINE_SECONDS)
    good = scheduler.schedule("s", {"x": np.array([[2.0]])}, 1)
    bad = scheduler.schedule("s", {"x": np.array([[-1.0]])}, 1)
    block.set()
    first.result(DEADLINE_SECONDS)
    assert good.result(DEADLINE_SECONDS)["y"].tolist() == [[4.0]]
    with pytest.raises(status.ServingError, match="negative input"):
      bad.result(DEADLINE_SECONDS)
  finally:
    scheduler.close()


def test_variable_length_inputs_pad_or_run_apart():
  for pad in (True, False):
    block = threading.Event()
    recorder = _Recorder(block)
    scheduler = batching.BatchScheduler(
      recorder, _options(max_batch_size=8, pad_variable_length_inputs=pad)
    )
    try:
      first = scheduler.schedule("s", {"x": np.ones([1, 1])}, 1)
      recorder.started.wait(DEADLINE_SECONDS)
      short = scheduler.schedule("s", {"x": np.array([[1.0, 2.0]])}, 1)
      long = scheduler.schedule("s", {"x": np.array([[1.0, 2.0, 3.0]])}, 1)
      block.set()
      first.result(DEADLINE_SECONDS)
      assert long.result(DEADLINE_SECONDS)["y"].tolist() == [[2.0, 4.0, 6.0]]
      assert short.result(DEADLINE_SECONDS)["y"][:, :2].tolist() == [[2.0, 4.0]]
    finally:
      scheduler.close()
    assert recorder.batches[1:] == ([(2, 3)] if pad else [(1, 2), (1, 3)])


def test_close_drains_queued_requests_then_refuses():
  scheduler = batching.BatchScheduler(
    _Recorder(), _options(max_batch_size=4, batch_timeout_micros=10_000_000)
  )
  future = scheduler.schedule("s", {"x": np.ones([1, 1])}, 1)
  scheduler.close()
  assert future.result(0)["y"].tolist() == [[2.0]]
  with pytest.raises(batching.SchedulerClosedError):
    scheduler.schedule("s", {"x": np.ones([1, 1])}, 1)


def test_batching_parameters_file_and_validation(tmp_path):
  path = tmp_path / "batching.txt"
  path.write_text(
    "max_batch_size { value: 16 }\nbatch_timeout_micros { value: 500 }\n"
    "allowed_batch_sizes: 8\nallowed_batch_sizes: 16\n"
  )
  options = batching.load_batching_parameters(str(path))
  assert (options.max_batch_size, options.batch_timeout_micros, options.allowed_batch_sizes) == (
    16,
    500,
    (8, 16),
  )
  assert options.max_enqueued_batches == batching.BatchingOptions().max_enqueued_batches
  with pytest.raises(ValueError, match="must equal max_batch_size"):
    batching.BatchingOptions(max_batch_size=16, allowed_batch_sizes=(8,))
  with pytest.raises(ValueError, match="num_batch_threads"):
    batching.BatchingOptions(num_batch_threads=0)
  path.write_text("max_batch_size: 3")
  with pytest.raises(ValueError, match="Invalid BatchingParameters"):
    batching.load_batching_parameters(str(path))


@pytest.fixture(scope="module")
def batching_server(canned, tmp_path_factory):
  path = tmp_path_factory.mktemp("batching") / "batching_parameters.txt"
  path.write_text(
    "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 1000 }\n"
    "max_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }\n"
    "allowed_batch_sizes: 2\nallowed_batch_sizes: 4\n"
  )
  server = conftest.start_server(
    model_base_path=canned.base_path,
    enable_batching=True,
    batching_parameters_file=str(path),
    file_system_poll_wait_seconds=0,
  )
  yield server
  server.stop()


def test_batched_answers_match_the_saved_model(batching_server, canned, examples):
  hostport = f"127.0.0.1:{batching_server.grpc_port}"
  expected = conftest.reference(canned.version_1, examples=examples)
  # Four clients, one example each: never more than one batch waits.
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(
      pool.map(lambda i: client.predict(hostport, [examples[i]])[0], range(len(examples)))
    )
  got = np.array([r.probabilities for r in results], np.float32)
  # Rows computed in another batch may differ in the last bits.
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  batches = batching_server.metrics.exposition().decode()
  assert ":tensorflow:serving:batching_session:processed_batch_size_count" in batches


def test_batched_classify_matches_the_saved_model(batching_server, canned, examples):
  # Classify runs the classification signature through the same batching.
  hostport = f"127.0.0.1:{batching_server.grpc_port}"
  expected = conftest.reference(canned.version_1, "classification", "scores", inputs=examples)
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(
      pool.map(lambda i: client.classify(hostport, [examples[i]])[0], range(len(examples)))
    )
  got = np.array([[score for _, score in r.classes] for r in results], np.float32)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


def test_request_over_max_batch_size_is_invalid(batching_server, examples):
  with pytest.raises(grpc.RpcError) as raised:
    client.predict(f"127.0.0.1:{batching_server.grpc_port}", examples[:5])
  # The client splits at 32 examples, so the server sees one request of five.
  assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Task size 5 is larger than maximum input batch size 4" in raised.value.details()


def test_full_queue_answers_resource_exhausted(batching_server, examples):
  hostport = f"127.0.0.1:{batching_server.grpc_port}"
  request = client.make_predict_request(examples[:4], MODEL_NAME)
  with grpc.insecure_channel(hostport) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    futures = [stub.Predict.future(request, timeout=DEADLINE_SECONDS) for _ in range(64)]
    codes = []
    for future in futures:
      try:
        future.result()
        codes.append(grpc.StatusCode.OK)
      except grpc.RpcError as e:
        codes.append(e.code())
        if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
          assert e.details() == batching.QUEUE_FULL_MESSAGE
  assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
  # Overload passes: the server answers normally again.
  assert client.predict(hostport, examples[:1])[0].model_version == 1
