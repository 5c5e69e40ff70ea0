"""Signs a model version directory and verifies it before it is served.

A signed version holds `signature/manifest.json` (the SHA-256 digest of every other file, by path
relative to the version directory) and `signature/manifest.sig` (the Ed25519 signature of the
manifest's exact bytes). Verification recomputes every digest, so a flipped byte, an added file or
a removed file is caught, and checks the signature with the public key, so a manifest rewritten by
anyone without the private key is caught too.

This package is a bottom layer: it imports only the standard library and `cryptography`. Files
are read through `tf.io.gfile` only when TensorFlow is already imported and the path has a URL
scheme (`gs://...`); local paths are read with plain file I/O.
"""

from model_signing.signing import MANIFEST_PATH
from model_signing.signing import SIGNATURE_DIR
from model_signing.signing import SIGNATURE_PATH
from model_signing.signing import VerificationError
from model_signing.signing import generate_key_pair
from model_signing.signing import sign_directory
from model_signing.signing import verify_directory

__all__ = [
  "MANIFEST_PATH",
  "SIGNATURE_DIR",
  "SIGNATURE_PATH",
  "VerificationError",
  "generate_key_pair",
  "sign_directory",
  "verify_directory",
]
