"""Serves the TensorBoard logs of every pipeline run's Trainer, named by run id.

    python -m next_category.pipeline.reports.tensorboard_logs --output_root=artifacts [--port=6006]

Each Trainer execution writes its logs to its own `model_run` directory; this
names them after the pipeline runs in ML Metadata (directories it does not
know keep their execution number) and starts TensorBoard on them. Any other
flag goes to TensorBoard.

TensorBoard 2.16 imports `pkg_resources`, which the locked setuptools no
longer ships; when it is missing, a stand-in with the two functions TensorBoard
calls (`iter_entry_points`, `parse_version`) is built on importlib.metadata and
packaging, so TensorBoard runs as it would with it.
"""

import argparse
import glob
import importlib.metadata
import os
import sys
import types
from typing import Dict


def _install_pkg_resources_stand_in() -> None:
  try:
    import pkg_resources  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import

    return
  except ImportError:
    pass
  from packaging import version  # pylint: disable=g-import-not-at-top

  class EntryPoint:
    """pkg_resources.EntryPoint's `name` and `resolve()` over importlib.metadata's."""

    def __init__(self, entry_point):
      self.name = entry_point.name
      self.resolve = entry_point.load

  module = types.ModuleType("pkg_resources")
  module.iter_entry_points = lambda group, name=None: [
    EntryPoint(e)
    for e in importlib.metadata.entry_points(group=group)
    if name is None or e.name == name
  ]
  module.parse_version = version.parse
  sys.modules["pkg_resources"] = module


def runs_by_name(output_root: str) -> Dict[str, str]:
  """`{run name: model_run directory}` of every Trainer execution under `output_root`."""
  # pylint: disable=g-import-not-at-top
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx

  from next_category.pipeline import configs
  from next_category.pipeline.reports import run_summary

  # pylint: enable=g-import-not-at-top
  directories = sorted(
    glob.glob(os.path.join(output_root, "pipeline", "Trainer", "model_run", "*")),
    key=lambda d: (len(d), d),
  )
  names = {d: f"execution-{os.path.basename(d)}" for d in directories}
  metadata_path = os.path.join(output_root, "metadata.sqlite")
  if os.path.exists(metadata_path):
    connection = tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)
    store = metadata_store.MetadataStore(connection)
    try:
      run_ids = run_summary.run_ids(connection, configs.PIPELINE_NAME)
    except ValueError:
      run_ids = []
    for run_id in run_ids:
      summary = run_summary.summarize(connection, configs.PIPELINE_NAME, run_id)
      trainer = summary.component("Trainer")
      for artifact in trainer.outputs.get("model_run", []) if trainer else []:
        if artifact.uri in names:
          # TensorBoard's --logdir_spec separates name and path with ":".
          names[artifact.uri] = run_id.replace(":", "-")
    del store
  return {name: directory for directory, name in names.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--output_root", default=None, help="The pipeline's OUTPUT_ROOT.")
  parser.add_argument("--port", type=int, default=6006)
  args, tensorboard_args = parser.parse_known_args(argv)
  from next_category.pipeline import configs  # pylint: disable=g-import-not-at-top

  output_root = os.path.abspath(args.output_root or configs.OUTPUT_ROOT)
  runs = runs_by_name(output_root)
  if not runs:
    print(f"ERROR: no Trainer logs under {output_root}; run the pipeline first.", file=sys.stderr)
    return 2
  for name, directory in runs.items():
    print(f"{name}: {directory}")
  _install_pkg_resources_stand_in()
  from tensorboard import main as tensorboard_main  # pylint: disable=g-import-not-at-top

  spec = ",".join(f"{name}:{directory}" for name, directory in runs.items())
  sys.argv = ["tensorboard", f"--logdir_spec={spec}", f"--port={args.port}", *tensorboard_args]
  return tensorboard_main.run_main() or 0


if __name__ == "__main__":
  sys.exit(main())
