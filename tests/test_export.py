"""Export (kd_jax/export/): ONNX files that compute the JAX student's function, and their reports."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core.errors import ConfigError
from kd_jax.export import litert_format, measure, onnx_format
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import _cli, _run_cli

pytest.importorskip("jax2onnx")
pytest.importorskip("onnxruntime")


def _images(n, shape=(28, 28, 1), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape)).astype(np.uint8)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_an_exported_classifier_takes_uint8_images_of_any_batch(name, tmp_path):
  model = models.create(name, num_classes=10, rngs=nnx.Rngs(0))
  # The normalisation is part of the exported function (DESIGN §5.7).
  function = lambda images: model((images.astype(jnp.float32) / 255.0 - 0.5) / 0.25)
  path = str(tmp_path / f"{name}.onnx")
  onnx_format.export(function, (28, 28, 1), path)
  session = onnx_format.session(path)
  (inputs,) = session.get_inputs()
  assert inputs.type == "tensor(uint8)" and inputs.shape[0] == "B"
  for batch in (1, 7):
    images = _images(batch)
    got = session.run(None, {inputs.name: images})[0]
    np.testing.assert_allclose(got, function(jnp.asarray(images)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_a_litert_classifier_computes_the_jax_function(name, tmp_path):
  pytest.importorskip("tensorflow")
  pytest.importorskip("ai_edge_litert")
  model = models.create(name, num_classes=10, rngs=nnx.Rngs(0))
  function = lambda images: model((images.astype(jnp.float32) / 255.0 - 0.5) / 0.25)
  path = str(tmp_path / f"{name}.tflite")
  litert_format.export(function, (28, 28, 1), path)
  run = litert_format.Runner(path)
  for batch in (1, 5):
    images = _images(batch, seed=batch)
    np.testing.assert_allclose(run(images), function(jnp.asarray(images)), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_an_exported_gpt_computes_the_logits_of_token_rows(fmt, tmp_path):
  if fmt == "tflite":
    pytest.importorskip("tensorflow")
    pytest.importorskip("ai_edge_litert")
  model = models.create("gpt", vocab_size=19, max_len=16, num_layers=2, num_heads=2, dim=32,
                        rngs=nnx.Rngs(1))
  path, function = str(tmp_path / f"gpt.{fmt}"), lambda tokens: model(tokens)
  if fmt == "onnx":
    onnx_format.export(function, (16,), path, "int32")
    run = onnx_format.runner(path)
  else:
    litert_format.export(function, (16,), path, input_dtype="int32")
    run = litert_format.Runner(path)
  for batch in (1, 3):
    tokens = np.random.default_rng(batch).integers(0, 19, (batch, 16)).astype(np.int32)
    np.testing.assert_allclose(run(tokens), model(jnp.asarray(tokens)), atol=1e-4, rtol=1e-4)


def test_an_export_leaves_jax_numpy_as_it_found_it(tmp_path):
  """jax2onnx replaces jnp.cumsum with a keyword-only version while it converts."""
  before = {name: getattr(jnp, name) for name in dir(jnp) if not name.startswith("_")}
  path = str(tmp_path / "cumsum.onnx")
  onnx_format.export(lambda x: jnp.cumsum(x.astype(jnp.float32), axis=1), (3,), path, "int32")
  np.testing.assert_array_equal(jnp.cumsum(jnp.arange(3), 0), [0, 1, 3])   # positional axis
  assert [name for name, fn in before.items() if getattr(jnp, name) is not fn] == []
  tokens = np.array([[1, 2, 3]], np.int32)
  np.testing.assert_allclose(onnx_format.runner(path)(tokens), [[1, 3, 6]])


def test_an_operation_without_conversion_is_named_not_a_traceback(tmp_path):
  gram = lambda x: x.astype(jnp.float32)[..., 0] @ x.astype(jnp.float32)[..., 0].swapaxes(1, 2)
  with pytest.raises(ConfigError, match="no ONNX conversion in jax2onnx: eigh"):
    onnx_format.export(lambda x: jnp.linalg.eigh(gram(x))[0], (4, 4, 1), str(tmp_path / "e.onnx"))


def test_a_litert_refusal_names_the_operation_without_the_converter_dump(tmp_path, capfd):
  pytest.importorskip("tensorflow")
  # Indexing under a symbolic batch lowers to a gather the LiteRT converter refuses.
  function = lambda tokens: tokens.astype(jnp.float32)[..., 2:] * 2.0
  with pytest.raises(ConfigError, match="refused an operation of this student: "
                                        "'vhlo.dynamic_gather_v1' op"):
    litert_format.export(function, (3, 4), str(tmp_path / "g.tflite"), input_dtype="int32")
  assert "loc(" not in capfd.readouterr().err       # the MLIR diagnostics stay captured


def test_parity_compares_logits_argmax_and_accuracy():
  reference = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  exported = np.array([[2.0, 1.5], [0.5, 0.0], [1.0, 0.0]])
  p = measure.parity(reference, exported, labels=np.array([0, 1, 1]))
  assert p["max_abs_logit_difference"] == 3.0
  assert p["top1_agreement"] == pytest.approx(2 / 3)
  assert p["jax_accuracy"] == pytest.approx(2 / 3) and p["exported_accuracy"] == pytest.approx(1 / 3)
  assert p["accuracy_change"] == pytest.approx(-1 / 3)


@needs_fashion_mnist
@pytest.mark.slow
def test_export_cli_writes_the_student_and_its_report(tmp_path):
  _, results = _run_cli(tmp_path, "kd")
  workdir = tmp_path / "kd"
  for fmt, quantize in (("onnx", "none"), ("onnx", "int8"), ("tflite", "none")):
    out = _cli(f"--workdir={workdir}", f"--format={fmt}", f"--quantize={quantize}",
               module="kd_jax.export")
    assert out.returncode == 0, out.stderr[-3000:]
  with open(workdir / "export" / "report.json") as f:
    report = json.load(f)
  fp32, int8 = report["student.onnx"], report["student.int8.onnx"]
  # The export computes the trained student: its accuracy is the run's own.
  assert fp32["parity"]["jax_accuracy"] == pytest.approx(results["student"]["test_accuracy"])
  assert fp32["parity"]["max_abs_logit_difference"] < 1e-4
  assert fp32["parity"]["top1_agreement"] == 1.0
  assert int8["bytes"] < fp32["bytes"] and int8["parity"]["top1_agreement"] > 0.9
  litert = report["student.tflite"]
  assert litert["parity"]["max_abs_logit_difference"] < 1e-4
  for entry, runtime in ((fp32, "onnxruntime"), (int8, "onnxruntime"), (litert, "litert")):
    assert set(entry["latency_ms"]) == {"batch_1", "batch_32"}
    assert all(ms[runtime] > 0 and ms["jax"] > 0 for ms in entry["latency_ms"].values())


def test_export_cli_errors_are_one_line(tmp_path):
  out = _cli(f"--workdir={tmp_path}", "--format=onnx", module="kd_jax.export")
  assert out.returncode == 2 and "no finished run" in out.stderr
  assert "Traceback" not in out.stderr
  out = _cli(f"--workdir={tmp_path}", "--format=pdf", module="kd_jax.export")
  assert out.returncode == 2 and "<onnx|tflite>" in out.stderr


@pytest.mark.slow
def test_the_arithmetic_student_exports_with_its_vocabulary(tmp_path):
  from tests import multidevice
  workdir = tmp_path / "sft"
  out = _cli("--config=experiments/arithmetic/sft.py:smoke", f"--workdir={workdir}",
             f"--teacher_dir={tmp_path / 'teachers'}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  out = _cli(f"--workdir={workdir}", "--format=onnx", module="kd_jax.export")
  assert out.returncode == 0, out.stderr[-3000:]
  with open(workdir / "export" / "report.json") as f:
    parity = json.load(f)["student.onnx"]["parity"]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  # Every held-out target token, teacher-forced: the run's own token accuracy.
  assert parity["jax_accuracy"] == pytest.approx(results["student"]["token_accuracy"], abs=1e-6)
  assert parity["max_abs_logit_difference"] < 1e-4 and parity["top1_agreement"] == 1.0
  with open(workdir / "export" / "samples.json") as f:
    samples = json.load(f)
  assert samples["kind"] == "language_model" and samples["prompts"][0].endswith("=")
