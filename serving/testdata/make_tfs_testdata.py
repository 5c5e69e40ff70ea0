"""Builds TensorFlow Serving 2.16's small test models and configs, for the conformance tier.

TensorFlow Serving's own end-to-end tests (tensorflow_model_server_test.py) serve
the models in tensorflow_serving/servables/tensorflow/testdata/ at tag 2.16.1.
Their files may not be checked in here, so this script rebuilds equivalents with
TensorFlow 2.16, written from their description in TensorFlow Serving's sources:
the same tags, SignatureDefs, tensor names, variables, assets, init ops
(main_op / legacy_init_op), TFLite tensors and signature metadata, under the
same directory names. Each was compared with the upstream file on signature
defs and outputs; graph internals (op versions, node names) may differ.

    python -m next_category.serving.testdata.make_tfs_testdata OUT_DIR [--only NAME ...]

Layout written under OUT_DIR (the upstream names):
  saved_model_half_plus_two_cpu/00000123/
  saved_model_half_plus_two_tf2_cpu/00000123/
  saved_model_half_plus_three/00000123/
  saved_model_half_plus_two_2_versions/{00000123,00000124}/
  saved_model_counter/00000123/
  saved_model_half_plus_two_tflite/00000123/model.tflite
  saved_model_half_plus_two_tflite_with_sigdef/00000123/model.tflite
  good_model_config.txt   (base paths resolved to OUT_DIR)
  bad_model_config.txt, batching_config.txt, monitoring_config.txt
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402

v1 = tf.compat.v1
VERSION = "00000123"
ASSET_NAME = "foo.txt"
ASSET_TEXT = "asset-file-contents"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


def _scalar_var(value, name, dtype=tf.float32):
  # use_resource=False gives a VariableV2 (ref) variable, as TF1 exports have.
  return v1.Variable(value, name=name, dtype=dtype, use_resource=False)


def _info(tensor):
  return v1.saved_model.utils.build_tensor_info(tensor)


def _sig(inputs, outputs, method):
  return v1.saved_model.signature_def_utils.build_signature_def(
    {k: _info(t) for k, t in inputs.items()},
    {k: _info(t) for k, t in outputs.items()},
    method,
  )


def _bare_info(name, dtype):
  """TensorInfo with name and dtype only (no tensor_shape), as TF 1.0 wrote."""
  info = meta_graph_pb2.TensorInfo()
  info.name = name
  info.dtype = dtype.as_datatype_enum
  return info


def _asset_ops(tmp):
  """Asset file in ASSET_FILEPATHS and a filename variable assigned at init."""
  src_dir = os.path.join(tmp, "original", "export", "assets")
  os.makedirs(src_dir, exist_ok=True)
  src = os.path.join(src_dir, ASSET_NAME)
  with open(src, "w") as f:
    f.write(ASSET_TEXT)
  path_t = tf.constant(src)
  v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, path_t)
  fname = v1.Variable(
    ASSET_NAME, name="filename_tensor", trainable=False, collections=[], use_resource=False
  )
  return fname.assign(ASSET_NAME)


def _parse(serialized, with_x2=True):
  spec = {"x": v1.FixedLenFeature([1], dtype=tf.float32)}
  if with_x2:
    spec["x2"] = v1.FixedLenFeature([1], dtype=tf.float32, default_value=[0.0])
  feats = v1.parse_example(serialized, spec)
  # TF 1.x inferred [-1, 1] from an unknown-rank input; ParseExampleV2 infers
  # nothing there, so restore the static shape the signatures recorded.
  for t in feats.values():
    t.set_shape([None, 1])
  return feats


def _save_v1(export_dir, sess, sigs, *, main_op=None, legacy_init_op=None):
  builder = v1.saved_model.Builder(export_dir)
  if legacy_init_op is not None:
    # The builder only writes main_op; the 2017-era exports carry the init op
    # in the deprecated 'legacy_init_op' collection instead.
    v1.add_to_collection(v1.saved_model.constants.LEGACY_INIT_OP_KEY, legacy_init_op)
  builder.add_meta_graph_and_variables(
    sess,
    [tf.saved_model.SERVING],
    signature_def_map=sigs,
    assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS),
    main_op=main_op,
  )
  builder.save()


def build_half_plus_two_cpu(export_dir):
  """TF1 half_plus_two as in saved_model_half_plus_two_cpu (TF 1.14 era, main_op)."""
  with tf.Graph().as_default(), v1.Session() as sess, tempfile.TemporaryDirectory() as tmp:
    a = _scalar_var(0.5, "a")
    b = _scalar_var(2.0, "b")
    c = _scalar_var(3.0, "c")
    serialized = v1.placeholder(tf.string, name="tf_example")  # unknown rank
    feats = _parse(serialized)
    x = tf.identity(feats["x"], name="x")
    y = tf.identity(a * x + b, name="y")
    y2 = tf.identity(a * x + c, name="y2")
    x2 = tf.identity(feats["x2"], name="x2")
    a2 = _scalar_var(0.5, "a2")
    c2 = _scalar_var(3.0, "c2")
    y3 = tf.identity(a2 * x2 + c2, name="y3")
    assign = _asset_ops(tmp)
    sigs = {
      "regress_x_to_y": _sig({"inputs": serialized}, {"outputs": y}, REGRESS),
      "regress_x_to_y2": _sig({"inputs": serialized}, {"outputs": y2}, REGRESS),
      "regress_x2_to_y3": _sig({"inputs": x2}, {"outputs": y3}, REGRESS),
      "classify_x_to_y": _sig({"inputs": serialized}, {"scores": y}, CLASSIFY),
      "serving_default": _sig({"x": x}, {"y": y}, PREDICT),
    }
    sess.run(v1.global_variables_initializer())
    _save_v1(export_dir, sess, sigs, main_op=tf.group(assign))


def build_half_plus_two_v1_2017(export_dir):
  """TF1 half_plus_two as in saved_model_half_plus_two_2_versions (TF 1.1 era)."""
  with tf.Graph().as_default(), v1.Session() as sess, tempfile.TemporaryDirectory() as tmp:
    a = _scalar_var(0.5, "a")
    b = _scalar_var(2.0, "b")
    c = _scalar_var(3.0, "c")
    serialized = v1.placeholder(tf.string, name="tf_example")
    feats = _parse(serialized)
    x = tf.identity(feats["x"], name="x")
    y = tf.add(a * x, b, name="y")
    y2 = tf.add(a * x, c, name="y2")
    x2 = tf.identity(feats["x2"], name="x2")
    y3 = tf.add(a * x2, c, name="y3")
    assign = _asset_ops(tmp)
    sigs = {
      "regress_x_to_y": _sig({"inputs": serialized}, {"outputs": y}, REGRESS),
      "regress_x_to_y2": _sig({"inputs": serialized}, {"outputs": y2}, REGRESS),
      "regress_x2_to_y3": _sig({"inputs": x2}, {"outputs": y3}, REGRESS),
      "classify_x_to_y": _sig({"inputs": serialized}, {"scores": y}, CLASSIFY),
      "classify_x2_to_y3": _sig({"inputs": x2}, {"scores": y3}, CLASSIFY),
      "serving_default": _sig({"x": x}, {"y": y}, PREDICT),
    }
    sess.run(v1.global_variables_initializer())
    _save_v1(export_dir, sess, sigs, legacy_init_op=tf.group(assign))


def build_half_plus_three(export_dir):
  """TF1 half_plus_three (TF 1.0 era): shapeless TensorInfos, legacy_init_op."""
  with tf.Graph().as_default(), v1.Session() as sess, tempfile.TemporaryDirectory() as tmp:
    a = _scalar_var(0.5, "a")
    b = _scalar_var(3.0, "b")
    c = _scalar_var(3.0, "c")
    serialized = v1.placeholder(tf.string, name="tf_example")
    feats = _parse(serialized, with_x2=False)
    x = tf.identity(feats["x"], name="x")
    y = tf.add(a * x, b, name="y")
    x2 = v1.placeholder(tf.float32, name="x2")
    tf.add(a * x2, c, name="y2")
    assign = _asset_ops(tmp)
    out = tf.identity(y, name="Identity")
    sigs = {
      "serving_default": v1.saved_model.signature_def_utils.build_signature_def(
        {"x": _bare_info(x.name, tf.float32)},
        {"y": _bare_info(y.name, tf.float32)},
        PREDICT,
      ),
      # Upstream declares this input as DT_FLOAT although tf_example is a
      # string placeholder; Regress feeds serialized Examples to it anyway.
      REGRESS: v1.saved_model.signature_def_utils.build_signature_def(
        {"inputs": _bare_info(serialized.name, tf.float32)},
        {"outputs": _bare_info(out.name, tf.float32)},
        REGRESS,
      ),
    }
    sess.run(v1.global_variables_initializer())
    _save_v1(export_dir, sess, sigs, legacy_init_op=tf.group(assign))


def build_counter(export_dir):
  """TF1 counter: stateful signatures over one ref variable (outputs DT_FLOAT_REF)."""
  with tf.Graph().as_default(), v1.Session() as sess:
    counter = _scalar_var(0.0, "counter")
    with tf.name_scope("incr_counter_op"):
      incr = v1.assign_add(counter, 1.0)
    delta = v1.placeholder(tf.float32, name="delta")
    with tf.name_scope("incr_counter_by_op"):
      incr_by = v1.assign_add(counter, delta)
    with tf.name_scope("reset_counter_op"):
      reset = v1.assign(counter, 0.0)
    sess.run(v1.global_variables_initializer())
    sigs = {
      "get_counter": _sig({}, {"output": counter._ref()}, PREDICT),  # noqa: SLF001
      "incr_counter": _sig({}, {"output": incr}, PREDICT),
      "incr_counter_by": _sig({"delta": delta}, {"output": incr_by}, PREDICT),
      "reset_counter": _sig({}, {"output": reset}, PREDICT),
    }
    builder = v1.saved_model.Builder(export_dir)
    builder.add_meta_graph_and_variables(sess, [tf.saved_model.SERVING], signature_def_map=sigs)
    builder.save()


class _HalfPlusTwo(tf.Module):
  """Native TF2 half_plus_two: y = a*x + b (a=0.5, b=2, c=3) and an asset."""

  def __init__(self, asset_path):
    super().__init__()
    self.a = tf.Variable(0.5, name="a")
    self.b = tf.Variable(2.0, name="b")
    self.c = tf.Variable(3.0, name="c")
    self.asset = tf.saved_model.Asset(asset_path)

  def _x(self, serialized):
    return tf.io.parse_example(
      serialized,
      {
        "x": tf.io.FixedLenFeature([1], tf.float32),
        "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
      },
    )["x"]

  @tf.function(input_signature=[tf.TensorSpec([1], tf.float32)])
  def predict(self, x):
    return {"y": self.a * x + self.b}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def regress_xy(self, serialized):
    return {"outputs": self.a * self._x(serialized) + self.b}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def regress_xy2(self, serialized):
    return {"outputs": self.a * self._x(serialized) + self.c}

  @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
  def regress_x2y3(self, x2):
    return {"outputs": self.a * x2 + self.c}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
  def classify_xy(self, serialized):
    return {"scores": self.a * self._x(serialized) + self.b}

  @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="inputs")])
  def classify_x2y3(self, x2):
    return {"scores": self.a * x2 + self.c}


def build_half_plus_two_tf2(export_dir):
  with tempfile.TemporaryDirectory() as tmp:
    src = os.path.join(tmp, ASSET_NAME)
    with open(src, "w") as f:
      f.write(ASSET_TEXT)
    m = _HalfPlusTwo(src)
    sigs = {
      "regress_x_to_y": m.regress_xy,
      "regress_x_to_y2": m.regress_xy2,
      "regress_x2_to_y3": m.regress_x2y3,
      "classify_x_to_y": m.classify_xy,
      "classify_x2_to_y3": m.classify_x2y3,
      "serving_default": m.predict,
    }
    tf.saved_model.save(m, export_dir, signatures=sigs)


def _tflite_bytes(input_name):
  """Frozen y = a*x + b with x [1,1]; TFLite input tensor `input_name`, output 'y'."""
  with tf.Graph().as_default(), v1.Session() as sess:
    a = _scalar_var(0.5, "a")
    b = _scalar_var(2.0, "b")
    x = v1.placeholder(tf.float32, shape=[1, 1], name=input_name)
    y = tf.identity(tf.add(tf.multiply(a, x), b), name="y")
    sess.run(v1.global_variables_initializer())
    conv = v1.lite.TFLiteConverter.from_session(sess, [x], [y])
    return conv.convert()


def _fix_tflite(buf, input_name, sigdef=None):
  """Name tensors like upstream, drop native SignatureDefs, add sigdef metadata."""
  from flatbuffers import flexbuffers
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils

  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(buf))
  sub = model.subgraphs[0]
  assert len(sub.inputs) == 1 and len(sub.outputs) == 1
  sub.tensors[sub.inputs[0]].name = input_name.encode()
  sub.tensors[sub.outputs[0]].name = b"y"
  # TF Serving 2.16 ignores native SignatureDefs (it reads only the
  # 'signature_defs_metadata' entry); upstream's files carry none.
  model.signatureDefs = []
  model.metadata = [m for m in (model.metadata or []) if m.name != b"signature_defs_metadata"]
  if sigdef is not None:
    data = sigdef.SerializeToString()
    # The C++ reader takes the value with c_str(): it must hold no NUL byte.
    assert b"\x00" not in data and data.isascii(), data
    fbb = flexbuffers.Builder()
    with fbb.Map():
      fbb.Key("serving_default")
      fbb.String(data.decode("ascii"))
    blob = fbb.Finish()
    buffer = schema.BufferT()
    buffer.data = list(blob)
    model.buffers.append(buffer)
    meta = schema.MetadataT()
    meta.name = b"signature_defs_metadata"
    meta.buffer = len(model.buffers) - 1
    model.metadata.append(meta)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _shape_info(name):
  info = meta_graph_pb2.TensorInfo(name=name, dtype=tf.float32.as_datatype_enum)
  info.tensor_shape.dim.add().size = 1
  info.tensor_shape.dim.add().size = 1
  return info


def build_tflite(export_dir, with_sigdef):
  os.makedirs(export_dir, exist_ok=True)
  if with_sigdef:
    sigdef = meta_graph_pb2.SignatureDef(method_name=PREDICT)
    sigdef.inputs["x"].CopyFrom(_shape_info("tflite_input:0"))
    sigdef.outputs["y"].CopyFrom(_shape_info("y:0"))
    buf = _fix_tflite(_tflite_bytes("tflite_input"), "tflite_input", sigdef)
  else:
    buf = _fix_tflite(_tflite_bytes("x"), "x")
  with open(os.path.join(export_dir, "model.tflite"), "wb") as f:
    f.write(buf)


def write_configs(root):
  files = {
    "good_model_config.txt": (
      "model_config_list: {\n"
      "  config: {\n"
      '    name: "half_plus_two",\n'
      f'    base_path: "{root}/saved_model_half_plus_two_cpu",\n'
      '    model_platform: "tensorflow"\n'
      "  },\n"
      "  config: {\n"
      '    name: "half_plus_three",\n'
      f'    base_path: "{root}/saved_model_half_plus_three",\n'
      '    model_platform: "tensorflow"\n'
      "  }\n"
      "}\n"
    ),
    # Not a text-format ModelServerConfig (upstream's has no trailing newline).
    "bad_model_config.txt": "improperly formatted file",
    "batching_config.txt": (
      "max_batch_size { value: 128 }\n"
      "batch_timeout_micros { value: 0 }\n"
      "max_enqueued_batches { value: 1000000 }\n"
      "num_batch_threads { value: 8 }\n"
    ),
    "monitoring_config.txt": (
      'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n'
    ),
  }
  for name, text in files.items():
    with open(os.path.join(root, name), "w") as f:
      f.write(text)


BUILDERS = {
  "saved_model_half_plus_two_cpu": lambda d: build_half_plus_two_cpu(os.path.join(d, VERSION)),
  "saved_model_half_plus_two_tf2_cpu": lambda d: build_half_plus_two_tf2(os.path.join(d, VERSION)),
  "saved_model_half_plus_three": lambda d: build_half_plus_three(os.path.join(d, VERSION)),
  "saved_model_half_plus_two_2_versions": lambda d: [
    build_half_plus_two_v1_2017(os.path.join(d, v)) for v in (VERSION, "00000124")
  ],
  "saved_model_counter": lambda d: build_counter(os.path.join(d, VERSION)),
  "saved_model_half_plus_two_tflite": lambda d: build_tflite(os.path.join(d, VERSION), False),
  "saved_model_half_plus_two_tflite_with_sigdef": lambda d: build_tflite(
    os.path.join(d, VERSION), True
  ),
}


def generate(out_root, only=None):
  out_root = os.path.abspath(out_root)
  os.makedirs(out_root, exist_ok=True)
  timings = {}
  for name, build in BUILDERS.items():
    if only and name not in only:
      continue
    target = os.path.join(out_root, name)
    if os.path.exists(target):
      shutil.rmtree(target)
    start = time.perf_counter()
    build(target)
    timings[name] = time.perf_counter() - start
  write_configs(out_root)
  return timings


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("out_dir")
  parser.add_argument("--only", nargs="*", choices=sorted(BUILDERS))
  args = parser.parse_args(argv)
  start = time.perf_counter()
  timings = generate(args.out_dir, args.only)
  for name, secs in timings.items():
    print(f"{name:48s} {secs:6.2f} s")
  print(f"{'total (after import)':48s} {time.perf_counter() - start:6.2f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
