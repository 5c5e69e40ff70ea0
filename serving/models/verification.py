"""The signature check before a version loads (--model_verification_key_file).

A version directory is loaded only if model_signing verifies it against the
key: signed with it, and unaltered since.
"""

from typing import Callable
from typing import Optional

import grpc

import model_signing
from serving import status


def verify_version(
  name: str, path: str, key_file: str, on_failure: Optional[Callable[[str], None]] = None
) -> None:
  """Checks that the version directory `path` of model `name` is signed with `key_file`.

  Args:
    name: the model's name.
    path: the version directory.
    key_file: the Ed25519 public key.
    on_failure: called with `name` when the check fails (the metrics count it).

  Raises:
    ServingError: FAILED_PRECONDITION, with why, if the check fails.
  """
  try:
    model_signing.verify_directory(path, key_file)
  except (model_signing.VerificationError, ValueError) as e:
    if on_failure is not None:
      on_failure(name)
    raise status.ServingError(
      grpc.StatusCode.FAILED_PRECONDITION, f"Model signature verification failed: {e}"
    ) from None
