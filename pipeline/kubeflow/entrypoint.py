"""Runs one step of the compiled pipeline on Kubeflow Pipelines 2.x or Vertex AI.

Every executor's `command` in the compiled package is `python -m
next_category.pipeline.kubeflow.entrypoint` (the image's ENTRYPOINT). It takes what the backend's
launcher passes, TFX's own flags plus two that `kubeflow_runner` compiles in,
makes the ExecutorInput what TFX's entry point
(`tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor`) expects,
and runs that. What it adapts, with the open-source KFP sources
(kubeflow/pipelines `backend/src/v2`) that make it necessary:

- Input artifacts from upstream steps arrive with an empty `instanceSchema`
  (`metadata/client.go`, GetOutputArtifactsByExecutionId: `Schema: ""`), so
  TFX cannot tell their class. Every artifact's type is set from the step's own
  spec (`--artifact_types`, compiled from its input and output definitions).
- The driver adds an `executor-logs` output of type `system.Artifact`
  (`driver/driver.go`, provisionOutputs) that TFX would import as a class;
  outputs the step does not declare are left to the launcher.
- `lifecycle.preCacheCheck` (ImportExampleGen's driver, which resolves
  `span-{SPAN}` to the latest span) is never run by open-source KFP. When no
  driver has written the step's output metadata file, it runs here first
  (`--pre_cache_check_module`), as Vertex AI would have run it.
- A custom artifact type compiles to its TYPE_NAME as schema title, which TFX
  imports as a module path; `--artifact_types` names the class instead.
- kubeflow/pipelines#13476: the launcher downloads each input artifact before
  the step runs, and fails on the zero-byte directory-marker objects that
  TensorFlow's GCS filesystem writes (a `dir/` object becomes a file that
  blocks `dir/...`). After the step, markers of non-empty directories under its
  gs:// outputs are deleted; tf.io.gfile still sees those directories.

On Vertex AI, which types every artifact and runs the pre-cache check, the
step runs as with TFX's own entry point: the artifacts get the same classes.
"""

import argparse
import importlib
import json
import os
import sys
from typing import Dict
from typing import List
from typing import Sequence
from typing import Tuple

from absl import app
from absl import logging
from absl.flags import argparse_flags
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.dsl.io import fileio
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor

# The command every compiled step runs (also the Dockerfile's ENTRYPOINT).
COMMAND = ("python", "-m", "next_category.pipeline.kubeflow.entrypoint")


def adapt_executor_input(
  executor_input: pipeline_spec_pb2.ExecutorInput, artifact_types: Dict[str, Dict[str, str]]
) -> pipeline_spec_pb2.ExecutorInput:
  """The ExecutorInput TFX's entry point expects, typed from the step's spec.

  Args:
    executor_input: what the launcher passed.
    artifact_types: `{"inputs": {key: class path}, "outputs": {key: class
      path}}`, the step's declared artifacts.

  Returns:
    A copy in which every artifact's type names its class, without the
    outputs the step does not declare.

  Raises:
    ValueError: for an input artifact the step does not declare.
  """
  adapted = pipeline_spec_pb2.ExecutorInput()
  adapted.CopyFrom(executor_input)
  for key in list(adapted.outputs.artifacts):
    if key not in artifact_types["outputs"]:
      # The launcher's own outputs (executor-logs); it writes them itself.
      logging.info("Leaving output %r to the launcher: the step does not declare it.", key)
      del adapted.outputs.artifacts[key]
  for side in ("inputs", "outputs"):
    artifacts = getattr(adapted, side).artifacts
    for key, artifact_list in artifacts.items():
      class_path = artifact_types[side].get(key)
      if class_path is None:
        raise ValueError(
          f"The launcher passed input artifact {key!r}, which this step does not declare "
          f"(it declares {', '.join(sorted(artifact_types[side])) or 'none'}); the package "
          "and the image are from different versions of the pipeline."
        )
      for artifact in artifact_list.artifacts:
        # TFX imports a title that is not a first-party type by its path.
        artifact.type.Clear()
        artifact.type.schema_title = class_path
  return adapted


def merge_driver_artifacts(executor_input: pipeline_spec_pb2.ExecutorInput, path: str) -> None:
  """Merges the output artifacts a driver wrote to `path` into `executor_input`'s outputs."""
  driver_output = pipeline_spec_pb2.ExecutorOutput()
  with fileio.open(path, "rb") as f:
    json_format.Parse(f.read(), driver_output, ignore_unknown_fields=True)
  for key, artifact_list in driver_output.artifacts.items():
    if key not in executor_input.outputs.artifacts or not artifact_list.artifacts:
      continue
    (target, *_) = executor_input.outputs.artifacts[key].artifacts
    target.metadata.update(json_format.MessageToDict(artifact_list.artifacts[0].metadata))


def directory_markers(sizes: Dict[str, int]) -> List[str]:
  """The zero-byte `dir/` marker objects of directories that hold other objects.

  Args:
    sizes: the size of every object under a prefix, by name.

  Returns:
    The marker names, sorted. A marker of an empty directory is kept: it is
    what makes the directory exist, and nothing below it can trip the
    launcher's download.
  """
  names = sorted(sizes)
  return [
    name
    for name, following in zip(names, names[1:], strict=False)
    if name.endswith("/") and sizes[name] == 0 and following.startswith(name)
  ]


def remove_directory_markers(uri: str, client=None) -> List[str]:
  """Deletes the directory markers under a gs:// artifact (kubeflow/pipelines#13476).

  Args:
    uri: the artifact's URI; anything but gs:// is left alone.
    client: a `google.cloud.storage.Client` (default: one with the pod's
      credentials).

  Returns:
    The deleted object names.
  """
  if not uri.startswith("gs://"):
    return []
  from google.cloud import storage  # Only steps writing to GCS need it.

  bucket_name, _, prefix = uri[len("gs://") :].partition("/")
  bucket = (client or storage.Client()).bucket(bucket_name)
  prefix = prefix.rstrip("/") + "/"
  objects = {blob.name: blob.size for blob in bucket.list_blobs(prefix=prefix)}
  markers = directory_markers(objects)
  if markers:
    bucket.delete_blobs(markers)
    logging.info(
      "Deleted %d directory markers under %s (kubeflow/pipelines#13476).", len(markers), uri
    )
  return markers


def _remove_output_markers(executor_input: pipeline_spec_pb2.ExecutorInput) -> None:
  for key, artifact_list in executor_input.outputs.artifacts.items():
    for artifact in artifact_list.artifacts:
      try:
        remove_directory_markers(artifact.uri)
      except Exception as e:  # noqa: BLE001 - the step itself succeeded.
        logging.warning(
          "Could not delete the directory markers under output %r (%s): %s. Open-source KFP may "
          "fail to download it for the next step (kubeflow/pipelines#13476).",
          key,
          artifact.uri,
          e,
        )


def run(args: argparse.Namespace, beam_args: List[str]) -> None:
  """Runs the step: the pre-cache check if no driver ran, then TFX's entry point."""
  executor_input = pipeline_spec_pb2.ExecutorInput()
  json_format.Parse(
    args.json_serialized_invocation_args, executor_input, ignore_unknown_fields=True
  )
  adapted = adapt_executor_input(executor_input, json.loads(args.artifact_types))

  if args.pre_cache_check_module and not fileio.exists(adapted.outputs.output_file):
    # Open-source KFP did not run lifecycle.preCacheCheck; Vertex AI would have
    # written its result to the output metadata file by now.
    logging.info(
      "No driver output at %s: running %s.",
      adapted.outputs.output_file,
      args.pre_cache_check_module,
    )
    driver = importlib.import_module(args.pre_cache_check_module)
    driver.main(
      argparse.Namespace(
        json_serialized_invocation_args=json_format.MessageToJson(adapted),
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args,
      )
    )
    # TFX's executor reads the driver's parameters back from the file itself;
    # the output artifacts' properties (ExampleGen's span) are what Vertex AI
    # updates before it runs the executor.
    merge_driver_artifacts(adapted, adapted.outputs.output_file)

  kubeflow_v2_run_executor.main(
    (
      argparse.Namespace(
        executor_class_path=args.executor_class_path,
        json_serialized_invocation_args=json_format.MessageToJson(adapted),
        json_serialized_inputs_spec_args=args.json_serialized_inputs_spec_args,
      ),
      beam_args,
    )
  )
  _remove_output_markers(adapted)


def parse_flags(argv: Sequence[str]) -> Tuple[argparse.Namespace, List[str]]:
  """Parses the step's flags; the rest are the components' Beam pipeline args."""
  parser = argparse_flags.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--executor_class_path", required=True)
  parser.add_argument(
    "--json_serialized_invocation_args",
    required=True,
    help="The ExecutorInput as JSON (the launcher's {{$}}).",
  )
  parser.add_argument("--json_serialized_inputs_spec_args")
  parser.add_argument(
    "--artifact_types",
    required=True,
    help='JSON {"inputs": {key: class path}, "outputs": {key: class path}} of the step.',
  )
  parser.add_argument(
    "--pre_cache_check_module",
    help="The module of the step's lifecycle.preCacheCheck, run here when no driver ran.",
  )
  return parser.parse_known_args(list(argv)[1:])


def uses_s3(args: argparse.Namespace) -> bool:
  """Whether the step reads or writes s3:// URIs (artifacts or parameters such as input_base)."""
  return "s3://" in args.json_serialized_invocation_args


def main(parsed: Tuple[argparse.Namespace, List[str]]) -> None:
  args, beam_args = parsed
  if not uses_s3(args):
    run(args, beam_args)
    return
  # TensorFlow 2.16 has no s3:// filesystem of its own; tensorflow-io
  # registers it on import (configured by AWS_ACCESS_KEY_ID,
  # AWS_SECRET_ACCESS_KEY, AWS_REGION and, for MinIO, S3_ENDPOINT,
  # S3_USE_HTTPS=0, S3_VERIFY_SSL=0).
  import tensorflow_io  # noqa: F401

  run(args, beam_args)
  # tensorflow-io 0.37's S3 client aborts the interpreter at exit ("pure
  # virtual method called", exit status 134) after any s3:// access, which
  # the launcher would report as a failed step: the step is done, so leave
  # without running the exit handlers.
  sys.stdout.flush()
  sys.stderr.flush()
  logging.flush()
  os._exit(0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
