"""Ed25519 signatures over a SHA-256 manifest of a model version directory."""

import hashlib
import json
import os
import posixpath
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SIGNATURE_DIR = "signature"
MANIFEST_PATH = f"{SIGNATURE_DIR}/manifest.json"
SIGNATURE_PATH = f"{SIGNATURE_DIR}/manifest.sig"
PRIVATE_KEY_NAME = "model_signing_key.pem"
PUBLIC_KEY_NAME = "model_signing_key.pub.pem"
_MANIFEST_FORMAT = "next_category.model_signing/v1"
_CHUNK_BYTES = 1 << 20


class VerificationError(Exception):
  """A version directory is unsigned, signed by another key, or differs from its manifest."""


class _Files:
  """Plain file I/O, or tf.io.gfile for URL paths (gs://...) when TensorFlow is loaded."""

  def __init__(self, root: str):
    self._gfile = None
    if "://" in root:
      tf = sys.modules.get("tensorflow")
      if tf is None:
        raise ValueError(
          f"The path {root!r} has a URL scheme; import tensorflow first so that tf.io.gfile "
          "can read it."
        )
      self._gfile = tf.io.gfile

  def isdir(self, path):
    return self._gfile.isdir(path) if self._gfile else os.path.isdir(path)

  def exists(self, path):
    return self._gfile.exists(path) if self._gfile else os.path.exists(path)

  def walk(self, root):
    if self._gfile:
      yield from self._gfile.walk(root)
    else:
      for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        yield dirpath, dirnames, filenames

  def open(self, path, mode):
    return self._gfile.GFile(path, mode) if self._gfile else open(path, mode)

  def makedirs(self, path):
    if self._gfile:
      self._gfile.makedirs(path)
    else:
      os.makedirs(path, exist_ok=True)


def _join(root, relative):
  return posixpath.join(root, relative) if "://" in root else os.path.join(root, relative)


def _relative(root, path):
  if "://" in root:
    return posixpath.relpath(path, root)
  return os.path.relpath(path, root).replace(os.sep, "/")


def _digests(files: _Files, version_dir: str) -> dict[str, str]:
  """Returns {relative path: sha256 hex} of every file except the signature directory."""
  digests = {}
  for dirpath, _, filenames in files.walk(version_dir):
    for name in filenames:
      path = _join(dirpath, name)
      relative = _relative(version_dir, path)
      if relative.split("/", 1)[0] == SIGNATURE_DIR:
        continue
      sha = hashlib.sha256()
      with files.open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
          sha.update(chunk)
      digests[relative] = sha.hexdigest()
  return dict(sorted(digests.items()))


def _manifest_bytes(digests: dict[str, str]) -> bytes:
  manifest = {"format": _MANIFEST_FORMAT, "algorithm": "sha256", "files": digests}
  return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def _check_dir(files: _Files, version_dir: str) -> None:
  if not files.isdir(version_dir):
    raise ValueError(f"The version directory {version_dir!r} does not exist.")


def _read_key(path: str, private: bool):
  kind = "private" if private else "public"
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ValueError(f"Cannot read the {kind} key file {path!r}: {e.strerror}.") from None
  try:
    if private:
      key = serialization.load_pem_private_key(data, password=None)
      wanted = ed25519.Ed25519PrivateKey
    else:
      key = serialization.load_pem_public_key(data)
      wanted = ed25519.Ed25519PublicKey
  except ValueError:
    raise ValueError(f"The file {path!r} is not a PEM {kind} key.") from None
  if not isinstance(key, wanted):
    raise ValueError(f"The {kind} key in {path!r} is not an Ed25519 key.")
  return key


def generate_key_pair(key_dir: str) -> tuple[str, str]:
  """Writes a new Ed25519 key pair into `key_dir`; the private key file gets mode 0600.

  Returns:
    (private key path, public key path).

  Raises:
    ValueError: a key pair already exists in `key_dir` (it is never overwritten).
  """
  private_path = os.path.join(key_dir, PRIVATE_KEY_NAME)
  public_path = os.path.join(key_dir, PUBLIC_KEY_NAME)
  for path in (private_path, public_path):
    if os.path.exists(path):
      raise ValueError(f"The key file {path!r} already exists; remove it or pick another key_dir.")
  os.makedirs(key_dir, exist_ok=True)
  key = ed25519.Ed25519PrivateKey.generate()
  private_pem = key.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
  )
  public_pem = key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
  )
  # Created with 0600 from the start, so the private key is never readable by others.
  fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, "wb") as f:
    f.write(private_pem)
  with open(public_path, "wb") as f:
    f.write(public_pem)
  return private_path, public_path


def sign_directory(version_dir: str, private_key_path: str) -> str:
  """Writes the manifest of every file in `version_dir` and its signature into it.

  Signing again replaces an earlier manifest and signature.

  Returns:
    The path of the manifest written.

  Raises:
    ValueError: the directory or the key cannot be read.
  """
  files = _Files(version_dir)
  _check_dir(files, version_dir)
  key = _read_key(private_key_path, private=True)
  manifest = _manifest_bytes(_digests(files, version_dir))
  files.makedirs(_join(version_dir, SIGNATURE_DIR))
  manifest_path = _join(version_dir, MANIFEST_PATH)
  with files.open(manifest_path, "wb") as f:
    f.write(manifest)
  with files.open(_join(version_dir, SIGNATURE_PATH), "wb") as f:
    f.write(key.sign(manifest))
  return manifest_path


def verify_directory(version_dir: str, public_key_path: str) -> dict[str, str]:
  """Checks that `version_dir` is signed by `public_key_path`'s key and matches its manifest.

  Returns:
    The verified manifest: {relative path: sha256 hex}.

  Raises:
    VerificationError: unsigned, signed by another key, or files changed, added or missing.
    ValueError: the directory or the key cannot be read.
  """
  files = _Files(version_dir)
  _check_dir(files, version_dir)
  key = _read_key(public_key_path, private=False)
  manifest_path = _join(version_dir, MANIFEST_PATH)
  signature_path = _join(version_dir, SIGNATURE_PATH)
  for path, name in ((manifest_path, MANIFEST_PATH), (signature_path, SIGNATURE_PATH)):
    if not files.exists(path):
      raise VerificationError(f"The version is unsigned: {name} is missing.")
  with files.open(manifest_path, "rb") as f:
    manifest = f.read()
  with files.open(signature_path, "rb") as f:
    signature = f.read()
  try:
    key.verify(signature, manifest)
  except InvalidSignature:
    raise VerificationError(
      "The manifest's signature does not match the verification key: the version is signed by "
      "another key or its manifest was altered."
    ) from None
  try:
    signed = json.loads(manifest)["files"]
  except (ValueError, KeyError, TypeError):
    raise VerificationError("The signed manifest is not a model signing manifest.") from None
  actual = _digests(files, version_dir)
  changed = sorted(p for p in signed.keys() & actual.keys() if signed[p] != actual[p])
  missing = sorted(signed.keys() - actual.keys())
  added = sorted(actual.keys() - signed.keys())
  problems = []
  for label, paths in (("changed", changed), ("missing", missing), ("not in the manifest", added)):
    if paths:
      shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
      problems.append(f"{label}: {shown}")
  if problems:
    raise VerificationError(
      "The version's files differ from its signed manifest (" + "; ".join(problems) + ")."
    )
  return signed
