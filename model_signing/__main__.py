"""Signs or verifies a model version directory.

Usage:
  python -m model_signing sign --version_dir=DIR --private_key_file=KEY
  python -m model_signing verify --version_dir=DIR --public_key_file=KEY
(Key pairs come from `python -m model_signing.keygen --key_dir=DIR`.)
"""

import argparse
import sys

from model_signing.signing import VerificationError
from model_signing.signing import sign_directory
from model_signing.signing import verify_directory


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m model_signing", description=__doc__.splitlines()[0]
  )
  commands = parser.add_subparsers(dest="command", required=True)
  sign = commands.add_parser("sign", help="Write signature/manifest.json and manifest.sig.")
  sign.add_argument("--version_dir", required=True)
  sign.add_argument("--private_key_file", required=True)
  verify = commands.add_parser("verify", help="Check the signature and every file's digest.")
  verify.add_argument("--version_dir", required=True)
  verify.add_argument("--public_key_file", required=True)
  args = parser.parse_args(argv)
  try:
    if args.command == "sign":
      print(f"Signed: {sign_directory(args.version_dir, args.private_key_file)}")
    else:
      files = verify_directory(args.version_dir, args.public_key_file)
      print(f"Verified: {len(files)} files match the signed manifest.")
  except VerificationError as e:
    print(f"Refused: {e}", file=sys.stderr)
    return 1
  except (ValueError, OSError) as e:
    print(f"model_signing: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
