"""Signs pushed model versions in the OpenSSF model signing format, before they become visible.

The Pusher and the TFLiteConverter write a version under a staging name and
rename it into place (`serving_versions.publish`); with a signing key,
`signing_writer` makes that staging write also sign the version with OpenSSF
`model-signing` in key mode (a Sigstore bundle whose DSSE envelope signs an
in-toto statement listing the SHA-256 of every file), written to
`<version>/model.sig`. Before signing it writes
`assets.extra/model_identity.json` (the model name and version number), so
the signature covers them: a signed version copied under another number or
model name still verifies with the OpenSSF CLI, but a server started with
`--model_verification_key_file` refuses it (serving/models/verification.py
checks the identity). TensorFlow Serving and the SavedModel and TFLite loaders
ignore unknown files under `assets.extra/`.

Anyone can check a pushed version with the OpenSSF CLI alone:

  model_signing verify key VERSION_DIR --signature VERSION_DIR/model.sig \\
    --public_key model_signing_key.pub.pem --no-ignore-git-paths

Usage:
  python -m next_category.components.version_signing keygen --key_dir=DIR
  python -m next_category.components.version_signing sign --version_dir=DIR \\
    --private_key_file=KEY [--model_name=NAME] [--version=N]
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
from typing import Callable
from typing import Optional
from typing import Tuple

import model_signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

# The name of the key path in the Pusher's custom_config and the
# TFLiteConverter's parameters.
MODEL_SIGNING_KEY = "model_signing_key"
# The signature, inside the version directory; the only path the signature
# leaves out (the server refuses a signature that leaves out anything else).
SIGNATURE_FILE = "model.sig"
# The model name and version the signature is for (serving/models/verification.py reads it).
IDENTITY_FILE = "assets.extra/model_identity.json"
PRIVATE_KEY_NAME = "model_signing_key.pem"
PUBLIC_KEY_NAME = "model_signing_key.pub.pem"
# The curves OpenSSF model-signing's key mode takes (model_signing/_signing/sign_ec_key.py,
# `_check_supported_ec_key`).
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _key_kind(key) -> str:
  """A key's algorithm in words, for errors."""
  name = type(key).__name__.lstrip("_")
  for prefix, words in (("Ed25519", "an Ed25519"), ("Ed448", "an Ed448"), ("RSA", "an RSA")):
    if name.startswith(prefix):
      return words
  return f"a {name}"


def load_private_key(path: str) -> ec.EllipticCurvePrivateKey:
  """Reads a signing key and checks that OpenSSF model signing can sign with it.

  Raises:
    ValueError: naming the problem, if the file cannot be read, is not a PEM
      private key, or is not an ECDSA key on P-256, P-384 or P-521 (an Ed25519
      or RSA key from another tool, or the public half).
  """
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as e:
    raise ValueError(f"Cannot read the model signing key {path}: {e.strerror}.") from None
  try:
    key = serialization.load_pem_private_key(data, password=None)
  except TypeError:
    raise ValueError(
      f"The model signing key {path} is encrypted; pushes sign without a password, so "
      "give an unencrypted key (`make keygen`) and protect the file instead."
    ) from None
  except ValueError:
    raise ValueError(
      f"The model signing key {path} is not a PEM private key (is it the public key "
      f"{PUBLIC_KEY_NAME}?)."
    ) from None
  if not isinstance(key, ec.EllipticCurvePrivateKey):
    raise ValueError(
      f"The model signing key {path} is {_key_kind(key)} key; OpenSSF model signing signs "
      "with ECDSA keys on P-256, P-384 or P-521 only. Run `make keygen` for a P-256 pair."
    )
  if key.curve.name not in SUPPORTED_CURVES:
    raise ValueError(
      f"The model signing key {path} is an ECDSA key on {key.curve.name}; OpenSSF model "
      "signing takes P-256, P-384 or P-521 only. Run `make keygen` for a P-256 pair."
    )
  return key


def generate_key_pair(key_dir: str) -> Tuple[str, str]:
  """Writes a new ECDSA P-256 key pair (PEM) into `key_dir`; the private key gets mode 0600.

  Returns:
    (private key path, public key path).

  Raises:
    ValueError: a key pair already exists in `key_dir` (it is never overwritten).
  """
  private_path = os.path.join(key_dir, PRIVATE_KEY_NAME)
  public_path = os.path.join(key_dir, PUBLIC_KEY_NAME)
  for path in (private_path, public_path):
    if os.path.exists(path):
      raise ValueError(f"The key file {path} already exists; remove it or pick another key_dir.")
  os.makedirs(key_dir, exist_ok=True)
  key = ec.generate_private_key(ec.SECP256R1())
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


def model_name_for(base_path: str) -> str:
  """The model name a version under `base_path` is signed for: the base path's last part.

  TensorFlow Serving's layout is `<model_base_path>/<version>` with the model
  directory named after the model (`--model_name=next_category
  --model_base_path=/models/next_category`), as the runners push.
  """
  return os.path.basename(base_path.rstrip("/"))


def write_identity(version_dir: str, model_name: str, version: int) -> None:
  """Writes `assets.extra/model_identity.json`: the model name and version being signed."""
  path = pathlib.Path(version_dir, IDENTITY_FILE)
  path.parent.mkdir(exist_ok=True)
  identity = {"model_name": model_name, "version": int(version)}
  path.write_text(json.dumps(identity, sort_keys=True) + "\n")


def _hashing_config() -> "model_signing.hashing.Config":
  # Every file but the signature, `.git*` included: the server accepts no other ignore list.
  return model_signing.hashing.Config().set_ignored_paths(
    paths=[SIGNATURE_FILE], ignore_git_paths=False
  )


def sign_version(version_dir: str, private_key_path: str, model_name: str, version: int) -> str:
  """Signs a local version directory for `model_name` version `version`.

  Writes the identity file, then `model.sig` over every other file (an
  earlier signature is replaced).

  Returns:
    The path of the signature.

  Raises:
    ValueError: if the key cannot sign (see `load_private_key`) or the
      directory does not exist.
  """
  load_private_key(private_key_path)
  if not os.path.isdir(version_dir):
    raise ValueError(f"The version directory {version_dir} does not exist.")
  if not model_name:
    raise ValueError(f"No model name to sign {version_dir} for.")
  write_identity(version_dir, model_name, version)
  signature = os.path.join(version_dir, SIGNATURE_FILE)
  model_signing.signing.Config().use_elliptic_key_signer(
    private_key=private_key_path
  ).set_hashing_config(_hashing_config()).sign(version_dir, signature)
  return signature


def _upload(local_dir: str, remote_dir: str) -> None:
  """Copies a local directory tree into `remote_dir` (gs://, s3://) with tf.io.gfile."""
  import tensorflow as tf  # Only remote pushes need it; keygen and local signing do not.

  for root, _, files in os.walk(local_dir):
    relative = os.path.relpath(root, local_dir)
    target = remote_dir if relative == "." else f"{remote_dir.rstrip('/')}/{relative}"
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)


def signing_writer(
  write: Callable[[str], None],
  private_key_path: Optional[str],
  model_name: str,
  version: str,
) -> Callable[[str], None]:
  """`write`, followed by signing what it wrote, when a key is given.

  The OpenSSF library reads local files only, so for a remote staging
  directory (`gs://`, `s3://`) the version is written and signed in a local
  temporary directory first, then copied up into the staging directory
  (which `publish` renames into place afterwards).

  Args:
    write: writes a version's files into the directory it is given.
    private_key_path: an ECDSA private key (PEM), as `make keygen` writes it;
      None or empty leaves versions unsigned.
    model_name: the model the version is signed for (`model_name_for`).
    version: the version number it is published as.

  Returns:
    A function of the staging directory; it raises ValueError if the key
    cannot sign, before anything is written, so nothing is published.
  """
  if not private_key_path:
    return write
  load_private_key(private_key_path)

  def write_and_sign(staging_dir: str) -> None:
    if "://" not in staging_dir:
      write(staging_dir)
      sign_version(staging_dir, private_key_path, model_name, int(version))
      return
    with tempfile.TemporaryDirectory(prefix="signing-") as local_root:
      local = os.path.join(local_root, str(version))
      os.mkdir(local)
      write(local)
      sign_version(local, private_key_path, model_name, int(version))
      _upload(local, staging_dir)

  return write_and_sign


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m next_category.components.version_signing",
    description=__doc__.splitlines()[0],
    epilog="Verify with the OpenSSF CLI: model_signing verify key --help.",
  )
  commands = parser.add_subparsers(dest="command", required=True)
  keygen = commands.add_parser("keygen", help="Write an ECDSA P-256 key pair (PEM).")
  keygen.add_argument(
    "--key_dir",
    required=True,
    help=f"Directory for {PRIVATE_KEY_NAME} (private, mode 0600) and {PUBLIC_KEY_NAME}.",
  )
  sign = commands.add_parser("sign", help=f"Sign a version directory: write {SIGNATURE_FILE}.")
  sign.add_argument("--version_dir", required=True)
  sign.add_argument("--private_key_file", required=True)
  sign.add_argument(
    "--model_name", default=None, help="Default: the name of the version directory's parent."
  )
  sign.add_argument(
    "--version", type=int, default=None, help="Default: the version directory's name."
  )
  args = parser.parse_args(argv)
  try:
    if args.command == "keygen":
      private_path, public_path = generate_key_pair(args.key_dir)
      print(f"Private key (keep secret, sign with it): {private_path}")
      print(f"Public key (give to the model server and to users): {public_path}")
      return 0
    version_dir = os.path.abspath(args.version_dir)
    version = args.version
    if version is None:
      name = os.path.basename(version_dir)
      if not (name.isascii() and name.isdigit()):
        parser.error(f"{version_dir} is not named by a version number; pass --version.")
      version = int(name)
    model_name = args.model_name or os.path.basename(os.path.dirname(version_dir))
    signature = sign_version(version_dir, args.private_key_file, model_name, version)
    print(f"Signed {model_name} version {version}: {signature}")
  except (ValueError, OSError) as e:
    print(f"version_signing: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
