"""Benchmarks the model server: throughput, latency and CPU cost over gRPC and REST.

    python -m bench.serving_bench [--preset=small] [--duration_seconds=5]
        [--baseline_tree=../other-worktree --repeats=5]

Builds an (untrained) model of the preset, starts `python -m next_category.serving.server`
on loopback ports with batching off and on, and drives it from this process
with closed-loop clients (each sends its next request when the previous
answer arrives) at each concurrency, one example per request; gRPC also runs
with several examples per request at the highest concurrency. Reports
requests/s, predictions/s, p50/p99 latency, the mean processed batch size, the
server's and the client's CPU time per prediction, and the in-process model
call time. Client and server share the machine's cores, so on a busy machine
the CPU times say more than the rates: `cpu_bound_predictions_per_second` is
what the cores could sustain at that cost. Writes bench/results/serving.json
and prints a table. With `--baseline_tree`, a server from that source tree
answers every configuration too, taking turns with this tree's (`--repeats`
runs each): before and after a change, side by side in one run, with the
medians compared at the end.

Two load generators drive gRPC: this process's own `grpc.aio` client (as a
Python program would call the server), and, where it is installed, nghttp2's
`h2load` (`apt-get install nghttp2-client`), a C HTTP/2 load generator that
sends the same gRPC-framed PredictRequest over one connection with
`concurrency` streams. h2load costs the shared cores about a tenth of the
Python client's CPU per request, so its rows say what the server itself can
do on this machine. h2load only sees HTTP statuses; a response it logged
that the server's request counter did not record as OK counts as an error.

The production rows (`features`) put a server with access control, the audit
log and the request log (sampling_rate 1.0) all on beside one with them all
off, at the highest concurrency with one example per gRPC request, taking
turns for `--production_rounds` rounds; then each feature alone once. Two
estimates of the loss: the median all-on rate against the median all-off rate,
and the median of each round's all-on/all-off ratio (the two runs of a round
are back to back, so a machine whose speed drifts weighs on both alike). The
target is met when both are within it; on this shared 2-core machine single
rounds' ratios vary by +-15% (standard deviation about 6-10%), so use 20
rounds or more (the median of 20 is good to about 2%).
"""

import argparse
import asyncio
import base64
import dataclasses
import json
import os
import platform
import re
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

import grpc
import numpy as np
import portpicker
import tensorflow as tf
import uvloop
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc
from tensorflow_serving.apis import prediction_service_pb2_grpc

from bench import load
from bench import source_tree
from next_category.serving import client as client_lib

MODEL_NAME = "next_category"
_REST_PREDICT_PATH = f"/v1/models/{MODEL_NAME}:predict"
RESULTS_PATH = os.path.join("bench", "results", "serving.json")
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BATCHING_PARAMETERS = os.path.join(_REPO_ROOT, "serving", "deploy", "batching_parameters.txt")
_MONITORING_CONFIG = os.path.join(_REPO_ROOT, "serving", "deploy", "monitoring.config")
_DEADLINE_SECONDS = 10.0
_SERVER_START_SECONDS = 300.0
# Targets from the serving issue, at concurrency 32 over gRPC.
_TARGET_PREDICTIONS_PER_SECOND = 2000
_TARGET_P99_MS = 50.0
_TARGET_BATCHING_SPEEDUP = 3.0
# Auth, audit log and request log all on may cost at most this much throughput.
_TARGET_PRODUCTION_LOSS_PERCENT = 5.0


# Source trees a run's server comes from (see --baseline_tree).
THIS_TREE = "this"
BASELINE_TREE = "baseline"

# Load generators (see the module docstring).
PYTHON_CLIENT = "python"
H2LOAD_CLIENT = "h2load"


def _server_module(tree: str) -> str:
  """The server's module in `tree`: this tree's package, or another's (bench/source_tree.py)."""
  if tree == _REPO_ROOT:
    return "next_category.serving.server"
  return source_tree.server_module(tree)


@dataclasses.dataclass
class RunResult:
  """One load run."""

  protocol: str
  client: str
  batching: bool
  concurrency: int
  examples_per_request: int
  requests: int
  errors: int
  seconds: float
  requests_per_second: float
  predictions_per_second: float
  p50_ms: float
  p99_ms: float
  mean_batch_size: Optional[float]
  server_cpu_ms_per_prediction: float
  client_cpu_ms_per_prediction: float
  cpu_bound_predictions_per_second: float
  # Production features on (see PRODUCTION_FEATURES): "off", one of them, or "all".
  features: str = "off"
  # Which source tree served: THIS_TREE, or BASELINE_TREE (--baseline_tree).
  tree: str = "this"


def serialized_examples(num_examples: int, seed: int = 11) -> List[bytes]:
  """Clickstream tf.Examples without the label, as clients send them."""
  from next_category import contract  # pylint: disable=g-import-not-at-top
  from next_category.dataset import clickstream  # pylint: disable=g-import-not-at-top

  label = contract.load().label.name
  examples = []
  for example in clickstream.generate_examples(num_examples, seed=seed):
    del example.features.feature[label]
    examples.append(example.SerializeToString())
  return examples


def build_model(preset: str, base_path: str) -> str:
  """Saves an untrained model of `preset` as version 1 under `base_path`."""
  from next_category import contract  # pylint: disable=g-import-not-at-top
  from next_category.components.trainer import export  # pylint: disable=g-import-not-at-top
  from next_category.components.trainer import model as model_lib  # pylint: disable=g-import-not-at-top
  from next_category.components.trainer import presets  # pylint: disable=g-import-not-at-top

  tf.keras.utils.set_random_seed(0)
  data_contract = contract.load()
  model = model_lib._build_model(presets.get(preset), data_contract)  # pylint: disable=protected-access
  path = os.path.join(base_path, "1")
  export.export_saved_model(model, data_contract, path)
  return path


def in_process_call_ms(
  saved_model_dir: str, examples: List[bytes], batch_sizes: Sequence[int] = (1, 8, 32)
) -> dict:
  """Median wall time of one in-process model call, by batch size.

  `signature` calls the loaded `serving_default` function as a Python program
  would; `server` runs it as the server does (`SavedModelServable.run`: a
  session run of the signature's tensors, on the frozen signature), so the
  rest of a request's time is the server's own overhead.
  """
  from next_category.serving.models import saved_model  # pylint: disable=g-import-not-at-top

  signature = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
  servable = saved_model.SavedModelServable(MODEL_NAME, 1, saved_model_dir)
  signature_def = servable.signature_defs["serving_default"]
  feed = signature_def.inputs["examples"].name
  fetches = tuple(info.name for info in signature_def.outputs.values())
  calls = {
    "signature": lambda batch: signature(examples=tf.constant(batch)),
    "server": lambda batch: servable.run(fetches, {feed: batch}),
  }
  result = {}
  for name, call in calls.items():
    result[name] = {}
    for batch_size in batch_sizes:
      batch = np.array(examples[:batch_size], dtype=object)
      for _ in range(5):
        call(batch)
      times = []
      for _ in range(50):
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
      result[name][str(batch_size)] = round(float(np.median(times)) * 1e3, 3)
  return result


# Production features the bench turns on (README "Serving in production").
AUTH = "auth"
AUDIT = "audit"
REQUEST_LOG = "request_log"
PRODUCTION_FEATURES = (AUTH, AUDIT, REQUEST_LOG)
_BENCH_TOKEN = "bench-token-0123456789"


def _feature_flags(
  base_path: str, features: Sequence[str], workdir: str, sampling_rate: float
) -> List[str]:
  """The server flags that turn `features` on, writing their files into `workdir`."""
  name = "-".join(features) or "off"
  flags = []
  if REQUEST_LOG in features:
    config = os.path.join(workdir, f"models-{name}.config")
    prefix = os.path.join(workdir, f"requests-{name}", MODEL_NAME)
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    with open(config, "w") as f:
      f.write(
        f'model_config_list {{ config {{ name: "{MODEL_NAME}" base_path: "{base_path}" '
        'model_platform: "tensorflow" '
        f"logging_config {{ sampling_config {{ sampling_rate: {sampling_rate} }} "
        f'log_collector_config {{ type: "tfrecord" filename_prefix: "{prefix}" }} }} }} }}\n'
      )
    flags.append(f"--model_config_file={config}")
  else:
    flags += [f"--model_name={MODEL_NAME}", f"--model_base_path={base_path}"]
  if AUTH in features:
    tokens = os.path.join(workdir, f"tokens-{name}")
    with open(tokens, "w") as f:
      f.write(f"{_BENCH_TOKEN} bench {MODEL_NAME}\n")
    flags.append(f"--auth_tokens_file={tokens}")
  if AUDIT in features:
    flags.append(f"--audit_log_file={os.path.join(workdir, f'audit-{name}.jsonl')}")
  return flags


class _Server:
  """`python -m next_category.serving.server` in a subprocess on free loopback ports."""

  def __init__(
    self,
    base_path: str,
    batching: bool,
    log_path: str,
    features: Sequence[str] = (),
    request_log_sampling_rate: float = 1.0,
    tree: str = _REPO_ROOT,
  ):
    self.grpc_port = portpicker.pick_unused_port()
    self.rest_port = portpicker.pick_unused_port()
    self.metadata = (("authorization", f"Bearer {_BENCH_TOKEN}"),) if AUTH in features else None
    command = [
      sys.executable,
      "-m",
      _server_module(tree),
      "--host=127.0.0.1",
      f"--port={self.grpc_port}",
      f"--rest_api_port={self.rest_port}",
      *_feature_flags(base_path, features, os.path.dirname(log_path), request_log_sampling_rate),
      f"--monitoring_config_file={_MONITORING_CONFIG}",
      "--file_system_poll_wait_seconds=0",
      # One thread per op: on few cores, larger TensorFlow pools make
      # concurrent small requests fight over the same cores.
      "--tensorflow_intra_op_parallelism=1",
      "--tensorflow_inter_op_parallelism=1",
    ]
    if batching:
      command += ["--enable_batching", f"--batching_parameters_file={_BATCHING_PARAMETERS}"]
    self._log = open(log_path, "w")
    # `tree`'s serving/ answers (--baseline_tree); the model and the config
    # files are this tree's for both.
    path = tree if tree == _REPO_ROOT else source_tree.python_path(tree)
    env = dict(
      os.environ, PYTHONPATH=os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))
    )
    self._process = subprocess.Popen(
      command, cwd=tree, env=env, stdout=self._log, stderr=subprocess.STDOUT
    )
    try:
      self._wait_until_ready()
    except BaseException:
      self.stop()
      raise

  @property
  def pid(self) -> int:
    return self._process.pid

  def _wait_until_ready(self) -> None:
    deadline = time.monotonic() + _SERVER_START_SECONDS
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
      stub = model_service_pb2_grpc.ModelServiceStub(channel)
      while time.monotonic() < deadline:
        if self._process.poll() is not None:
          raise RuntimeError(
            f"The server exited with {self._process.returncode}; see {self._log.name}."
          )
        try:
          response = stub.GetModelStatus(request, timeout=1.0, metadata=self.metadata)
          if any(s.state == s.AVAILABLE for s in response.model_version_status):
            return
        except grpc.RpcError:
          pass
        time.sleep(0.2)
    raise TimeoutError(f"The server was not ready in {_SERVER_START_SECONDS} s.")

  def _metrics_text(self) -> str:
    """The server's Prometheus metrics, in text format."""
    url = f"http://127.0.0.1:{self.rest_port}/monitoring/prometheus/metrics"
    return urllib.request.urlopen(url, timeout=_DEADLINE_SECONDS).read().decode()

  def batch_stats(self) -> np.ndarray:
    """(examples, batches) processed so far, from the server's Prometheus metrics."""
    text = self._metrics_text()
    values = []
    for name in ("sum", "count"):
      match = re.search(
        rf"^:tensorflow:serving:batching_session:processed_batch_size_{name}\{{[^}}]*\}} (\S+)$",
        text,
        re.MULTILINE,
      )
      values.append(float(match.group(1)) if match else 0.0)
    return np.array(values)

  def request_counts(self) -> Dict[str, float]:
    """Requests answered so far by status (OK, INVALID_ARGUMENT, ...), from the server's metrics."""
    counts: Dict[str, float] = {}
    for match in re.finditer(
      r'^:tensorflow:serving:request_count\{[^}]*status="(\w+)"[^}]*\} (\S+)$',
      self._metrics_text(),
      re.MULTILINE,
    ):
      counts[match.group(1)] = counts.get(match.group(1), 0.0) + float(match.group(2))
    return counts

  def stop(self) -> None:
    self._process.terminate()
    try:
      self._process.wait(30)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._log.close()


async def _grpc_load(port: int, request, concurrency: int, seconds: float, metadata=None):
  latencies, errors = [], 0
  async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    end = time.perf_counter() + seconds

    async def worker():
      nonlocal errors
      while (start := time.perf_counter()) < end:
        try:
          await stub.Predict(request, timeout=_DEADLINE_SECONDS, metadata=metadata)
          latencies.append(time.perf_counter() - start)
        except grpc.aio.AioRpcError:
          errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
  return latencies, errors


def _h2load_load(server: _Server, request, concurrency: int, seconds: float) -> Tuple[list, int]:
  """Runs h2load against Predict; latencies from its per-request log."""
  with tempfile.TemporaryDirectory(prefix="h2load_") as workdir:
    body = os.path.join(workdir, "request.bin")
    message = request.SerializeToString()
    with open(body, "wb") as f:  # gRPC framing: uncompressed flag, length, message.
      f.write(b"\x00" + struct.pack(">I", len(message)) + message)
    log = os.path.join(workdir, "requests.tsv")
    ok_before = server.request_counts().get("OK", 0.0)
    subprocess.run(
      [
        "h2load",
        "--clients=1",
        f"--max-concurrent-streams={concurrency}",
        f"--duration={round(seconds * 1000)}ms",
        f"--data={body}",
        "--header=content-type: application/grpc",
        "--header=te: trailers",
        *[f"--header={key}: {value}" for key, value in server.metadata or ()],
        f"--log-file={log}",
        f"http://127.0.0.1:{server.grpc_port}/tensorflow.serving.PredictionService/Predict",
      ],
      check=True,
      stdout=subprocess.DEVNULL,
    )
    ok = server.request_counts().get("OK", 0.0) - ok_before
    latencies, errors = [], 0
    with open(log) as f:
      for line in f:  # start (us since epoch), HTTP status, duration (us).
        _, http_status, micros = line.split("\t")[:3]
        if http_status == "200":
          latencies.append(int(micros) / 1e6)
        else:
          errors += 1
  # A gRPC error still arrives as HTTP 200. The server counts each answer
  # before sending it, so a logged response it did not count as OK is an
  # error. (The streams h2load resets when its time is up reach the server
  # as CANCELLED; they are not in the log and are not errors.)
  errors += max(0, len(latencies) - round(ok))
  return latencies, errors


def _run(coroutine):
  with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    return runner.run(coroutine)


def _load(
  server: _Server,
  protocol: str,
  client: str,
  concurrency: int,
  examples: List[bytes],
  seconds: float,
) -> Tuple[list, int]:
  if protocol == "grpc":
    request = client_lib.make_predict_request(examples, MODEL_NAME)
    if client == H2LOAD_CLIENT:
      return _h2load_load(server, request, concurrency, seconds)
    return _run(_grpc_load(server.grpc_port, request, concurrency, seconds, server.metadata))
  instances = [{"b64": base64.b64encode(e).decode()} for e in examples]
  body = json.dumps({"instances": instances}).encode()
  return _run(load.rest_load(server.rest_port, _REST_PREDICT_PATH, body, concurrency, seconds))


def _own_and_children_cpu_seconds() -> float:
  """CPU time of this process and of its finished children (h2load)."""
  total = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    usage = resource.getrusage(who)
    total += usage.ru_utime + usage.ru_stime
  return total


def run_load(
  server: _Server,
  protocol: str,
  batching: bool,
  concurrency: int,
  examples: List[bytes],
  seconds: float,
  warmup_seconds: float,
  client: str = PYTHON_CLIENT,
  features: str = "off",
) -> RunResult:
  """Drives the server with `concurrency` closed-loop clients for `seconds`.

  Each request carries all of `examples`.
  """
  _load(server, protocol, client, concurrency, examples, warmup_seconds)
  batches_before = server.batch_stats()
  server_cpu = load.process_cpu_seconds(server.pid)
  client_cpu = _own_and_children_cpu_seconds()
  latencies, errors = _load(server, protocol, client, concurrency, examples, seconds)
  server_cpu = load.process_cpu_seconds(server.pid) - server_cpu
  client_cpu = _own_and_children_cpu_seconds() - client_cpu
  processed, batches = server.batch_stats() - batches_before
  requests = len(latencies)
  predictions = max(requests * len(examples), 1)
  latencies_ms = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
  server_ms = server_cpu * 1e3 / predictions
  client_ms = client_cpu * 1e3 / predictions
  return RunResult(
    protocol=protocol,
    client=client,
    batching=batching,
    concurrency=concurrency,
    examples_per_request=len(examples),
    requests=requests,
    errors=errors,
    seconds=seconds,
    requests_per_second=round(requests / seconds, 1),
    predictions_per_second=round(requests * len(examples) / seconds, 1),
    p50_ms=round(float(np.percentile(latencies_ms, 50)), 2),
    p99_ms=round(float(np.percentile(latencies_ms, 99)), 2),
    mean_batch_size=round(processed / batches, 2) if batching and batches else None,
    server_cpu_ms_per_prediction=round(server_ms, 3),
    client_cpu_ms_per_prediction=round(client_ms, 3),
    cpu_bound_predictions_per_second=round((os.cpu_count() or 1) * 1e3 / (server_ms + client_ms)),
    features=features,
  )


_HEADER = (
  f"{'protocol':8} {'client':6} {'batching':8} {'conc':>4} {'ex/req':>6} {'req/s':>7} "
  f"{'pred/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} {'srv cpu ms':>10} {'cli cpu ms':>10} "
  f"{'cpu-bound':>9} {'errors':>6} {'tree':8} features"
)


def _row(r: RunResult) -> str:
  batch = f"{r.mean_batch_size:.1f}" if r.mean_batch_size else "-"
  return (
    f"{r.protocol:8} {r.client:6} {'on' if r.batching else 'off':8} {r.concurrency:>4} "
    f"{r.examples_per_request:>6} {r.requests_per_second:>7.0f} {r.predictions_per_second:>7.0f} "
    f"{r.p50_ms:>7.1f} {r.p99_ms:>7.1f} {batch:>5} {r.server_cpu_ms_per_prediction:>10.3f} "
    f"{r.client_cpu_ms_per_prediction:>10.3f} {r.cpu_bound_predictions_per_second:>9.0f} "
    f"{r.errors:>6} {r.tree:8} {r.features}"
  )


def _targets(results: List[RunResult], concurrency: int, client: str) -> dict:
  """The targets, judged on the median of this tree's runs of each configuration.

  A run repeats (`--repeats`, `--production_rounds`): the first one alone would
  say as much about the machine's speed at that moment as about the server.
  """

  def median(batching, field):
    values = [
      getattr(r, field)
      for r in results
      if (r.protocol, r.client, r.batching, r.concurrency, r.examples_per_request)
      == ("grpc", client, batching, concurrency, 1)
      and r.features == "off"
      and r.tree == THIS_TREE
    ]
    return round(float(np.median(values)), 2) if values else None

  batched = median(True, "predictions_per_second")
  if batched is None:
    return {}
  p99 = median(True, "p99_ms")
  targets = {
    "concurrency": concurrency,
    "examples_per_request": 1,
    "runs": sum(
      1
      for r in results
      if (r.protocol, r.client, r.batching, r.concurrency, r.examples_per_request, r.features)
      == ("grpc", client, True, concurrency, 1, "off")
      and r.tree == THIS_TREE
    ),
    "predictions_per_second": batched,
    "predictions_per_second_target": _TARGET_PREDICTIONS_PER_SECOND,
    "throughput_met": batched >= _TARGET_PREDICTIONS_PER_SECOND,
    "p99_ms": p99,
    "p99_ms_target": _TARGET_P99_MS,
    "p99_met": p99 <= _TARGET_P99_MS,
  }
  unbatched = median(False, "predictions_per_second")
  if unbatched:
    speedup = batched / unbatched
    targets.update(
      batching_speedup=round(speedup, 2),
      batching_speedup_target=_TARGET_BATCHING_SPEEDUP,
      batching_speedup_met=speedup >= _TARGET_BATCHING_SPEEDUP,
    )
  return targets


def baseline_comparison(results: List[RunResult]) -> List[dict]:
  """Per configuration, this tree's median predictions/s against the baseline tree's."""
  rows = {}
  for r in results:
    if r.features != "off":
      continue
    key = (r.protocol, r.client, r.batching, r.concurrency, r.examples_per_request)
    rows.setdefault(key, {THIS_TREE: [], BASELINE_TREE: []})[r.tree].append(r)
  comparison = []
  for (protocol, client, batching, concurrency, examples), by_tree in rows.items():
    if not by_tree[THIS_TREE] or not by_tree[BASELINE_TREE]:
      continue
    this = float(np.median([r.predictions_per_second for r in by_tree[THIS_TREE]]))
    base = float(np.median([r.predictions_per_second for r in by_tree[BASELINE_TREE]]))
    comparison.append(
      {
        "protocol": protocol,
        "client": client,
        "batching": batching,
        "concurrency": concurrency,
        "examples_per_request": examples,
        "runs_per_tree": len(by_tree[THIS_TREE]),
        "baseline_predictions_per_second": round(base, 1),
        "this_predictions_per_second": round(this, 1),
        "change_percent": round((this / base - 1) * 100, 1) if base else None,
        "baseline_server_cpu_ms": round(
          float(np.median([r.server_cpu_ms_per_prediction for r in by_tree[BASELINE_TREE]])), 3
        ),
        "this_server_cpu_ms": round(
          float(np.median([r.server_cpu_ms_per_prediction for r in by_tree[THIS_TREE]])), 3
        ),
      }
    )
  return comparison


def run_production_comparison(
  base_path: str,
  workdir: str,
  examples: List[bytes],
  concurrency: int,
  rounds: int,
  seconds: float,
  warmup_seconds: float,
  clients: Sequence[str],
  sampling_rate: float,
) -> Tuple[List[RunResult], dict]:
  """All production features off against all on, interleaved; then each one alone.

  Both servers run side by side (batching on, as `make serve`) and take turns,
  the order flipping each round, so a busy machine weighs on both alike. The
  verdict compares the medians of the rounds.
  """
  results, summary = [], {}

  def measure(server: _Server, client: str, features: str) -> RunResult:
    result = run_load(
      server, "grpc", True, concurrency, examples[:1], seconds, warmup_seconds, client, features
    )
    print(_row(result), flush=True)
    results.append(result)
    return result

  servers = {
    name: _Server(
      base_path,
      True,
      os.path.join(workdir, f"server_{name}.log"),
      features,
      sampling_rate,
    )
    for name, features in (("off", ()), ("all", PRODUCTION_FEATURES))
  }
  try:
    for client in clients:
      rates = {"off": [], "all": []}
      for index in range(rounds):
        for name in ("off", "all") if index % 2 == 0 else ("all", "off"):
          rates[name].append(measure(servers[name], client, name).predictions_per_second)
      off, on = float(np.median(rates["off"])), float(np.median(rates["all"]))
      loss = 100.0 * (off - on) / off if off else float("nan")
      ratios = [a / o for a, o in zip(rates["all"], rates["off"], strict=True) if o]
      paired_loss = 100.0 * (1.0 - float(np.median(ratios))) if ratios else float("nan")
      summary[client] = {
        "concurrency": concurrency,
        "rounds": rounds,
        "off_predictions_per_second": rates["off"],
        "all_predictions_per_second": rates["all"],
        "median_off": round(off, 1),
        "median_all": round(on, 1),
        "loss_percent": round(loss, 1),
        "paired_loss_percent": round(paired_loss, 1),
        "loss_percent_target": _TARGET_PRODUCTION_LOSS_PERCENT,
        "loss_met": max(loss, paired_loss) <= _TARGET_PRODUCTION_LOSS_PERCENT,
        "request_log_sampling_rate": sampling_rate,
      }
  finally:
    for server in servers.values():
      server.stop()
  for feature in PRODUCTION_FEATURES:
    server = _Server(
      base_path, True, os.path.join(workdir, f"server_{feature}.log"), (feature,), sampling_rate
    )
    try:
      measure(server, clients[0], feature)
    finally:
      server.stop()
  return results, summary


def run_benchmark(
  preset: str,
  concurrencies: Sequence[int],
  protocols: Sequence[str],
  multi_example_sizes: Sequence[int],
  seconds: float,
  warmup_seconds: float,
  output: str,
  production_rounds: int = 20,
  production_only: bool = False,
  request_log_sampling_rate: float = 1.0,
  baseline_tree: str = "",
  repeats: int = 1,
) -> dict:
  """Runs every configuration and writes the JSON report to `output`.

  With `baseline_tree`, every configuration also runs on a server from that
  source tree (`python -m next_category.serving.server` there), taking turns with this
  tree's, `repeats` times each: before and after, side by side in one run.
  """
  load_before = os.getloadavg()
  h2load = shutil.which("h2load") is not None
  if not h2load:
    print("h2load not found (apt-get install nghttp2-client): gRPC uses the Python client only.")
  results = []
  with tempfile.TemporaryDirectory(prefix="serving_bench_") as workdir:
    base_path = os.path.join(workdir, MODEL_NAME)
    saved_model_dir = build_model(preset, base_path)
    examples = serialized_examples(256)
    in_process = in_process_call_ms(saved_model_dir, examples)
    trees = [(THIS_TREE, _REPO_ROOT)]
    if baseline_tree:
      trees.append((BASELINE_TREE, os.path.abspath(baseline_tree)))
    for batching in () if production_only else (False, True):
      servers = {}
      try:
        for name, tree in trees:
          log = os.path.join(workdir, f"server_{name}_{batching}.log")
          servers[name] = _Server(base_path, batching, log, tree=tree)
        runs = [(p, PYTHON_CLIENT, c, 1) for p in protocols for c in concurrencies]
        if "grpc" in protocols:
          runs += [("grpc", PYTHON_CLIENT, max(concurrencies), n) for n in multi_example_sizes]
          runs += [("grpc", H2LOAD_CLIENT, c, 1) for c in concurrencies if h2load]
        for protocol, client, concurrency, examples_per_request in runs:
          for repeat in range(repeats):
            # The trees take turns, first one then the other, so a machine
            # whose speed drifts weighs on both alike.
            for name, _ in trees if repeat % 2 == 0 else trees[::-1]:
              result = run_load(
                servers[name],
                protocol,
                batching,
                concurrency,
                examples[:examples_per_request],
                seconds,
                warmup_seconds,
                client,
              )
              result.tree = name
              print(_row(result), flush=True)
              results.append(result)
      finally:
        for server in servers.values():
          server.stop()
    production = {}
    if production_rounds:
      runs, production = run_production_comparison(
        base_path,
        workdir,
        examples,
        max(concurrencies),
        production_rounds,
        seconds,
        warmup_seconds,
        [H2LOAD_CLIENT, PYTHON_CLIENT] if h2load else [PYTHON_CLIENT],
        request_log_sampling_rate,
      )
      results += runs
  report = {
    "preset": preset,
    "seconds_per_run": seconds,
    "machine": {
      "cpus": os.cpu_count(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "load_average_before": load_before,
      "load_average_after": os.getloadavg(),
    },
    "in_process_call_ms": in_process,
    "runs": [dataclasses.asdict(r) for r in results],
    "targets": {
      client: _targets(results, max(concurrencies), client)
      for client in (PYTHON_CLIENT, H2LOAD_CLIENT)
      if any(r.client == client and r.features == "off" for r in results)
    },
    "production_features": production,
    "baseline_tree": os.path.abspath(baseline_tree) if baseline_tree else None,
    "baseline_comparison": baseline_comparison(results) if baseline_tree else [],
  }
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(report, f, indent=2)
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m bench.serving_bench", description=__doc__.split("\n", 1)[0]
  )
  parser.add_argument("--preset", default="small", help="Model preset (default: %(default)s).")
  parser.add_argument(
    "--concurrency", default="1,8,32", help="Client concurrencies (default: %(default)s)."
  )
  parser.add_argument(
    "--protocols", default="grpc,rest", help="grpc and/or rest (default: %(default)s)."
  )
  parser.add_argument(
    "--examples_per_request",
    default="8",
    help="Extra gRPC runs at the highest concurrency with this many examples per request; "
    "empty for none (default: %(default)s).",
  )
  parser.add_argument(
    "--duration_seconds", type=float, default=5.0, help="Measured seconds per run."
  )
  parser.add_argument(
    "--warmup_seconds", type=float, default=1.0, help="Unmeasured seconds before each run."
  )
  parser.add_argument(
    "--output", default=RESULTS_PATH, help="The JSON report (default: %(default)s)."
  )
  parser.add_argument(
    "--production_rounds",
    type=int,
    default=20,
    help="Interleaved rounds of all production features off vs on (auth, audit log, request "
    "log), gRPC, one example, the highest concurrency; 0 skips them (default: %(default)s).",
  )
  parser.add_argument(
    "--production_only",
    action="store_true",
    help="Run only the production features comparison.",
  )
  parser.add_argument(
    "--request_log_sampling_rate",
    type=float,
    default=1.0,
    help="The request log's sampling_rate in the production runs (default: %(default)s).",
  )
  parser.add_argument(
    "--baseline_tree",
    default="",
    help="Also serve every configuration from this source tree (e.g. a worktree of the "
    "previous commit), taking turns with this one: before and after in one run.",
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=1,
    help="Runs of each configuration per tree (medians are compared; default: %(default)s).",
  )
  args = parser.parse_args(argv)
  concurrencies = [int(c) for c in args.concurrency.split(",")]
  protocols = [p.strip() for p in args.protocols.split(",")]
  sizes = [int(n) for n in args.examples_per_request.split(",") if n.strip()]
  print(_HEADER, flush=True)
  report = run_benchmark(
    args.preset,
    concurrencies,
    protocols,
    sizes,
    args.duration_seconds,
    args.warmup_seconds,
    args.output,
    production_rounds=args.production_rounds,
    production_only=args.production_only,
    request_log_sampling_rate=args.request_log_sampling_rate,
    baseline_tree=args.baseline_tree,
    repeats=args.repeats,
  )
  print()
  print(_HEADER)
  for run in report["runs"]:
    print(_row(RunResult(**run)))
  print(f"in-process model call, ms by batch size: {report['in_process_call_ms']}")
  print(
    f"load average before/after: {report['machine']['load_average_before']} / "
    f"{report['machine']['load_average_after']}"
  )
  print(f"targets: {json.dumps(report['targets'])}")
  if report["baseline_comparison"]:
    print(f"before ({report['baseline_tree']}) and after (this tree), medians of each tree's runs:")
    for row in report["baseline_comparison"]:
      print(
        f"  {row['protocol']} {row['client']} batching {'on' if row['batching'] else 'off'} "
        f"c{row['concurrency']} x{row['examples_per_request']}: "
        f"{row['baseline_predictions_per_second']:.0f} -> {row['this_predictions_per_second']:.0f} "
        f"pred/s ({row['change_percent']:+.1f}%), server CPU "
        f"{row['baseline_server_cpu_ms']:.3f} -> {row['this_server_cpu_ms']:.3f} ms/prediction"
      )
  for client, verdict in report["production_features"].items():
    print(
      f"production features, {client}: all off {verdict['median_off']:.0f} pred/s, all on "
      f"{verdict['median_all']:.0f} pred/s (medians of {verdict['rounds']} interleaved rounds): "
      f"loss {verdict['loss_percent']:.1f}%, median of paired rounds "
      f"{verdict['paired_loss_percent']:.1f}% (target <= {verdict['loss_percent_target']:g}%, "
      f"{'met' if verdict['loss_met'] else 'NOT met'})"
    )
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
