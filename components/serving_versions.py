"""Version directories under a TensorFlow Serving base path: which serves, and writing one safely.

TensorFlow Serving serves the highest child of the base path whose name parses
as a number and ignores every other name
(tensorflow_serving/sources/storage_path/file_system_storage_path_source.cc,
`ParseVersionNumber` and `AspireLatestVersions`). So a version is written under
a non-numeric staging name and renamed into place, and a numeric directory
counts as serving only once it holds a complete SavedModel. Everything goes
through `tf.io.gfile`, so base paths may be `gs://` URIs.

The serving baseline step, the Pusher and the TFLiteConverter's shipping share
this module.
"""

import os
import re
import time
import uuid
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional
from typing import Tuple

import tensorflow as tf
from absl import logging
from tfx.utils import io_utils

# What `serving_fingerprint` gives when no complete version is serving.
NOTHING_SERVING = "nothing serving"
# Staging directories: `.staging-<unix seconds>-<random hex>`, not a number.
STAGING_PREFIX = ".staging-"
# A staging directory this old is what a killed push left behind.
STALE_STAGING_SECONDS = 3600
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_SHARD_PATTERN = re.compile(r"^variables\.data-(\d{5})-of-(\d{5})$")
_STAGING_PATTERN = re.compile(re.escape(STAGING_PREFIX) + r"(\d+)-[0-9a-f]+$")


def parse_version(name: str) -> Optional[int]:
  """The version number a directory name stands for, or None for any other name.

  Plain ASCII digits only (TensorFlow Serving also takes a sign; pushes never
  write one).
  """
  name = name.rstrip("/")
  if name.isascii() and name.isdigit() and int(name) < 2**63:
    return int(name)
  return None


def version_dirs(base_path: str) -> Dict[int, str]:
  """Every numeric child of `base_path`, complete or not; none if it does not exist."""
  if not tf.io.gfile.isdir(base_path):
    return {}
  versions = {}
  for child in tf.io.gfile.listdir(base_path):
    version = parse_version(child)
    if version is not None:
      versions[version] = os.path.join(base_path, child.rstrip("/"))
  return versions


def is_complete_saved_model(path: str) -> bool:
  """Whether `path` holds every file a SavedModel needs to load.

  The graph (`saved_model.pb`), the variables index and every variables shard
  the shards' names count (`variables.data-00000-of-00002` and
  `-00001-of-00002`). TFX's own Pusher copies `saved_model.pb` last and a
  copy still in progress misses files, so either way a partial copy fails this.
  `fingerprint.pb` is not required: SavedModels written before TF 2.12 have
  none and load fine.
  """
  if not any(tf.io.gfile.exists(os.path.join(path, name)) for name in SAVED_MODEL_FILES):
    return False
  variables_dir = os.path.join(path, "variables")
  if not tf.io.gfile.exists(os.path.join(variables_dir, "variables.index")):
    return False
  shards = [_SHARD_PATTERN.match(name) for name in tf.io.gfile.listdir(variables_dir)]
  shards = [m for m in shards if m]
  if not shards:
    return False
  counts = {int(m.group(2)) for m in shards}
  if len(counts) != 1:
    return False
  (count,) = counts
  return {int(m.group(1)) for m in shards} == set(range(count))


def serving_version(base_path: str) -> Optional[Tuple[int, str]]:
  """`(version, path)` of the highest version holding a complete SavedModel, or None."""
  for version, path in sorted(version_dirs(base_path).items(), reverse=True):
    if is_complete_saved_model(path):
      return version, path
    logging.warning("Version %d at %s is not a complete SavedModel; skipping it.", version, path)
  return None


def fingerprint(saved_model_path: str) -> Optional[str]:
  """The SavedModel's fingerprint (its `fingerprint.pb`'s singleprint), or None without one.

  The singleprint hashes the graph, the signatures, the object graph and the
  variables index, so two copies of one model have the same one.
  """
  try:
    return tf.saved_model.experimental.read_fingerprint(saved_model_path).singleprint()
  except FileNotFoundError:
    return None


def version_fingerprint(version: int, path: str) -> str:
  """What identifies the version `version` at `path`, as `serving_fingerprint` gives it.

  The version, its directory and the SavedModel's singleprint; for a
  SavedModel without `fingerprint.pb`, the count, sizes and modification
  times of its files, as ImportExampleGen fingerprints its input
  (`tfx.utils.io_utils.generate_fingerprint`).
  """
  content = fingerprint(path)
  if content is None:
    content = ";".join(
      io_utils.generate_fingerprint(name, os.path.join(path, pattern))
      for name, pattern in (("files", "*"), ("variables", "variables/*"))
    )
  return f"version:{version},path:{path},model:{content}"


def serving_fingerprint(base_path: str) -> str:
  """What identifies the model serving now under `base_path`, or NOTHING_SERVING."""
  found = serving_version(base_path)
  return NOTHING_SERVING if found is None else version_fingerprint(*found)


def next_version(base_path: str) -> int:
  """A version above every numeric directory, complete or not: the current time in seconds
  (as TFX's Pusher numbers versions), or one more than the highest if the clock is behind."""
  return max([int(time.time())] + [v + 1 for v in version_dirs(base_path)])


def remove_stale_staging(base_path: str, now: Optional[float] = None) -> List[str]:
  """Deletes staging directories older than `STALE_STAGING_SECONDS` (left by killed pushes).

  Younger ones may belong to a push in progress and are kept.

  Returns:
    The deleted paths.
  """
  if not tf.io.gfile.isdir(base_path):
    return []
  now = time.time() if now is None else now
  removed = []
  for child in tf.io.gfile.listdir(base_path):
    match = _STAGING_PATTERN.match(child.rstrip("/"))
    if match and now - int(match.group(1)) > STALE_STAGING_SECONDS:
      path = os.path.join(base_path, child.rstrip("/"))
      logging.info("Removing %s, left by a push that did not finish.", path)
      tf.io.gfile.rmtree(path)
      removed.append(path)
  return removed


def publish(base_path: str, version: str, write: Callable[[str], None]) -> str:
  """Writes a version: `write(staging_dir)`, then renames the staging directory to `version`.

  On a local file system the rename is atomic, so a reader (TensorFlow Serving,
  the baseline step) never sees a partial version. On object stores
  (`gs://`) TensorFlow renames object by object; a kill in between leaves an
  incomplete version that `is_complete_saved_model` rejects.

  Returns:
    The version's path.

  Raises:
    FileExistsError: if the version already exists.
  """
  destination = os.path.join(base_path, version)
  if tf.io.gfile.exists(destination):
    raise FileExistsError(f"Version {destination} already exists; a version is never overwritten.")
  staging = os.path.join(base_path, f"{STAGING_PREFIX}{int(time.time())}-{uuid.uuid4().hex}")
  tf.io.gfile.makedirs(staging)
  try:
    write(staging)
    tf.io.gfile.rename(staging, destination, overwrite=False)
  except BaseException:
    if tf.io.gfile.exists(staging):
      tf.io.gfile.rmtree(staging)
    raise
  return destination
