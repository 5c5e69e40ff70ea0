"""Writes a span of the synthetic clickstream dataset as TFRecord files.

Usage:
  python -m next_category.dataset.generate --data_root data/default [--span 1]
      [--num_examples 50000] [--seed 42] [--drift segment_mix=0.5,category_mix=0.3]
      [--schema_path schemas/schema.pbtxt]

With `--schema_path`, the examples have that schema's features (names, id
range, history lengths, vocabularies, classes), read by `contract`.
"""

import argparse
import sys

from next_category import contract
from next_category.dataset import clickstream


def _parse_drift(text: str) -> clickstream.Drift:
  """Parses `name=value[,name=value...]`, or a single strength for all parts."""
  if not text:
    return clickstream.Drift()
  names = [f.name for f in clickstream.dataclasses.fields(clickstream.Drift)]
  try:
    if "=" not in text:
      return clickstream.Drift(**{name: float(text) for name in names})
    values = {}
    for part in text.split(","):
      name, _, value = part.partition("=")
      if name.strip() not in names:
        raise ValueError(f"unknown drift part {name.strip()!r}; expected one of {names}.")
      values[name.strip()] = float(value)
    return clickstream.Drift(**values)
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"bad --drift {text!r}: {e}") from e


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--data_root", required=True, help="Dataset root; files go to DATA_ROOT/span-N/."
  )
  parser.add_argument("--span", type=int, default=1)
  parser.add_argument("--num_examples", type=int, default=clickstream.DEFAULT_NUM_EXAMPLES)
  parser.add_argument("--num_shards", type=int, default=clickstream.DEFAULT_NUM_SHARDS)
  parser.add_argument(
    "--seed",
    type=int,
    default=None,
    help="Random seed (default: 42 + span - 1, so each span holds different users).",
  )
  parser.add_argument(
    "--drift",
    type=_parse_drift,
    default=clickstream.Drift(),
    help="Distribution shift: a strength in [0, 1] for all "
    "parts, or segment_mix=..,category_mix=..,history_length=..",
  )
  parser.add_argument(
    "--overwrite", action="store_true", help="Replace the span if it already exists."
  )
  parser.add_argument(
    "--schema_path",
    default=contract.DEFAULT_SCHEMA_PATH,
    help="The schema whose features to write (default: the default dataset's).",
  )
  parser.add_argument("--label_feature", default=None, help="The label, if not the rule's.")
  parser.add_argument("--sequence_feature", default=None, help="The sequence, if not the rule's.")
  args = parser.parse_args(argv)
  seed = args.seed if args.seed is not None else clickstream.DEFAULT_SEED + args.span - 1
  try:
    data_contract = contract.load(args.schema_path, args.label_feature, args.sequence_feature)
    paths = clickstream.write_span(
      args.data_root,
      span=args.span,
      num_examples=args.num_examples,
      seed=seed,
      num_shards=args.num_shards,
      drift=args.drift,
      overwrite=args.overwrite,
      data_contract=data_contract,
    )
  except (ValueError, FileExistsError) as e:  # contract.ContractError is a ValueError.
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(
    f"Wrote {args.num_examples} examples (seed {seed}) to "
    f"{len(paths)} files under {paths[0].rsplit('/', 1)[0]}"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
