"""Signs a model version while it is staged, so it is signed before it becomes visible.

The Pusher and the TFLiteConverter write a version under a staging name and
rename it into place; with a signing key, `signing_writer` makes the staging
write also sign the directory (`model_signing.sign_directory`: a manifest of
the SHA-256 digest of every file and its Ed25519 signature, under
`signature/`). A server started with the public key
(`--model_verification_key_file`) then refuses any version whose files differ.
"""

from typing import Callable
from typing import Optional

import model_signing

# The name of the key path in the Pusher's custom_config and the
# TFLiteConverter's parameters.
MODEL_SIGNING_KEY = "model_signing_key"


def signing_writer(
  write: Callable[[str], None], private_key_path: Optional[str]
) -> Callable[[str], None]:
  """`write`, followed by signing what it wrote, when a key is given.

  Args:
    write: writes a version's files into the staging directory it is given.
    private_key_path: an Ed25519 private key (PEM), as `make keygen` writes
      it; None or empty leaves versions unsigned.

  Returns:
    A function of the staging directory; it raises ValueError if the key
    cannot be read, before the version is published.
  """
  if not private_key_path:
    return write

  def write_and_sign(staging_dir: str) -> None:
    write(staging_dir)
    model_signing.sign_directory(staging_dir, private_key_path)

  return write_and_sign
