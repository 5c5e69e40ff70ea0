"""Compiles the next_category pipeline for Kubeflow Pipelines v2 (`make kubeflow`).

Builds the same `create_pipeline(...)` as the Beam and local runners and
compiles it with TFX's KubeflowV2DagRunner into OUTPUT_ROOT/kubeflow/pipeline.json,
a KFP v2 PipelineJob in which every component runs in the project's image (the
top-level Dockerfile). At run time the components read and write only URIs
under --storage_root (e.g. gs://bucket/next-category), never this machine's
files. `pipeline.kubeflow_submit` starts a run of the package.
"""

import argparse
import dataclasses
import os
import sys
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

from tfx import v1 as tfx

from pipeline import configs
from pipeline import kubeflow_package
from pipeline import pipeline as pipeline_lib
from pipeline import runner_flags

# KFP pipeline names allow only [a-z0-9-].
KFP_PIPELINE_NAME = configs.PIPELINE_NAME.replace("_", "-")
# What `docker build -t next-category-pipeline:0.1.0 .` makes. A tag other
# than `latest` lets a cluster use an image loaded into its nodes
# (imagePullPolicy IfNotPresent).
DEFAULT_IMAGE = "next-category-pipeline:0.1.0"
# Where the Dockerfile puts the curated schema inside the image.
IMAGE_SCHEMA_PATH = "/pipeline/schemas/schema.pbtxt"
# Compiling needs no bucket, but running does; compiling with this default
# warns.
PLACEHOLDER_STORAGE_ROOT = "gs://YOUR_BUCKET/next-category"


@dataclasses.dataclass(frozen=True)
class StoragePaths:
  """The URIs a Kubeflow run reads and writes."""

  pipeline_root: str
  data_root: str
  serving_model_dir: str
  reports_dir: str
  tflite_model_dir: str

  @classmethod
  def under(cls, storage_root: str) -> "StoragePaths":
    """The default layout: pipeline/, data/, serving/ and reports/ under one root."""
    root = storage_root.rstrip("/")
    return cls(
      pipeline_root=f"{root}/pipeline",
      data_root=f"{root}/data",
      serving_model_dir=f"{root}/serving/{configs.SERVING_MODEL_NAME}",
      reports_dir=f"{root}/reports",
      tflite_model_dir=f"{root}/tflite/{configs.SERVING_MODEL_NAME}",
    )


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
  """Parses the runner's flags; unrecognised `--flags` are Beam pipeline args.

  Returns:
    `(args, beam_pipeline_args)`.
  """
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0],
    epilog="Any other --flag is passed to the components' Beam pipelines "
    "(e.g. --runner=DataflowRunner --project=... --region=...); without any, "
    f"they run with {' '.join(configs.BEAM_PIPELINE_ARGS)} inside each component's pod.",
  )
  parser.add_argument(
    "--output_root",
    default=configs.OUTPUT_ROOT,
    help="The package is written to OUTPUT_ROOT/kubeflow/pipeline.json.",
  )
  parser.add_argument(
    "--image", default=DEFAULT_IMAGE, help="Container image every component runs in."
  )
  parser.add_argument(
    "--storage_root",
    default=PLACEHOLDER_STORAGE_ROOT,
    help="URI the cluster reads and writes: pipeline/, data/ (span-N/ directories), "
    "serving/ and reports/ (AnomalyGate's HTML reports) under it.",
  )
  parser.add_argument("--pipeline_root", help="Overrides STORAGE_ROOT/pipeline.")
  parser.add_argument("--data_root", help="Overrides STORAGE_ROOT/data.")
  parser.add_argument(
    "--serving_model_dir", help=f"Overrides STORAGE_ROOT/serving/{configs.SERVING_MODEL_NAME}."
  )
  parser.add_argument(
    "--schema_path",
    default=IMAGE_SCHEMA_PATH,
    help="The schema as the components see it: a path inside the image or a URI.",
  )
  runner_flags.add_pipeline_flags(
    parser,
    num_workers_help="Training workers, passed to run_fn as custom_config['num_workers'].",
    train_steps_help="Default of the train_args runtime parameter; a run may override it.",
  )
  return runner_flags.parse_with_beam_args(parser, argv)


def storage_paths(args: argparse.Namespace) -> StoragePaths:
  """The run's URIs from the flags.

  Raises:
    ValueError: for a relative path, which no component's pod could resolve.
  """
  paths = StoragePaths.under(args.storage_root)
  overrides = {
    field.name: getattr(args, field.name)
    for field in dataclasses.fields(StoragePaths)
    if getattr(args, field.name, None)
  }
  paths = dataclasses.replace(paths, **overrides)
  for name, value in dataclasses.asdict(paths).items():
    if "://" not in value and not value.startswith("/"):
      raise ValueError(
        f"{name} {value!r} must be a URI such as gs://bucket/path (or an absolute "
        "path mounted in every pod): components run in pods, not on this machine."
      )
  return paths


def build_pipeline(args: argparse.Namespace, beam_pipeline_args: List[str]) -> tfx.dsl.Pipeline:
  """Builds the pipeline from parsed flags, its Trainer reading `train_args` at run time.

  Raises:
    ValueError: for settings that cannot work.
  """
  paths = storage_paths(args)
  return pipeline_lib.create_pipeline(
    pipeline_name=KFP_PIPELINE_NAME,
    pipeline_root=paths.pipeline_root,
    data_root=paths.data_root,
    schema_path=args.schema_path,
    serving_model_dir=paths.serving_model_dir,
    report_dir=paths.reports_dir,
    tflite_push_base_directory=paths.tflite_model_dir,
    # Kubeflow connects the components to its own ML Metadata store.
    metadata_connection_config=None,
    # A run can change the training steps without recompiling. TFX 1.16
    # cannot put a runtime parameter inside a proto field, so the parameter is
    # the whole TrainArgs as JSON; KubeflowV2 binds it to a pipeline input.
    train_args=tfx.dsl.experimental.RuntimeParameter(
      name=kubeflow_package.TRAIN_ARGS_PARAMETER,
      ptype=str,
      default=kubeflow_package.train_args_value(args.train_steps),
    ),
    eval_args=tfx.proto.EvalArgs(num_steps=args.eval_steps),
    beam_pipeline_args=beam_pipeline_args,
    **runner_flags.pipeline_settings(args),
  )


def compile_pipeline(
  pipeline: tfx.dsl.Pipeline, image: str, package_path: str, train_steps: int
) -> dict:
  """Writes the KFP v2 PipelineJob of `pipeline` to `package_path`.

  Returns:
    The PipelineJob as a dict.
  """
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
    config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
      default_image=image,
      # Schema 2.1 is what the KFP 2.x SDK and API server speak.
      use_pipeline_spec_2_1=True,
    ),
    output_dir=os.path.dirname(package_path),
    output_filename=os.path.basename(package_path),
  )
  return runner.run(
    pipeline,
    parameter_values={
      kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(train_steps)
    },
  )


def main(argv=None) -> int:
  """Compiles the package; returns the exit code (2 for bad flags)."""
  args, beam_pipeline_args = parse_args(argv)
  try:
    pipeline = build_pipeline(args, beam_pipeline_args)
  except ValueError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  package_path = kubeflow_package.package_path(os.path.abspath(args.output_root))
  job = compile_pipeline(pipeline, args.image, package_path, args.train_steps)
  tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
  print(
    f"Wrote {package_path}: {len(tasks)} tasks in image {args.image}, "
    f"pipeline root {pipeline.pipeline_info.pipeline_root}."
  )
  placeholders = [
    uri
    for uri in dataclasses.asdict(storage_paths(args)).values()
    if uri.startswith(PLACEHOLDER_STORAGE_ROOT)
  ]
  if placeholders:
    print(
      f"WARNING: {', '.join(placeholders)} under the placeholder {PLACEHOLDER_STORAGE_ROOT}; "
      "compile with --storage_root=gs://<your bucket>/<path> before submitting a run.",
      file=sys.stderr,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
