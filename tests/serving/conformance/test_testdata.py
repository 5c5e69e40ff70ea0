"""The rebuilt TensorFlow Serving test models have upstream's layout and signatures."""

import os

import tensorflow as tf

from next_category.serving.testdata import make_tfs_testdata


def test_every_model_has_upstream_versions(tfs_testdata):
  for name in make_tfs_testdata.BUILDERS:
    versions = sorted(os.listdir(tfs_testdata / name))
    expected = ["00000123", "00000124"] if name.endswith("2_versions") else ["00000123"]
    assert versions == expected, name


def test_half_plus_two_serving_default_signature(tfs_testdata):
  # servables/tensorflow/testdata/saved_model_half_plus_two_cpu: x [-1, 1] -> y [-1, 1].
  export_dir = str(tfs_testdata / "saved_model_half_plus_two_cpu" / "00000123")
  with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
    signature = meta_graph.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert [d.size for d in signature.inputs["x"].tensor_shape.dim] == [-1, 1]
    y = sess.run(signature.outputs["y"].name, {signature.inputs["x"].name: [[1.0], [2.0]]})
  assert y.tolist() == [[2.5], [3.0]]
