"""Model formats as TensorFlow Serving 2.16 loads them: TF1 and TF2 SavedModels, tags, TFLite.

Upstream: model_servers/tensorflow_model_server_test.py, servables/tensorflow/
saved_model_bundle_factory.cc, tflite_session.cc, TensorFlow's LoadSavedModel,
and the signatures the test models were exported with
(servables/tensorflow/testdata/saved_model_half_plus_two.py).
"""

import os

import portpicker
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.python.saved_model import signature_constants
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import model_service_pb2_grpc

from next_category.serving import model_server
from next_category.serving.config import flags
from next_category.serving.models import loader
from tests.serving.conformance.conftest import RPC_TIMEOUT
from tests.serving.conformance.conftest import model_flags
from tests.serving.conformance.conftest import predict_request
from tests.serving.conformance.conftest import values


def _metadata(server, model_name="default"):
  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = model_name
  response = server.stub.GetModelMetadata(request, timeout=RPC_TIMEOUT)
  signatures = get_model_metadata_pb2.SignatureDefMap()
  response.metadata["signature_def"].Unpack(signatures)
  return response, signatures.signature_def


def _shape(info):
  return [d.size for d in info.tensor_shape.dim]


def test_get_model_status(tfs_server):
  # tensorflow_model_server_test.py:97-114 (testGetModelStatus).
  server = tfs_server(*model_flags("default", "saved_model_half_plus_two_cpu"))
  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = "default"
  response = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(
    request, timeout=RPC_TIMEOUT
  )
  [version_status] = response.model_version_status
  assert version_status.version == 123
  assert version_status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
  assert version_status.status.error_code == 0


def test_tf1_saved_model_metadata(tfs_server):
  # tensorflow_model_server_test.py:116-135 (testGetModelMetadata), and the TF1
  # signature map of saved_model_half_plus_two.py:368-379 as the bundle holds it.
  server = tfs_server(*model_flags("default", "saved_model_half_plus_two_cpu"))
  response, signatures = _metadata(server)
  assert response.model_spec.name == "default"
  assert response.model_spec.version.value == 123
  assert not response.model_spec.signature_name
  assert list(response.metadata) == ["signature_def"]
  table = {
    key: (
      sig.method_name.rsplit("/", 1)[1],
      {a: (i.name, i.dtype) for a, i in sig.inputs.items()},
      {a: i.name for a, i in sig.outputs.items()},
    )
    for key, sig in signatures.items()
  }
  string, floating = types_pb2.DT_STRING, types_pb2.DT_FLOAT
  assert table == {
    "serving_default": ("predict", {"x": ("x:0", floating)}, {"y": "y:0"}),
    "classify_x_to_y": ("classify", {"inputs": ("tf_example:0", string)}, {"scores": "y:0"}),
    "regress_x_to_y": ("regress", {"inputs": ("tf_example:0", string)}, {"outputs": "y:0"}),
    "regress_x_to_y2": ("regress", {"inputs": ("tf_example:0", string)}, {"outputs": "y2:0"}),
    "regress_x2_to_y3": ("regress", {"inputs": ("x2:0", floating)}, {"outputs": "y3:0"}),
  }
  assert _shape(signatures["serving_default"].inputs["x"]) == [-1, 1]


def test_tf2_saved_model_metadata_lists_the_init_op(tfs_server):
  # testdata/saved_model_half_plus_two_tf2_2_versions_metadata.json:226-239: a TF2
  # bundle's signature defs include __saved_model_init_op.
  server = tfs_server(*model_flags("default", "saved_model_half_plus_two_tf2_cpu"))
  _, signatures = _metadata(server)
  assert sorted(signatures) == [
    "__saved_model_init_op",
    "classify_x2_to_y3",
    "classify_x_to_y",
    "regress_x2_to_y3",
    "regress_x_to_y",
    "regress_x_to_y2",
    "serving_default",
  ]
  assert signatures["serving_default"].inputs["x"].name == "serving_default_x:0"


def _start_failure(tmp_path, *argv) -> str:
  """The error a server started with `argv` fails with (no load retries)."""
  port = portpicker.pick_unused_port()
  options = flags.parse_flags([f"--port={port}", "--max_num_load_retries=0", *argv])
  server = model_server.ModelServer(options)
  with pytest.raises(loader.NoServableVersionError) as raised:
    server.start()
  server.stop()
  return str(raised.value)


def test_saved_model_tags(tfs_server, tfs_testdata, tmp_path):
  # saved_model_bundle_factory.cc:121-127 (--saved_model_tags, "serve" when empty) and
  # TensorFlow's FindMetaGraphDef (tensorflow/cc/saved_model/reader.cc): the tag set must
  # equal a MetaGraphDef's, else NOT_FOUND with this text.
  base = f"--model_base_path={tfs_testdata}/saved_model_half_plus_two_cpu"
  server = tfs_server("--model_name=default", base, "--saved_model_tags=serve")
  response = server.stub.Predict(predict_request(), timeout=RPC_TIMEOUT)
  assert list(response.outputs["y"].float_val) == [3.0]
  for tags, shown in (("gpu", "gpu"), ("serve,gpu", "gpu serve")):
    message = _start_failure(tmp_path, "--model_name=default", base, f"--saved_model_tags={tags}")
    assert (
      f"Could not find meta graph def matching supplied tags: {{ {shown} }}. To inspect "
      "available tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`"
    ) in message


def test_directory_without_a_model(tmp_path):
  # session_bundle/oss/session_bundle_util.cc:55-78 (LoadSessionBundleOrSavedModelBundle).
  version = tmp_path / "model" / "123"
  version.mkdir(parents=True)
  message = _start_failure(
    tmp_path, "--model_name=default", f"--model_base_path={tmp_path / 'model'}"
  )
  assert (
    "Specified file path does not appear to contain a SavedModel bundle (should have a file "
    f"called `saved_model.pb`)\nSpecified file path: {version}"
  ) in message


def test_session_bundle_is_refused(tmp_path):
  # session_bundle/oss/session_bundle_util.cc:62-66 (upstream's bad_half_plus_two has
  # export, export.meta and checkpoint files).
  version = tmp_path / "model" / "123"
  version.mkdir(parents=True)
  (version / "export.meta").write_bytes(b"")
  message = _start_failure(
    tmp_path, "--model_name=default", f"--model_base_path={tmp_path / 'model'}"
  )
  assert "Session Bundle is deprecated and removed." in message


@pytest.mark.parametrize(
  "testdata_model, input_name",
  [
    # tensorflow_model_server_test.py:615-623 (testPredictOnTfLite): no SignatureDef, so
    # tflite_session.cc:486-500 generates serving_default keyed by tensor names.
    ("saved_model_half_plus_two_tflite", "x"),
    # tensorflow_model_server_test.py:625-633 (testPredictWithSignatureDefOnTfLite):
    # signature_defs_metadata; tflite_session.cc:464-485 fixes "tflite_input:0" up to
    # the tensor "tflite_input".
    ("saved_model_half_plus_two_tflite_with_sigdef", "tflite_input"),
  ],
)
def test_tflite(tfs_server, testdata_model, input_name):
  server = tfs_server(*model_flags("default", testdata_model), "--prefer_tflite_model=true")
  response = server.stub.Predict(predict_request(output_filter=()), timeout=RPC_TIMEOUT)
  assert list(response.outputs["y"].float_val) == [3.0]
  assert response.model_spec.signature_name == "serving_default"
  _, signatures = _metadata(server)
  [key] = signatures
  signature = signatures[key]
  assert key == "serving_default"
  assert signature.method_name == "tensorflow/serving/predict"
  assert {a: i.name for a, i in signature.inputs.items()} == {"x": input_name}
  assert {a: i.name for a, i in signature.outputs.items()} == {"y": "y"}
  assert signature.inputs["x"].dtype == types_pb2.DT_FLOAT
  # The input is resized to what is fed (tflite_session.cc:187-229).
  response = server.stub.Predict(
    predict_request(x=[1.0, 2.0, 5.0], shape=(3, 1), output_filter=()), timeout=RPC_TIMEOUT
  )
  assert values(response.outputs["y"]).tolist() == [[2.5], [3.0], [4.5]]


def test_tflite_with_sigdef_reports_the_stored_shapes(tfs_server):
  # tflite_session.cc:464-485: the stored SignatureDef as it is, names fixed up.
  server = tfs_server(
    *model_flags("default", "saved_model_half_plus_two_tflite_with_sigdef"),
    "--prefer_tflite_model=true",
  )
  _, signatures = _metadata(server)
  assert _shape(signatures["serving_default"].inputs["x"]) == [1, 1]


def _serve_new_model(tfs_server, tmp_path, save):
  base_path = tmp_path / "model"
  save(str(base_path / "00000123"))
  return tfs_server("--model_name=default", f"--model_base_path={base_path}")


def test_tf_saved_model_save(tfs_server, tmp_path):
  # tensorflow_model_server_test.py:635-652.
  def save(export_path):
    root = tf.train.Checkpoint()
    root.v1 = tf.Variable(3.0)
    root.v2 = tf.Variable(2.0)
    root.f = tf.function(lambda x: {"y": root.v1 * root.v2 * x})
    to_save = root.f.get_concrete_function(tf.TensorSpec(None, tf.float32))
    tf.saved_model.save(  # Upstream: the 2.x alias tf.saved_model.experimental.save.
      root, export_path, to_save
    )

  server = _serve_new_model(tfs_server, tmp_path, save)
  response = server.stub.Predict(predict_request(output_filter=()), timeout=RPC_TIMEOUT)
  assert list(response.outputs["y"].float_val) == [12.0]
  assert response.model_spec.version.value == 123


def test_tf_saved_model_save_multiple_signatures(tfs_server, tmp_path):
  # tensorflow_model_server_test.py:654-678.
  def save(export_path):
    root = tf.train.Checkpoint()
    root.f = tf.function(lambda x: {"y": 1.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    root.g = tf.function(lambda x: {"y": 2.0}, input_signature=[tf.TensorSpec(None, tf.float32)])
    tf.saved_model.save(  # Upstream: the 2.x alias tf.saved_model.experimental.save.
      root,
      export_path,
      signatures={
        signature_constants.DEFAULT_SERVING_SIGNATURE_DEF_KEY: root.f,
        "custom_signature_key": root.g,
      },
    )

  server = _serve_new_model(tfs_server, tmp_path, save)
  for signature_name, expected in (("custom_signature_key", 2.0), ("serving_default", 1.0)):
    request = predict_request(signature_name=signature_name)
    response = server.stub.Predict(request, timeout=RPC_TIMEOUT)
    assert list(response.outputs["y"].float_val) == [expected]


def test_sequential_keras_saved_model_save(tfs_server, tmp_path):
  # tensorflow_model_server_test.py:680-702: batch_input, no filter, output alias y.
  def save(export_path):
    model = tf.keras.models.Sequential()
    model.add(tf.keras.layers.Input(dtype="float32", shape=(1,), name="x"))
    model.add(tf.keras.layers.Lambda(lambda x: x, name="y"))
    tf.saved_model.save(model, export_path)

  server = _serve_new_model(tfs_server, tmp_path, save)
  response = server.stub.Predict(
    predict_request(shape=(1, 1), output_filter=()), timeout=RPC_TIMEOUT
  )
  assert list(response.outputs) == ["y"]
  assert list(response.outputs["y"].float_val) == [2.0]


def test_tf1_init_ops_run_at_load(tfs_testdata):
  # LoadSavedModel runs the init op of saved_model_main_op (half_plus_two_cpu,
  # saved_model_half_plus_two.py:399-404) or of the legacy_init_op collection
  # (half_plus_three, a TF 1.0 export): it assigns the asset's file name to
  # filename_tensor, which is uninitialised otherwise.
  for model, collection in (
    ("saved_model_half_plus_two_cpu", "saved_model_main_op"),
    ("saved_model_half_plus_three", "legacy_init_op"),
  ):
    export_dir = os.path.join(tfs_testdata, model, "00000123")
    servable = loader.load_servable("m", 123, export_dir)
    assert servable.run(("filename_tensor:0",), {}) == {"filename_tensor:0": b"foo.txt"}
    graph = servable._session.session.graph  # pylint: disable=protected-access
    assert graph.get_collection(collection), model
