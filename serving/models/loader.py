"""Loading versions: a directory's model format, one version as the server loads it, the first wait.

`VersionLoader` is the `ModelManager`'s loader: for each version the manager
decides to load, the signature check (verification.py), the model
(saved_model.py or tflite.py), where it runs (a batch scheduler or the
request threads) and its warmup requests (warmup.py), in that order, as
TensorFlow Serving's loader harness does them before a version is AVAILABLE.
"""

import concurrent.futures
import logging
import os
import threading
import time
from typing import Any
from typing import Callable
from typing import Optional
from typing import Sequence

import grpc
import tensorflow as tf

from next_category.serving import status
from next_category.serving.models import batching
from next_category.serving.models import model_manager
from next_category.serving.models import saved_model
from next_category.serving.models import servables
from next_category.serving.models import tflite
from next_category.serving.models import verification
from next_category.serving.models import warmup


class NoServableVersionError(status.ServingError, RuntimeError):
  """A configured model has no version available: none can load, or none did in time."""


class StartCancelled(status.ServingError, RuntimeError):
  """The server was asked to stop while it waited for its first versions."""


def find_model_file(path: str, prefer_tflite: bool = False) -> Optional[str]:
  """Which kind of model a version directory holds: "tensorflow", "tflite" or None."""
  has_saved_model = any(
    tf.io.gfile.exists(os.path.join(path, name)) for name in saved_model.SAVED_MODEL_FILENAMES
  )
  has_tflite = tf.io.gfile.exists(os.path.join(path, tflite.TFLITE_FILENAME))
  if has_tflite and (prefer_tflite or not has_saved_model):
    return "tflite"
  if has_saved_model:
    return "tensorflow"
  return None


def load_servable(
  name: str,
  version: int,
  path: str,
  prefer_tflite: bool = False,
  saved_model_tags: Sequence[str] = (saved_model.SERVE_TAG,),
  on_saved_model_load: Optional[Callable[[str, bool, float], None]] = None,
) -> servables.Servable:
  """Loads the model in a version directory.

  A directory with `model.tflite` and no SavedModel is served with TFLite, as
  is one with both when `prefer_tflite` (TensorFlow Serving's
  `--prefer_tflite_model`). A SavedModel's MetaGraph is the one tagged
  `saved_model_tags` (`--saved_model_tags`).

  Args:
    on_saved_model_load: called with `(path, succeeded, seconds)` after each
      SavedModel load, as TensorFlow's LoadSavedModel counts its loads.

  Raises:
    ServingError: NOT_FOUND with TensorFlow Serving's message if the
      directory holds neither kind of model, or no MetaGraph has the tags.
    Exception: whatever loading the model raises.
  """
  kind = find_model_file(path, prefer_tflite)
  # LoadSessionBundleOrSavedModelBundle (session_bundle/oss/session_bundle_util.cc:55-78).
  if kind != "tflite" and tf.io.gfile.exists(os.path.join(path, "export.meta")):
    raise status.ServingError(
      grpc.StatusCode.UNIMPLEMENTED, "Session Bundle is deprecated and removed."
    )
  if kind is None:
    raise status.not_found(
      "Specified file path does not appear to contain a SavedModel bundle (should have a "
      f"file called `saved_model.pb`)\nSpecified file path: {path}"
    )
  logging.info("Loading %s model %s version %d from %s", kind, name, version, path)
  if kind == "tflite":
    return tflite.TfLiteServable(name, version, path)
  start = time.perf_counter()
  try:
    servable = saved_model.SavedModelServable(name, version, path, tags=saved_model_tags)
  except BaseException:
    if on_saved_model_load is not None:
      on_saved_model_load(path, False, time.perf_counter() - start)
    raise
  if on_saved_model_load is not None:
    on_saved_model_load(path, True, time.perf_counter() - start)
  return servable


class VersionLoader:
  """Loads one version as the server serves it: `(name, version, path) -> Servable`.

  Args:
    prefer_tflite: `--prefer_tflite_model`.
    verification_key_file: `--model_verification_key_file`; empty: no check.
    batching_options: batch every version's requests so; None: no batching.
    batch_observer: `(name, version)` -> the version's batch observer (metrics).
    on_verification_failure: called with the model name when a check fails.
    saved_model_tags: `--saved_model_tags`, as a tuple.
    enable_warmup: `--enable_model_warmup`.
    num_request_iterations_for_warmup: `--num_request_iterations_for_warmup`.
    on_saved_model_load: see `load_servable` (metrics).
    on_warmed_up: see `warmup.replay_warmup_requests` (metrics).

  Attributes:
    executor: runs unbatched requests; set by the server when it starts.
    service: replays the warmup requests (the `InferenceService`); set by the
      server once it is built.
  """

  def __init__(
    self,
    prefer_tflite: bool = False,
    verification_key_file: str = "",
    batching_options: Optional[batching.BatchingOptions] = None,
    batch_observer: Optional[Callable[[str, int], Optional[batching.BatchObserver]]] = None,
    on_verification_failure: Optional[Callable[[str], None]] = None,
    saved_model_tags: Sequence[str] = (saved_model.SERVE_TAG,),
    enable_warmup: bool = True,
    num_request_iterations_for_warmup: int = 0,
    on_saved_model_load: Optional[Callable[[str, bool, float], None]] = None,
    on_warmed_up: Optional[Callable[[str, str, float], None]] = None,
  ):
    if verification_key_file:
      verification.load_public_key(verification_key_file)
    self._saved_model_tags = tuple(saved_model_tags)
    self._enable_warmup = enable_warmup
    self._warmup_iterations = num_request_iterations_for_warmup
    self._on_saved_model_load = on_saved_model_load
    self._on_warmed_up = on_warmed_up
    self._prefer_tflite = prefer_tflite
    self._verification_key_file = verification_key_file
    self._batching_options = batching_options
    self._batch_observer = batch_observer or (lambda name, version: None)
    self._on_verification_failure = on_verification_failure
    self.executor: Optional[concurrent.futures.Executor] = None
    self.service: Any = None

  def __call__(self, name: str, version: int, path: str) -> servables.Servable:
    """Loads, sets up and warms up one version.

    With a verification key, the version is copied into a private directory,
    verified there and loaded from there (verification.py); the copy goes
    when the version is closed.

    Raises:
      ServingError: FAILED_PRECONDITION if the signature check fails.
      Exception: whatever loading or warming up raises (the version is closed).
    """
    load_path = path
    if self._verification_key_file:
      load_path = verification.verified_copy(
        name, version, path, self._verification_key_file, self._on_verification_failure
      )
    try:
      servable = load_servable(
        name,
        version,
        load_path,
        prefer_tflite=self._prefer_tflite,
        saved_model_tags=self._saved_model_tags,
        on_saved_model_load=self._on_saved_model_load,
      )
    except BaseException:
      if load_path != path:
        verification.remove_copy(load_path)
      raise
    if load_path != path:
      servable.call_when_closed(lambda: verification.remove_copy(load_path))
    servable.attach(self.executor, self._batching_options, self._batch_observer(name, version))
    if not self._enable_warmup:
      return servable
    try:
      warmup.replay_warmup_requests(
        servable, self.service, self._warmup_iterations, self._on_warmed_up
      )
    except BaseException:
      servable.close()
      raise
    return servable


def wait_for_versions(
  manager: model_manager.ModelManager,
  timeout_seconds: float,
  stop_requested: Optional[threading.Event] = None,
) -> None:
  """Waits until every model has a version, as TensorFlow Serving does before it serves.

  Gives up at once when every model still without a version has none that
  can load (each failed with no retry left), as TensorFlow Serving's
  start-up does (`ConnectSourcesWithFastInitialLoad`,
  tensorflow_serving/core/load_servables_fast.cc); a model still loading, or
  with retries left, is waited for up to `timeout_seconds`. Stops the manager
  when it gives up.

  Args:
    stop_requested: once set (SIGTERM), the wait ends within a tenth of a second.

  Raises:
    NoServableVersionError: if no version of a model can load, or one has
      none after `timeout_seconds` (--model_load_timeout_seconds).
    StartCancelled: if `stop_requested` was set first.
  """
  deadline = time.monotonic() + timeout_seconds
  stop_requested = stop_requested or threading.Event()
  while missing := manager.models_without_versions():
    if stop_requested.is_set():
      manager.stop()
      raise StartCancelled(
        grpc.StatusCode.CANCELLED,
        "Stopped while waiting for a servable version of: " + ", ".join(missing),
      )
    failures = manager.load_failures()
    if all(name in failures for name in missing):
      manager.stop()
      # TensorFlow Serving's words (core/load_servables_fast.cc:90-118): each
      # version's id and its loader's status, `CODE: message`.
      unavailable = [
        f"{{{{name: {name} version: {version}}} due to error: {error.code.name}: "
        f"{error.message.split(' failed: ', 1)[-1]}}}"
        for name in missing
        for version, error in failures[name]
      ]
      raise NoServableVersionError(
        grpc.StatusCode.UNKNOWN,
        f"{len(unavailable)} servable(s) did not become available: {{"
        + "".join(f"{item}, " for item in unavailable)
        + "}",
      )
    if time.monotonic() >= deadline:
      manager.stop()
      errors = []
      for name in missing:
        reasons = manager.last_load_errors(name)
        errors.append(f"{name}: " + (reasons[0] if reasons else "no version found"))
      raise NoServableVersionError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"No servable version after {timeout_seconds:g} s "
        "(--model_load_timeout_seconds): " + "; ".join(errors),
      )
    stop_requested.wait(0.1)
