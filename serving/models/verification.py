"""Signed versions only, and what was verified is what loads (--model_verification_key_file).

A version is signed in the OpenSSF model signing format (the `model-signing`
library, key mode: `<version>/model.sig`, a Sigstore bundle whose DSSE
envelope signs an in-toto statement with the SHA-256 of every other file).
Verifying the version directory in place and then loading it would leave a
gap: anyone who can write the directory could swap a file in between, and the
loader would read bytes nobody checked. So the server first copies the
version into a fresh directory only it can write (`tempfile.mkdtemp`: mode
0700, its own uid), taking regular files and directories only (a symlink, a
FIFO or a device anywhere is refused), verifies the copy, and loads from the
copy; the copy is removed when the version unloads. Files changed in the
source after that change nothing that serves.

The signature must also be for this model and version: the signer writes
`assets.extra/model_identity.json` (`{"model_name": ..., "version": ...}`)
before signing, so it is covered like every other file, and the server checks
it against the name and number it is loading; a signed version copied under
another number or model name verifies, but is refused here. And the signed
ignore list must be exactly `["model.sig"]`: the verifier adds whatever list
the signer signed to its own, so a wider one (the CLI's default leaves out
`.git*` paths) would leave files unchecked.

The pushing side (components/version_signing.py) writes the same file names;
serving imports nothing from it, only the OpenSSF library.
"""

import base64
import errno
import hashlib
import json
import os
import pathlib
import shutil
import stat
import tempfile
from typing import Callable
from typing import Dict
from typing import List
from typing import Optional

import grpc
import model_signing
import tensorflow as tf
from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from next_category.serving import status

SIGNATURE_FILE = "model.sig"
IDENTITY_FILE = "assets.extra/model_identity.json"
# The curves OpenSSF model-signing's key mode takes (model_signing/_signing/sign_ec_key.py,
# `_check_supported_ec_key`).
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_COPY_PREFIX = "model-server-version-"
_CHUNK_BYTES = 1 << 20
_MAX_LISTED = 3
_MAX_NAME_CHARS = 100


class Refused(Exception):
  """A version is not loaded: why, in words fit for its status (no file system paths)."""


def load_public_key(path: str) -> None:
  """Checks that `path` is a public key the OpenSSF verifier takes.

  Raises:
    ValueError: naming the problem: unreadable, not a PEM public key, or not
      ECDSA on P-256, P-384 or P-521 (an Ed25519 or RSA key, for example).
  """
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise ValueError(f"--model_verification_key_file {path}: {e.strerror}.") from None
  try:
    key = serialization.load_pem_public_key(data)
  except ValueError:
    raise ValueError(
      f"--model_verification_key_file {path} is not a PEM public key (the private key, or "
      "not a key at all?)."
    ) from None
  if not isinstance(key, ec.EllipticCurvePublicKey):
    kind = type(key).__name__.lstrip("_").replace("PublicKey", "")
    raise ValueError(
      f"--model_verification_key_file {path} is an {kind} key; OpenSSF model signing "
      "verifies ECDSA keys on P-256, P-384 or P-521 only. `make keygen` writes a P-256 pair."
    )
  if key.curve.name not in SUPPORTED_CURVES:
    raise ValueError(
      f"--model_verification_key_file {path} is an ECDSA key on {key.curve.name}; OpenSSF "
      "model signing takes P-256, P-384 or P-521 only."
    )


def _listed(names) -> str:
  names = sorted(names)
  shown = [n if len(n) <= _MAX_NAME_CHARS else n[:_MAX_NAME_CHARS] + "..." for n in names]
  more = len(names) - _MAX_LISTED
  return ", ".join(shown[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


# ---- The private copy ----


def _copy_local_tree(src_fd: int, dst: str, relative: str) -> None:
  """Copies the directory open as `src_fd` into `dst`: regular files and directories only.

  Every entry is looked at without following links, every open uses
  O_NOFOLLOW, and what was opened is checked with fstat, so a link or a FIFO
  swapped in during the copy is refused too.
  """
  with os.scandir(src_fd) as entries:
    names = sorted(entry.name for entry in entries)
  for name in names:
    shown = f"{relative}{name}"
    mode = os.stat(name, dir_fd=src_fd, follow_symlinks=False).st_mode
    if stat.S_ISLNK(mode):
      raise Refused(f"{shown} is a symbolic link; a signed version holds only regular files.")
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
      raise Refused(f"{shown} is not a regular file (a FIFO, socket or device).")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    if stat.S_ISDIR(mode):
      flags |= os.O_DIRECTORY
    try:
      fd = os.open(name, flags, dir_fd=src_fd)
    except OSError as e:
      if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
        raise Refused(f"{shown} was replaced while it was copied.") from None
      raise
    try:
      opened = os.fstat(fd).st_mode
      if stat.S_ISDIR(mode) and stat.S_ISDIR(opened):
        os.mkdir(os.path.join(dst, name), 0o700)
        _copy_local_tree(fd, os.path.join(dst, name), shown + "/")
        continue
      if not stat.S_ISREG(opened):
        raise Refused(f"{shown} was replaced while it was copied.")
      out = os.open(
        os.path.join(dst, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600
      )
      try:
        while chunk := os.read(fd, _CHUNK_BYTES):
          os.write(out, chunk)
      finally:
        os.close(out)
    finally:
      os.close(fd)


def _copy_remote_tree(source: str, dst: str) -> None:
  """Copies a version on an object store (gs://, s3://; no links there) with tf.io.gfile."""
  source = source.rstrip("/")
  for root, _, files in tf.io.gfile.walk(source):
    relative = root[len(source) :].strip("/")
    target = os.path.join(dst, relative) if relative else dst
    os.makedirs(target, mode=0o700, exist_ok=True)
    for name in files:
      with tf.io.gfile.GFile(f"{root.rstrip('/')}/{name}", "rb") as f_in:
        fd = os.open(os.path.join(target, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f_out:
          while chunk := f_in.read(_CHUNK_BYTES):
            f_out.write(chunk)


def private_copy(source: str) -> str:
  """Copies the version directory `source` into a new directory only this process can write.

  Returns:
    The copy's path (remove it with `remove_copy`).

  Raises:
    Refused: a symbolic link (to a file or a directory, the version directory
      itself included), a FIFO, a socket or a device in the version.
    OSError: if the source cannot be read.
  """
  copy = tempfile.mkdtemp(prefix=_COPY_PREFIX)  # Mode 0700, owned by this process's uid.
  try:
    _copy_tree(source, copy)
  except OSError as e:
    remove_copy(copy)
    # Without the file name: a status shows no paths.
    raise type(e)(e.errno, f"the version cannot be copied: {e.strerror}") from None
  except BaseException:
    remove_copy(copy)
    raise
  return copy


def _copy_tree(source: str, copy: str) -> None:
  if "://" in source:
    try:
      _copy_remote_tree(source, copy)
    except tf.errors.NotFoundError:
      raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)) from None
    except tf.errors.OpError as e:
      raise OSError(errno.EIO, f"{type(e).__name__} while reading it") from None
    return
  try:
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
  except OSError as e:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
      raise Refused("The version directory is a symbolic link or not a directory.") from None
    raise
  try:
    _copy_local_tree(fd, copy, "")
  finally:
    os.close(fd)


def remove_copy(copy: str) -> None:
  shutil.rmtree(copy, ignore_errors=True)


# ---- Verifying the copy ----


def _hashing_config() -> "model_signing.hashing.Config":
  # A new one each time: the verifier adds the signed ignore list to the config it is given.
  return model_signing.hashing.Config().set_ignored_paths(
    paths=[SIGNATURE_FILE], ignore_git_paths=False
  )


def _signed_statement(signature_path: str) -> dict:
  """The in-toto statement in the bundle's DSSE envelope (trusted once verify() passed)."""
  with open(signature_path, "rb") as f:
    bundle = json.load(f)
  return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _file_digests(copy: str) -> Dict[str, str]:
  digests = {}
  for root, _, files in os.walk(copy):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, copy).replace(os.sep, "/")
      if relative != SIGNATURE_FILE:
        with open(path, "rb") as f:
          digests[relative] = hashlib.file_digest(f, "sha256").hexdigest()
  return digests


def _mismatch(copy: str, statement: dict) -> str:
  """Which files differ from the signed statement, in words (names relative to the version)."""
  signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
  actual = _file_digests(copy)
  problems: List[str] = []
  extra = actual.keys() - signed.keys()
  missing = signed.keys() - actual.keys()
  changed = [n for n in actual.keys() & signed.keys() if actual[n] != signed[n]]
  if extra:
    problems.append(f"files not in the signature: {_listed(extra)}")
  if missing:
    problems.append(f"signed files missing: {_listed(missing)}")
  if changed:
    problems.append(f"files changed since signing: {_listed(changed)}")
  return "; ".join(problems) or "the files differ from the signed manifest"


def _verify_signature(copy: str, public_key_file: str) -> dict:
  """Runs the OpenSSF verifier on the copy; returns the signed statement.

  Raises:
    Refused: unsigned, signed by another key, altered, or files that differ.
  """
  signature = os.path.join(copy, SIGNATURE_FILE)
  if not os.path.lexists(signature):
    raise Refused(f"The version is unsigned: it has no {SIGNATURE_FILE}.")
  if not os.path.isfile(signature):
    raise Refused(f"{SIGNATURE_FILE} is a directory, not a signature.")
  verifier = model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public_key_file)
  try:
    verifier.set_hashing_config(_hashing_config()).verify(copy, signature)
  except json.JSONDecodeError:
    raise Refused(f"{SIGNATURE_FILE} is not an OpenSSF model signing bundle.") from None
  except crypto_exceptions.InvalidSignature:
    raise Refused(
      "The signed statement in model.sig does not match its signature: it was altered after "
      "signing."
    ) from None
  except ValueError as e:
    message = str(e)
    if message.startswith("Key mismatch"):
      raise Refused("The version is signed with another key.") from None
    if message.startswith("Signature mismatch"):
      raise Refused(_mismatch(copy, _signed_statement(signature)) + ".") from None
    message = message.replace(copy, "<version>")
    raise Refused(f"{SIGNATURE_FILE} cannot be verified: {message}") from None
  except (KeyError, TypeError, AttributeError, UnicodeDecodeError):
    raise Refused(f"{SIGNATURE_FILE} is not an OpenSSF model signing bundle.") from None
  return _signed_statement(signature)


def _check_ignore_list(statement: dict) -> None:
  ignored = statement["predicate"]["serialization"].get("ignore_paths", [])
  if sorted(ignored) != [SIGNATURE_FILE]:
    unchecked = sorted(set(ignored) - {SIGNATURE_FILE})
    raise Refused(
      f"The signature leaves {_listed(unchecked) or 'nothing'} unchecked; only {SIGNATURE_FILE} "
      "may be (sign with --no-ignore-git-paths)."
    )


def _check_identity(copy: str, name: str, version: int) -> None:
  try:
    with open(os.path.join(copy, IDENTITY_FILE), "rb") as f:
      identity = json.load(f)
  except FileNotFoundError:
    raise Refused(
      f"The signed version has no {IDENTITY_FILE} naming its model and version."
    ) from None
  except (ValueError, UnicodeDecodeError):
    raise Refused(f"{IDENTITY_FILE} is not JSON.") from None
  if not isinstance(identity, dict):
    raise Refused(f"{IDENTITY_FILE} is not a JSON object.")
  signed_name, signed_version = identity.get("model_name"), identity.get("version")
  if signed_name != name or type(signed_version) is not int or signed_version != version:
    raise Refused(
      f"Signed for model {str(signed_name)[:_MAX_NAME_CHARS]!r} version "
      f"{str(signed_version)[:_MAX_NAME_CHARS]}, found as model {name!r} version {version}: "
      "a signed version is served only under the name and number it was signed for."
    )


def verify_copy(copy: str, name: str, version: int, public_key_file: str) -> None:
  """Checks a private copy: signed with the key, unaltered, for this model and version.

  Raises:
    Refused: with why.
  """
  statement = _verify_signature(copy, public_key_file)
  try:
    _check_ignore_list(statement)
  except (KeyError, TypeError, AttributeError):
    raise Refused(f"{SIGNATURE_FILE} is not an OpenSSF model signing bundle.") from None
  _check_identity(copy, name, version)


def verified_copy(
  name: str,
  version: int,
  path: str,
  public_key_file: str,
  on_failure: Optional[Callable[[str], None]] = None,
) -> str:
  """A private copy of version directory `path`, verified; load from it, then `remove_copy` it.

  Args:
    name: the model's name.
    version: the version number being loaded.
    path: the version directory.
    public_key_file: the ECDSA public key (PEM).
    on_failure: called with `name` when the version is refused (the metrics count it).

  Raises:
    ServingError: FAILED_PRECONDITION, with why (and no paths), if the version is refused.
  """
  try:
    copy = private_copy(path)
  except Refused as e:
    _refuse(name, str(e), on_failure)
  try:
    verify_copy(copy, name, version, public_key_file)
  except Refused as e:
    remove_copy(copy)
    _refuse(name, str(e), on_failure)
  except BaseException:
    remove_copy(copy)
    raise
  return copy


def _refuse(name: str, reason: str, on_failure: Optional[Callable[[str], None]]):
  if on_failure is not None:
    on_failure(name)
  raise status.ServingError(
    grpc.StatusCode.FAILED_PRECONDITION, f"Model signature verification failed: {reason}"
  )
