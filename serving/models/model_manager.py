"""Model version lifecycle, as TensorFlow Serving's ServerCore manages it.

Each configured model's base path is polled for numeric version directories.
The version policy (latest N, specific versions, or all) decides which
versions are aspired; new aspired versions are loaded newest first, and a
version the policy no longer wants is unloaded only once an aspired version is
available (TensorFlow Serving's AvailabilityPreservingPolicy). So a version
that fails to load never takes the place of the one serving: its error shows
in the model status, it is retried a bounded number of times (at once, as
TensorFlow Serving's loader harness retries), and the old version keeps
answering. Requests resolve a version at the moment they
arrive; in-flight requests keep the servable they resolved.
"""

import dataclasses
import logging
import os
import threading
from typing import Callable
from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional
from typing import Tuple

import grpc
import tensorflow as tf
from google.protobuf import message as protobuf_message
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from next_category.serving import status
from next_category.serving.config import server_config
from next_category.serving.models import servables

State = get_model_status_pb2.ModelVersionStatus.State

# Loads one version: (model name, version, version directory) -> Servable.
Loader = Callable[[str, int, str], servables.Servable]
# Observes lifecycle changes: (model name, version, state, error or None).
StateObserver = Callable[[str, int, int, Optional[status.ServingError]], None]


@dataclasses.dataclass
class _Version:
  version: int
  path: str
  state: int = State.START
  error: Optional[status.ServingError] = None
  servable: Optional[servables.Servable] = None
  failed_attempts: int = 0
  # The last failed try's error, also while the load is retried (state LOADING).
  last_error: Optional[status.ServingError] = None


def _versions_on_disk(base_path: str) -> Dict[int, str]:
  """Numeric version directories; none if the base path cannot be listed.

  An unreadable base path unloads nothing: versions are only unloaded once a
  version the policy wants is available. One directory per number: when
  several names stand for one number (`42`, `042`, `0042`), the last in
  sorted order is the version and the others are ignored with TensorFlow
  Serving's warning (`IndexChildrenByVersion`,
  tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc,
  which walks the children as a sorted std::set). That is the plain `42`
  beside any zero-padded name; a zero-padded name alone (TensorFlow Serving's
  own test models are `00000123`) still serves.
  """
  try:
    children = tf.io.gfile.listdir(base_path)
  except tf.errors.NotFoundError:
    return {}
  except tf.errors.OpError as e:
    logging.error("Could not list base path %s: %s", base_path, e)
    return {}
  versions = {}
  for child in sorted(child.rstrip("/") for child in children):
    if child.isascii() and child.isdigit() and int(child) < 2**63:
      number = int(child)
      if number in versions:
        logging.warning(
          "Duplicate version directories detected. Version %d will be loaded from %s, %s will "
          "be ignored.",
          number,
          child,
          os.path.basename(versions[number]),
        )
      versions[number] = os.path.join(base_path, child)
  return versions


def _aspired_versions(
  config: model_server_config_pb2.ModelConfig, on_disk: Dict[int, str]
) -> List[int]:
  policy = config.model_version_policy
  choice = policy.WhichOneof("policy_choice")
  if choice == "all":
    return sorted(on_disk)
  if choice == "specific":
    return sorted(v for v in set(policy.specific.versions) if v in on_disk)
  num_versions = policy.latest.num_versions if choice == "latest" else 1
  return sorted(on_disk)[-max(num_versions, 1) :] if on_disk else []


def _load_error(error: Exception) -> Tuple[grpc.StatusCode, str]:
  """The status code and message of a failed load, with TensorFlow's own codes.

  TensorFlow Serving reports a load failure with the code of the TensorFlow
  status that caused it (a corrupt checkpoint is DATA_LOSS, a missing file
  NOT_FOUND), never a blanket UNKNOWN.
  """
  if isinstance(error, status.ServingError):
    return error.code, error.message
  if isinstance(error, tf.errors.OpError):
    converted = status.from_tf_error(error)
    return converted.code, converted.message
  if isinstance(error, protobuf_message.DecodeError):
    # TensorFlow's ReadBinaryProto: "Can't parse ... as binary proto" is DATA_LOSS.
    return grpc.StatusCode.DATA_LOSS, f"Can't parse the SavedModel as a binary proto: {error}"
  if isinstance(error, IndexError):
    # TensorFlow's file reads answer "Read less bytes than requested" with OUT_OF_RANGE,
    # which its Python bindings raise as IndexError.
    return grpc.StatusCode.OUT_OF_RANGE, str(error)
  if isinstance(error, FileNotFoundError):
    return grpc.StatusCode.NOT_FOUND, str(error)
  if isinstance(error, PermissionError):
    return grpc.StatusCode.PERMISSION_DENIED, str(error)
  if isinstance(error, (ValueError, TypeError)):
    return grpc.StatusCode.INVALID_ARGUMENT, f"{type(error).__name__}: {error}"
  return grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"


def _without_paths(
  error: Optional[status.ServingError], base_path: str
) -> Optional[status.ServingError]:
  if error is None:
    return None
  return status.ServingError(error.code, status.without_paths(error.message, base_path))


class ModelManager:
  """Keeps the configured models' versions loaded and answers which one serves.

  Thread-safe. Lookups (`servable`) read an immutable snapshot and take no
  lock, so they never wait for a load.

  Args:
    config: the models to serve.
    loader: loads one version (see `Loader`); warmup belongs in it.
    poll_wait_seconds: seconds between polls of the base paths; 0 or less
      polls once, at `start`.
    max_num_load_retries: times a failed load is retried.
    load_retry_interval_seconds: wait before retrying a failed load.
    observer: optional callback on every state change.
    platforms: the model platforms configs may name.
  """

  def __init__(
    self,
    config: model_server_config_pb2.ModelServerConfig,
    loader: Loader,
    poll_wait_seconds: float = 1.0,
    max_num_load_retries: int = 5,
    load_retry_interval_seconds: float = 60.0,
    observer: Optional[StateObserver] = None,
    platforms: Iterable[str] = (server_config.TENSORFLOW_PLATFORM,),
  ):
    self._platforms = frozenset(platforms)
    server_config.validate_model_server_config(config, self._platforms)
    self._config = config
    self._loader = loader
    self._poll_wait_seconds = poll_wait_seconds
    self._max_num_load_retries = max_num_load_retries
    self._load_retry_interval_seconds = load_retry_interval_seconds
    self._observer = observer
    self._lock = threading.Lock()  # Guards _versions.
    self._poll_lock = threading.Lock()  # One poll (or reload) at a time.
    self._versions: Dict[str, Dict[int, _Version]] = {}
    # Copy-on-write snapshots for lock-free lookups.
    self._available: Dict[str, Dict[int, servables.Servable]] = {}
    self._labels: Dict[str, Dict[str, int]] = {}
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  @property
  def config(self) -> model_server_config_pb2.ModelServerConfig:
    return self._config

  def start(self, background: bool = False) -> None:
    """Loads the current versions, then keeps polling in the background.

    A negative `poll_wait_seconds` never polls, so nothing loads (TensorFlow
    Serving's `--file_system_poll_wait_seconds` below 0, "reserved for
    testing": the server waits for its models for ever).

    Args:
      background: make the first poll (and its loads and load retries) on
        the polling thread too, and return at once; `stop` cancels retries
        that are waiting.
    """
    if self._poll_wait_seconds < 0:
      return
    if not background:
      self.poll_once()
    if background or self._poll_wait_seconds > 0:
      self._thread = threading.Thread(
        target=self._poll_loop, args=(background,), name="model-poller", daemon=True
      )
      self._thread.start()

  def stop(self) -> None:
    """Stops polling and unloads every version (queued requests finish first)."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    with self._poll_lock:
      for name in list(self._versions):
        for version in list(self._versions[name].values()):
          if version.state == State.AVAILABLE:
            self._unload(name, version)

  def reload_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
    """Switches to a new config: models it drops are unloaded, new ones loaded.

    Raises:
      ConfigError: if the config is not supported (nothing changes then).
    """
    server_config.validate_model_server_config(config, self._platforms)
    with self._poll_lock:
      self._config = config
      self._poll_locked()

  def poll_once(self) -> None:
    """Loads and unloads versions to match the base paths and the config."""
    with self._poll_lock:
      self._poll_locked()

  def _poll_loop(self, poll_first: bool) -> None:
    if poll_first:
      self._poll_safely()
      if self._poll_wait_seconds == 0:
        return
    while not self._stop.wait(self._poll_wait_seconds):
      self._poll_safely()

  def _poll_safely(self) -> None:
    try:
      self.poll_once()
    except Exception:  # The poller must outlive any one bad poll.
      logging.exception("Polling the model base paths failed")

  def _poll_locked(self) -> None:
    models = {model.name: model for model in self._config.model_config_list.config}
    for name in list(self._versions):
      if name not in models:
        for version in list(self._versions[name].values()):
          if version.state == State.AVAILABLE:
            self._unload(name, version)
    self._labels = {name: dict(model.version_labels) for name, model in models.items()}
    for name, model in models.items():
      if self._stop.is_set():
        return
      self._poll_model(name, model)

  def _poll_model(self, name: str, model: model_server_config_pb2.ModelConfig) -> None:
    with self._lock:
      versions = self._versions.setdefault(name, {})
    on_disk = _versions_on_disk(model.base_path)
    if not on_disk and not versions:
      logging.warning("No versions of servable %s found under base path %s", name, model.base_path)
    aspired = _aspired_versions(model, on_disk)
    for number in sorted(aspired, reverse=True):
      version = versions.get(number)
      if version is not None:
        if version.state == State.AVAILABLE:
          continue
        if version.error is not None and version.failed_attempts > self._max_num_load_retries:
          continue
      self._load(name, number, on_disk[number])
    if any(versions[v].state == State.AVAILABLE for v in aspired if v in versions):
      for number, version in sorted(versions.items()):
        if version.state == State.AVAILABLE and number not in aspired:
          self._unload(name, version)

  def _set_state(
    self, name: str, version: _Version, state: int, error: Optional[status.ServingError] = None
  ) -> None:
    with self._lock:
      version.state = state
      version.error = error
      available = {
        model: {v.version: v.servable for v in versions.values() if v.state == State.AVAILABLE}
        for model, versions in self._versions.items()
      }
      self._available = available
    if self._observer is not None:
      self._observer(name, version.version, state, error)

  def _load(self, name: str, number: int, path: str) -> None:
    """Loads a version, retrying a failed load as TensorFlow Serving's `Retry` does.

    Up to `max_num_load_retries` retries after the first try, waiting
    `load_retry_interval_seconds` before each (none if negative); stopping
    the manager cancels the wait (tensorflow_serving/util/retrier.cc:26-52,
    called from core/loader_harness.cc:72-83). Meanwhile the version is
    LOADING, as there. The poll that started the load waits for it, as the
    manager's load thread does with `--num_load_threads=0`.
    """
    with self._lock:
      previous = self._versions[name].get(number)
      version = _Version(number, path)
      if previous is not None:
        version.failed_attempts = previous.failed_attempts
      self._versions[name][number] = version
    self._set_state(name, version, State.LOADING)
    description = f"Loading servable: {{name: {name} version: {number}}}"
    tries = 0
    while True:
      if tries:
        if self._load_retry_interval_seconds > 0:
          self._stop.wait(self._load_retry_interval_seconds)
        if self._stop.is_set():
          logging.info("Retrying of %s was cancelled.", description)
          break
        logging.info("Retrying of %s retry: %d", description, tries)
      try:
        servable = self._loader(name, number, path)
      except Exception as e:  # Any load failure leaves the serving version alone.
        tries += 1
        version.failed_attempts += 1
        code, message = _load_error(e)
        error = status.ServingError(code, f"{description} failed: {message}")
        version.last_error = error
        logging.error("%s failed: %s: %s", description, code.name, message)
        if version.failed_attempts > self._max_num_load_retries:
          logging.info(
            "Retrying of %s exhausted max_num_retries: %d",
            description,
            self._max_num_load_retries,
          )
          break
        continue
      version.servable = servable
      self._set_state(name, version, State.AVAILABLE)
      logging.info("Successfully loaded servable version {name: %s version: %d}", name, number)
      return
    self._set_state(name, version, State.END, error)

  def _unload(self, name: str, version: _Version) -> None:
    self._set_state(name, version, State.UNLOADING)
    servable, version.servable = version.servable, None
    if servable is not None:
      servable.close()
    self._set_state(name, version, State.END)
    logging.info("Unloaded servable version {name: %s version: %d}", name, version.version)

  def models_without_versions(self) -> List[str]:
    """The configured models that have no version available."""
    available = self._available
    return [
      model.name for model in self._config.model_config_list.config if not available.get(model.name)
    ]

  def last_load_errors(self, name: str) -> List[str]:
    """The last load error of each of a model's versions that failed a try, newest first."""
    with self._lock:
      versions = sorted(self._versions.get(name, {}).values(), key=lambda v: -v.version)
      return [v.last_error.message for v in versions if v.last_error is not None]

  def load_failures(self) -> Dict[str, List[Tuple[int, status.ServingError]]]:
    """The models none of whose versions can load any more, with each version's error.

    A model is listed when it has versions and every one of them failed to
    load with no retry left: nothing it has will become available until a new
    version appears. TensorFlow Serving reaches the same verdict at start-up:
    its wait for the models (ServableStateMonitor::WaitUntilServablesReachState,
    tensorflow_serving/core/servable_state_monitor.cc) ends when a servable is
    AVAILABLE or END, and a version is END only after LoaderHarness::Load
    (tensorflow_serving/core/loader_harness.cc) has spent --max_num_load_retries.
    A model with a version loading, one with retries left, or no version found
    yet is not listed.

    Returns:
      `{model name: [(version, error), ...]}`, newest version first.
    """
    with self._lock:
      failures = {}
      for name, versions in self._versions.items():
        if versions and all(
          v.state == State.END
          and v.error is not None
          and v.failed_attempts > self._max_num_load_retries
          for v in versions.values()
        ):
          failures[name] = [(v.version, v.error) for v in versions.values()]
    return {name: sorted(errors, reverse=True) for name, errors in failures.items()}

  def servable(self, model_spec: model_pb2.ModelSpec) -> servables.Servable:
    """The servable a request's model spec asks for.

    Raises:
      ServingError: NOT_FOUND for an unknown model or a version that is not
        available; INVALID_ARGUMENT for an unknown version label.
    """
    name = model_spec.name
    if not name:
      raise status.invalid_argument("Missing model name in request.")
    available = self._available.get(name, {})
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version_label":
      label = model_spec.version_label
      number = self._labels.get(name, {}).get(label)
      if number is None:
        raise status.invalid_argument(f"Unrecognized servable version label: {label}")
      choice, requested = "version", number
    elif choice == "version":
      requested = model_spec.version.value
    if choice == "version":
      servable = available.get(requested)
      if servable is None:
        raise status.not_found(f"Servable not found for request: Specific({name}, {requested})")
      return servable
    if not available:
      raise status.not_found(f"Servable not found for request: Latest({name})")
    return available[max(available)]

  def version_statuses(
    self, model_spec: model_pb2.ModelSpec
  ) -> List[Tuple[int, int, Optional[status.ServingError]]]:
    """`(version, state, error)` of a model's versions, newest first.

    An error shows no file path of the server's: a path under the model's
    base path as `<base_path>/...`, any other as `<path>` (the server's log
    keeps them whole).

    Raises:
      ServingError: NOT_FOUND if the model or the asked version is unknown;
        INVALID_ARGUMENT for an unknown label.
    """
    name = model_spec.name
    if not name:
      raise status.invalid_argument("Missing model name in request.")
    with self._lock:
      versions = [(v.version, v.state, v.error) for v in self._versions.get(name, {}).values()]
    if not versions:
      raise status.not_found(f"Could not find any versions of model {name}")
    choice = model_spec.WhichOneof("version_choice")
    requested = None
    if choice == "version":
      requested = model_spec.version.value
    elif choice == "version_label":
      requested = self._labels.get(name, {}).get(model_spec.version_label)
      if requested is None:
        raise status.invalid_argument(
          f"Unrecognized servable version label: {model_spec.version_label}"
        )
    if requested is not None:
      versions = [v for v in versions if v[0] == requested]
      if not versions:
        raise status.not_found(f"Could not find version {requested} of model {name}")
    base_path = next(
      (m.base_path for m in self._config.model_config_list.config if m.name == name), ""
    )
    return sorted(
      ((number, state, _without_paths(error, base_path)) for number, state, error in versions),
      key=lambda version: version[0],
      reverse=True,
    )
