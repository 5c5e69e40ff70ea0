"""Compiles the next_category pipeline for Kubeflow Pipelines v2 (`make kubeflow`).

Builds the same `create_pipeline(...)` as the Beam and local runners and
compiles it with TFX's KubeflowV2DagRunner into OUTPUT_ROOT/kubeflow/pipeline.json,
a KFP v2 PipelineJob in which every component runs in the project's image (the
top-level Dockerfile). At run time the components read and write only URIs
under --storage_root (e.g. gs://bucket/next-category), never this machine's
files. `next_category.pipeline.kubeflow.submit` starts a run of the package.
"""

import argparse
import copy
import dataclasses
import json
import os
import sys
import tempfile
from typing import Any
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence

import tensorflow as tf
import yaml
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import compiler_utils
from tfx.utils import import_utils

from next_category.pipeline import caching
from next_category.pipeline import configs
from next_category.pipeline import pipeline as pipeline_lib
from next_category.pipeline import settings
from next_category.pipeline.kubeflow import entrypoint as kfp_entrypoint
from next_category.pipeline.kubeflow import package as kubeflow_package
from next_category.pipeline.run import runner_flags

# KFP pipeline names allow only [a-z0-9-].
KFP_PIPELINE_NAME = configs.PIPELINE_NAME.replace("_", "-")
# What `docker build -t next-category-pipeline:0.1.0 .` makes. A tag other
# than `latest` lets a cluster use an image loaded into its nodes
# (imagePullPolicy IfNotPresent).
DEFAULT_IMAGE = "next-category-pipeline:0.1.0"
# The Dockerfile's WORKDIR: the image holds this checkout there (COPY . .).
IMAGE_WORKDIR = "/pipeline"
# Where the Dockerfile puts the curated schema inside the image.
IMAGE_SCHEMA_PATH = f"{IMAGE_WORKDIR}/schemas/schema.pbtxt"
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


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
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
    help="The schema as the components see it: a path inside the image, a URI, or a relative "
    f"path in this checkout (e.g. `make kubeflow SCHEMA=...`), read at {IMAGE_WORKDIR}/<path> "
    "in the image built from it.",
  )
  parser.add_argument(
    "--local_schema_path",
    help="The same schema as a file on this machine, where the label and slice features are "
    "read at compile time; needed when --schema_path is neither readable here (a gs:// URI) "
    f"nor under {IMAGE_WORKDIR}/ (this checkout's copy in the image).",
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


def _image_paths() -> List[str]:
  """What `COPY . .` puts into the image: the `!path` entries of the allowlist .dockerignore."""
  with open(os.path.join(configs.PROJECT_ROOT, ".dockerignore")) as f:
    lines = [line.strip() for line in f]
  return [line[1:].strip("/") for line in lines if line.startswith("!")]


def image_schema_path(schema_path: str) -> str:
  """Where the components read `--schema_path`: a relative one is this checkout's file in the image.

  `make kubeflow SCHEMA=schemas/examples/departments.pbtxt` names a file in
  this checkout, as `make run SCHEMA=...` does; the image holds the checkout at
  IMAGE_WORKDIR (the Dockerfile's `COPY . .`), so the components read it at
  IMAGE_WORKDIR/schemas/examples/departments.pbtxt. A URI or an absolute
  path is already where the components read it.

  Raises:
    ValueError: for a relative path that does not exist, lies outside this
      checkout, or is left out of the image by .dockerignore.
  """
  if "://" in schema_path or os.path.isabs(schema_path):
    return schema_path
  local = os.path.abspath(schema_path)
  relative = os.path.relpath(local, configs.PROJECT_ROOT)
  if not os.path.isfile(local):
    raise ValueError(f"--schema_path {schema_path} does not exist (relative to {os.getcwd()}).")
  if relative.startswith(".."):
    raise ValueError(
      f"--schema_path {schema_path} is outside this checkout ({configs.PROJECT_ROOT}), which is "
      "all the image holds; put the schema under schemas/ or give a URI such as gs://..."
    )
  copied = _image_paths()
  if not any(relative == path or relative.startswith(path + os.sep) for path in copied):
    raise ValueError(
      f"--schema_path {schema_path} is not copied into the image: .dockerignore lets in only "
      f"{', '.join(copied)}; put the schema under schemas/."
    )
  return f"{IMAGE_WORKDIR}/{relative.replace(os.sep, '/')}"


def _compile_time_schema(args: argparse.Namespace, scratch_dir: str) -> str:
  """A local file holding the schema the components will read at `--schema_path`.

  The compiled package fixes the Evaluator's label and slices, so the
  compiler reads the data contract from: `--local_schema_path`; else, for a
  `--schema_path` inside the image's checkout, the same file in this checkout
  (the image is built from it); else `--schema_path` itself through
  tf.io.gfile (gs:// or another URI), copied into `scratch_dir`.

  Raises:
    ValueError: if none of them can be read here.
  """
  if args.local_schema_path:
    if not os.path.isfile(args.local_schema_path):
      raise ValueError(f"--local_schema_path {args.local_schema_path} does not exist.")
    return args.local_schema_path
  image_relative = os.path.relpath(args.schema_path, IMAGE_WORKDIR)
  if os.path.isabs(args.schema_path) and not image_relative.startswith(".."):
    local = os.path.join(configs.PROJECT_ROOT, image_relative)
    if os.path.isfile(local):
      return local
    reason = f"this checkout, which the image holds at {IMAGE_WORKDIR}, has no {image_relative}"
  else:
    local = os.path.join(scratch_dir, "schema.pbtxt")
    try:
      tf.io.gfile.copy(args.schema_path, local)
      return local
    except tf.errors.OpError as e:
      reason = e.message
  raise ValueError(
    f"Cannot read --schema_path {args.schema_path} on this machine ({reason}); the compiled "
    "pipeline takes its label and slice features from it. Pass --local_schema_path=<the same "
    "schema as a file here>, or a --schema_path URI readable here."
  )


def build_pipeline(args: argparse.Namespace) -> tfx.dsl.Pipeline:
  """Builds the pipeline from parsed flags, its Trainer reading `train_args` at run time.

  Raises:
    ValueError: for settings that cannot work, or a schema not readable here
      (`image_schema_path`, `_compile_time_schema`).
  """
  paths = storage_paths(args)
  args = argparse.Namespace(**{**vars(args), "schema_path": image_schema_path(args.schema_path)})
  with tempfile.TemporaryDirectory() as scratch_dir:
    contract_args = argparse.Namespace(
      **{**vars(args), "schema_path": _compile_time_schema(args, scratch_dir)}
    )
    shared = runner_flags.pipeline_settings(contract_args)
  # A run can change the training steps without recompiling. TFX 1.16 cannot
  # put a runtime parameter inside a proto field, so the parameter is the whole
  # TrainArgs as JSON; KubeflowV2 binds it to a pipeline input.
  shared["training"] = dataclasses.replace(
    shared["training"],
    train_steps=tfx.dsl.experimental.RuntimeParameter(
      name=kubeflow_package.TRAIN_ARGS_PARAMETER,
      ptype=str,
      default=kubeflow_package.train_args_value(args.train_steps),
    ),
  )
  return pipeline_lib.create_pipeline(
    paths=settings.Paths(
      pipeline_root=paths.pipeline_root,
      data_root=paths.data_root,
      schema_path=args.schema_path,
      report_dir=paths.reports_dir,
    ),
    serving=settings.ServingSettings(
      serving_model_dir=paths.serving_model_dir,
      tflite_push_base_directory=paths.tflite_model_dir,
      model_signing_key=args.model_signing_key,
    ),
    pipeline_name=KFP_PIPELINE_NAME,
    # Kubeflow connects the components to its own ML Metadata store.
    metadata_connection_config=None,
    beam_pipeline_args=args.beam_pipeline_args,
    **shared,
  )


def compile_pipeline(
  pipeline: tfx.dsl.Pipeline, image: str, package_path: str, train_steps: Optional[int]
) -> dict:
  """Writes the KFP v2 PipelineJob of `pipeline` to `package_path`, and its bare spec beside it.

  The PipelineJob is what Vertex AI runs; the bare PipelineSpec
  (`kubeflow_package.spec_path`) is what the KFP UI's upload and `kfp.Client`
  take. Both run every step through `next_category.pipeline.kubeflow.entrypoint`.

  Returns:
    The PipelineJob as a dict.

  Raises:
    ValueError: if a step is not a container step, or an artifact type cannot
      be imported by the image.
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
  job = runner.run(
    pipeline,
    parameter_values={
      kubeflow_package.TRAIN_ARGS_PARAMETER: kubeflow_package.train_args_value(train_steps)
    },
    write_out=False,
  )
  job = adapt_steps(job, pipeline)
  os.makedirs(os.path.dirname(package_path), exist_ok=True)
  with open(package_path, "w") as f:
    json.dump(job, f, indent=2, sort_keys=True)
  with open(kubeflow_package.spec_path(os.path.dirname(os.path.dirname(package_path))), "w") as f:
    yaml.safe_dump(kubeflow_package.bare_spec(job), f, sort_keys=True)
  return job


def _artifact_classes(pipeline: tfx.dsl.Pipeline) -> Dict[str, str]:
  """Import path of every artifact type the pipeline uses, by the title it compiles to.

  Raises:
    ValueError: for a type the image could not import by that path.
  """
  classes = dict(compiler_utils.TITLE_TO_CLASS_PATH)
  for component in pipeline.components:
    for channel in [*component.inputs.values(), *component.outputs.values()]:
      artifact_cls = channel.type
      if artifact_cls.TYPE_NAME in classes:
        continue
      path = f"{artifact_cls.__module__}.{artifact_cls.__qualname__}"
      try:
        imported = import_utils.import_class_by_path(path)
      except (ImportError, AttributeError):
        imported = None
      if imported is not artifact_cls:
        raise ValueError(
          f"Artifact type {artifact_cls.TYPE_NAME!r} of {component.id} cannot be imported as "
          f"{path}; define it at module level in a module the image installs."
        )
      classes[artifact_cls.TYPE_NAME] = path
  return classes


def _title(artifact_spec: Dict[str, Any]) -> str:
  artifact_type = artifact_spec["artifactType"]
  if "schemaTitle" in artifact_type:
    return artifact_type["schemaTitle"]
  return yaml.safe_load(artifact_type["instanceSchema"])["title"]


def adapt_steps(job: Dict[str, Any], pipeline: tfx.dsl.Pipeline) -> Dict[str, Any]:
  """Makes every step of a compiled PipelineJob run on open-source KFP 2.x and Vertex AI.

  Each container runs `next_category.pipeline.kubeflow.entrypoint` with the classes of its
  artifacts and, for ImportExampleGen, the module of its pre-cache check
  (which only Vertex AI runs); `uncached_steps` are never served from cache.

  Raises:
    ValueError: if a step is not a container step (open-source KFP runs only
      container and importer steps), or for an artifact type the image could
      not import.
  """
  job = copy.deepcopy(job)
  spec = job["pipelineSpec"]
  executors = spec["deploymentSpec"]["executors"]
  not_containers = sorted(label for label, e in executors.items() if "container" not in e)
  if not_containers:
    raise ValueError(
      f"Steps {', '.join(not_containers)} are not container steps (e.g. a tfx.dsl.Resolver "
      "compiles to a resolver step); open-source Kubeflow Pipelines refuses such a run and "
      "next_category.pipeline.kubeflow.entrypoint cannot run them. Use a custom component instead."
    )
  classes = _artifact_classes(pipeline)
  for component in spec["components"].values():
    if "executorLabel" not in component:
      continue
    container = executors[component["executorLabel"]]["container"]
    artifact_types = {
      side: {
        key: classes[_title(artifact_spec)]
        for key, artifact_spec in component.get(definitions, {}).get("artifacts", {}).items()
      }
      for side, definitions in (("inputs", "inputDefinitions"), ("outputs", "outputDefinitions"))
    }
    flags = ["--artifact_types", json.dumps(artifact_types, sort_keys=True)]
    pre_cache_check = container.get("lifecycle", {}).get("preCacheCheck")
    if pre_cache_check:
      python, dash_m, module = pre_cache_check["command"]
      assert (python, dash_m) == ("python", "-m"), pre_cache_check["command"]
      flags += ["--pre_cache_check_module", module]
    container["command"] = list(kfp_entrypoint.COMMAND)
    container["args"] = flags + container["args"]
  # Steps that read state outside their input artifacts would freeze a
  # scheduled run if served from cache: open-source KFP's cache key is the
  # input artifacts, parameters, image and command only
  # (backend/src/v2/driver/cache.go, getFingerPrint), so a cached ExampleGen
  # (whose span resolution only Vertex AI runs before the cache lookup) never
  # sees a new span, and a cached ServingBaseline hands on a stale baseline.
  tasks = spec["root"]["dag"]["tasks"]
  for name in uncached_steps(job, pipeline):
    tasks[name]["cachingOptions"] = {"enableCache": False}
  return job


def uncached_steps(job: Dict[str, Any], pipeline: tfx.dsl.Pipeline) -> List[str]:
  """Tasks never served from cache: with a pre-cache check, or in `caching.uncached_node_ids`."""
  spec = job["pipelineSpec"]
  executors = spec["deploymentSpec"]["executors"]
  with_check = [
    name
    for name, task in spec["root"]["dag"]["tasks"].items()
    if "lifecycle"
    in executors[spec["components"][task["componentRef"]["name"]]["executorLabel"]]["container"]
  ]
  return sorted(set(with_check) | set(caching.uncached_node_ids(pipeline)))


def main(argv=None) -> int:
  """Compiles the package; returns the exit code (2 for bad flags)."""
  args = parse_args(argv)
  package_path = kubeflow_package.package_path(os.path.abspath(args.output_root))
  try:
    pipeline = build_pipeline(args)
    job = compile_pipeline(pipeline, args.image, package_path, args.train_steps)
  except ValueError as e:
    print(f"ERROR: {e}", file=sys.stderr)
    return 2
  tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
  print(
    f"Wrote {package_path} (Vertex AI PipelineJob) and "
    f"{kubeflow_package.spec_path(os.path.abspath(args.output_root))} (KFP PipelineSpec): "
    f"{len(tasks)} tasks in image {args.image}, pipeline root "
    f"{pipeline.pipeline_info.pipeline_root}."
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
