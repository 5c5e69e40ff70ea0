"""Tests of pipeline/kubeflow/entrypoint.py on ExecutorInputs shaped as the KFP backends send them.

Every compiled step running end to end is tests/pipeline/test_kubeflow_e2e.py.
"""

import os
import subprocess
import sys

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils
from tfx.types import standard_artifacts

from next_category.components.tflite_converter.component import TFLiteModel
from next_category.pipeline import configs
from next_category.pipeline.kubeflow import entrypoint as kfp_entrypoint

_TYPES = {
  "inputs": {"model": "tfx.types.standard_artifacts.Model"},
  "outputs": {"tflite_model": "next_category.components.tflite_converter.component.TFLiteModel"},
}


def _open_source_input():
  # As the open-source driver builds it: an upstream artifact named by its
  # MLMD id with an empty schema, the declared output typed by its compiled
  # title, and the launcher's executor-logs.
  return json_format.ParseDict(
    {
      "inputs": {
        "artifacts": {
          "model": {
            "artifacts": [
              {
                "name": "17",
                "uri": "gs://b/Trainer/1/model",
                "metadata": {"display_name": "model", "tfx_version": "1.16.0"},
                "type": {"instanceSchema": ""},
              }
            ]
          }
        }
      },
      "outputs": {
        "artifacts": {
          "tflite_model": {
            "artifacts": [
              {
                "name": "tflite_model",
                "uri": "gs://b/TFLiteConverter/2/tflite_model",
                "type": {"instanceSchema": "title: next_category.TFLiteModel\ntype: object\n"},
              }
            ]
          },
          "executor-logs": {
            "artifacts": [
              {
                "name": "executor-logs",
                "uri": "gs://b/TFLiteConverter/2/executor-logs",
                "type": {"schemaTitle": "system.Artifact"},
              }
            ]
          },
        },
        "outputFile": "/gcs/b/TFLiteConverter/2/output_metadata.json",
      },
    },
    pipeline_spec_pb2.ExecutorInput(),
  )


def test_tfx_alone_cannot_read_what_open_source_kfp_sends():
  executor_input = _open_source_input()
  with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
    kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(executor_input.inputs.artifacts)
  with pytest.raises(ImportError, match="next_category.TFLiteModel"):
    kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(executor_input.outputs.artifacts)


def test_adapted_input_has_the_steps_classes_and_no_launcher_outputs():
  executor_input = _open_source_input()
  adapted = kfp_entrypoint.adapt_executor_input(executor_input, _TYPES)
  inputs = kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(adapted.inputs.artifacts)
  outputs = kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(adapted.outputs.artifacts)
  (model,) = inputs["model"]
  assert type(model) is standard_artifacts.Model
  assert model.uri == "gs://b/Trainer/1/model"
  assert model.get_string_custom_property("tfx_version") == "1.16.0"
  assert set(outputs) == {"tflite_model"}
  assert type(outputs["tflite_model"][0]) is TFLiteModel
  assert adapted.outputs.output_file == executor_input.outputs.output_file
  # The launcher's input is left as it was.
  assert "executor-logs" in executor_input.outputs.artifacts


def test_typed_vertex_input_gets_the_same_classes():
  executor_input = _open_source_input()
  executor_input.inputs.artifacts["model"].artifacts[
    0
  ].type.instance_schema = "title: tfx.Model\ntype: object\n"
  del executor_input.outputs.artifacts["executor-logs"]
  adapted = kfp_entrypoint.adapt_executor_input(executor_input, _TYPES)
  inputs = kubeflow_v2_entrypoint_utils.parse_raw_artifact_dict(adapted.inputs.artifacts)
  assert type(inputs["model"][0]) is standard_artifacts.Model


def test_an_input_the_step_does_not_declare_is_an_error():
  with pytest.raises(ValueError, match="passed input artifact 'model', which this step does not"):
    kfp_entrypoint.adapt_executor_input(_open_source_input(), {"inputs": {}, "outputs": {}})


def test_merge_driver_artifacts_copies_the_span(tmp_path):
  executor_input = kfp_entrypoint.adapt_executor_input(_open_source_input(), _TYPES)
  path = tmp_path / "output_metadata.json"
  path.write_text(
    '{"artifacts": {"tflite_model": {"artifacts": [{"metadata": {"span": 3}}]}},'
    ' "parameterValues": {"span": 3}}'
  )
  kfp_entrypoint.merge_driver_artifacts(executor_input, str(path))
  (artifact,) = executor_input.outputs.artifacts["tflite_model"].artifacts
  assert dict(artifact.metadata) == {"span": 3.0}


def test_directory_markers_of_non_empty_directories_only():
  objects = {
    "p/model/": 0,
    "p/model/Format-Serving/": 0,
    "p/model/Format-Serving/saved_model.pb": 120,
    "p/model/Format-Serving/assets/": 0,
    "p/model/empty/": 0,
    "p/model/notes": 0,
  }
  assert kfp_entrypoint.directory_markers(objects) == ["p/model/", "p/model/Format-Serving/"]


class _Blob:
  def __init__(self, name, size):
    self.name, self.size = name, size


class _Bucket:
  """The two calls of google.cloud.storage.Bucket that remove_directory_markers makes."""

  def __init__(self, objects):
    self.objects = dict(objects)

  def list_blobs(self, prefix):
    return [_Blob(n, s) for n, s in sorted(self.objects.items()) if n.startswith(prefix)]

  def delete_blobs(self, names):
    for name in names:
      del self.objects[name]


class _Client:
  def __init__(self, buckets):
    self.buckets = buckets

  def bucket(self, name):
    return self.buckets[name]


def test_remove_directory_markers_under_a_gs_artifact():
  bucket = _Bucket(
    {
      "root/Trainer/1/model/": 0,
      "root/Trainer/1/model/saved_model.pb": 9,
      "root/Trainer/1/model_run/": 0,
      "root/Trainer/1/model_run/logs/events": 4,
    }
  )
  client = _Client({"bkt": bucket})
  removed = kfp_entrypoint.remove_directory_markers("gs://bkt/root/Trainer/1/model", client)
  assert removed == ["root/Trainer/1/model/"]
  assert "root/Trainer/1/model_run/" in bucket.objects
  assert kfp_entrypoint.remove_directory_markers("/local/dir", client) == []
  assert kfp_entrypoint.remove_directory_markers("s3://bkt/root", client) == []


_S3_STEP = """
import argparse, sys
import tensorflow as tf
from next_category.pipeline.kubeflow import entrypoint as kfp_entrypoint

def run(args, beam_args):
  # Registered by tensorflow-io, which main imports for a step with s3:// URIs.
  print("exists:", tf.io.gfile.exists("s3://next-category-test-bucket/pipeline"))

kfp_entrypoint.run = run
args = argparse.Namespace(json_serialized_invocation_args='{"inputs": {"parameterValues": '
                          '{"input_base": "s3://next-category-test-bucket/data"}}}')
kfp_entrypoint.main((args, []))
"""


# About a minute, most of it the AWS SDK waiting on lookups that cannot succeed
# here (it never reaches S3_ENDPOINT); hence the slow tier.
@pytest.mark.e2e
def test_a_step_using_s3_reads_it_and_exits_cleanly():
  env = {
    **os.environ,
    # Nothing answers: what matters is that s3:// is a filesystem and the
    # exit status.
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "S3_ENDPOINT": "127.0.0.1:9",
    "S3_USE_HTTPS": "0",
    "AWS_EC2_METADATA_DISABLED": "true",
  }
  result = subprocess.run(
    [sys.executable, "-c", _S3_STEP],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=configs.PROJECT_ROOT,
    env=env,
  )
  # tensorflow-io's S3 client aborts the interpreter at exit (status 134)
  # unless the entry point leaves first.
  assert result.returncode == 0, result.stderr[-2000:]
  assert "exists: False" in result.stdout
