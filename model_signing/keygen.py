"""Writes an Ed25519 key pair for signing model versions.

Usage: python -m model_signing.keygen --key_dir=DIR
"""

import argparse
import sys

from model_signing.signing import generate_key_pair


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m model_signing.keygen", description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    "--key_dir",
    required=True,
    help="Directory for model_signing_key.pem (private, mode 0600) and model_signing_key.pub.pem.",
  )
  args = parser.parse_args(argv)
  try:
    private_path, public_path = generate_key_pair(args.key_dir)
  except (ValueError, OSError) as e:
    print(f"keygen: {e}", file=sys.stderr)
    return 2
  print(f"Private key (keep secret, sign with it): {private_path}")
  print(f"Public key (give to the model server): {public_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
