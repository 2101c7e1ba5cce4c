"""A ViT student with DeiT's distillation token (issue 27): the model against an independent
NumPy transformer, the two distillation losses on hand-made batches, the refusals, a tiny
run, and the ONNX export."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import methods, models
from kd_jax.core.errors import ConfigError
from kd_jax.methods import deit
from kd_jax.run import validation
from tests.conftest import tiny_config


def _vit(**kwargs):
  options = dict(num_classes=5, rngs=nnx.Rngs(0), input_shape=(8, 8, 2), patch_size=4, dim=8,
                 num_layers=2, num_heads=2, distillation_token=True)
  return models.create("vit", **{**options, **kwargs})


def _layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(p.scale[...]) + np.asarray(p.bias[...])


def _dense(x, p):
  return x @ np.asarray(p.kernel[...], np.float64) + np.asarray(p.bias[...], np.float64)


def _numpy_vit(model, x):
  """The ViT written out in NumPy (float64) from its parameters: patches in row-major order,
  [class, distillation] tokens, pre-norm blocks, both heads."""
  b, h, w, c = x.shape
  p = model.patch_size
  patches = np.stack([x[:, i:i + p, j:j + p, :].reshape(b, -1)
                      for i in range(0, h, p) for j in range(0, w, p)], axis=1)
  tokens = _dense(patches, model.patch_embed)
  dim = tokens.shape[-1]
  cls = np.broadcast_to(np.asarray(model.class_token[...]), (b, 1, dim))
  dist = np.broadcast_to(np.asarray(model.distillation_token[...]), (b, 1, dim))
  z = np.concatenate([cls, dist, tokens], 1) + np.asarray(model.position[...])
  for block in model.blocks:
    heads = block.num_heads
    qkv = _dense(_layer_norm(z, block.norm1), block.qkv)
    q, k, v = np.split(qkv.reshape(b, z.shape[1], 3 * heads, dim // heads), 3, axis=2)
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(dim // heads)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    z = z + _dense(np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(z.shape), block.out)
    hidden = _dense(_layer_norm(z, block.norm2), block.mlp_in)
    gelu = 0.5 * hidden * (1 + np.tanh(math.sqrt(2 / math.pi) * (hidden + 0.044715 * hidden ** 3)))
    z = z + _dense(gelu, block.mlp_out)
  z = _layer_norm(z, model.norm)
  return _dense(z[:, 0], model.head), _dense(z[:, 1], model.distillation_head)


def test_the_vit_computes_an_independent_numpy_transformer():
  model = _vit()
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 2))
  class_logits, distillation_logits = _numpy_vit(model, x)
  logits, features = model(jnp.asarray(x, jnp.float32), train=True, return_features=True)
  np.testing.assert_allclose(logits, class_logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(features["distillation_logits"], distillation_logits, rtol=1e-4,
                             atol=1e-5)
  # At test time: the mean of the two heads' logits.
  np.testing.assert_allclose(model(jnp.asarray(x, jnp.float32)),
                             (class_logits + distillation_logits) / 2, rtol=1e-4, atol=1e-5)
  plain = _vit(distillation_token=False)
  assert "distillation_logits" not in models.feature_shapes(plain)
  assert models.feature_shapes(model)["logits"] == (1, 5)


def test_a_vit_refuses_images_its_patches_do_not_tile():
  with pytest.raises(ValueError, match="multiples of patch_size=3"):
    _vit(patch_size=3)


def test_hard_distillation_is_the_ce_on_the_teachers_argmax():
  student = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  teacher = np.array([[0.0, 4.0, 1.0], [5.0, 1.0, 0.0]])     # argmax: 1, 0
  log_q = student - np.log(np.exp(student).sum(-1, keepdims=True))
  expected = -(log_q[0, 1] + log_q[1, 0]) / 2
  got = deit.hard_distillation(jnp.asarray(student), jnp.asarray(teacher))
  np.testing.assert_allclose(float(got), expected, rtol=1e-6)
  masked = deit.hard_distillation(jnp.asarray(student), jnp.asarray(teacher),
                                  jnp.array([True, False]))
  np.testing.assert_allclose(float(masked), -log_q[0, 1], rtol=1e-6)


def test_soft_distillation_is_t_squared_kl_at_temperature():
  student = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
  teacher = np.array([[0.0, 4.0, 1.0], [5.0, 1.0, 0.0]])
  t = 3.0
  softmax = lambda z: np.exp(z / t) / np.exp(z / t).sum(-1, keepdims=True)
  p, q = softmax(teacher), softmax(student)
  expected = t * t * np.mean(np.sum(p * np.log(p / q), -1))
  got = deit.soft_distillation(jnp.asarray(student), jnp.asarray(teacher), temperature=t)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def _deit_config(method="deit_hard", **overrides):
  config = tiny_config(method, **{"student.model": "vit", "alpha": 0.5, "feature_weight": 0.5,
                                  **overrides})
  config.student.kwargs = dict(patch_size=7, dim=16, num_layers=1, num_heads=2,
                               distillation_token=True)
  return config


def test_the_objective_weighs_the_class_head_and_the_distillation_head():
  """DeiT-hard: ½ CE(class head, y) + ½ CE(distillation head, argmax teacher)."""
  config = _deit_config()
  objective = methods.make_objective(config, {"distillation_logits": "logits"})
  rng = np.random.default_rng(1)
  s, d, t = (rng.normal(size=(4, 10)) for _ in range(3))
  labels = np.array([0, 3, 9, 2])
  mask = jnp.ones(4, bool)
  loss, metrics = objective(0, (jnp.asarray(s), {"distillation_logits": jnp.asarray(d)}),
                            (jnp.asarray(t), {"logits": jnp.asarray(t)}), jnp.asarray(labels),
                            mask)
  log_softmax = lambda z: z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -np.mean(log_softmax(s)[np.arange(4), labels])
  hard = -np.mean(log_softmax(d)[np.arange(4), t.argmax(-1)])
  np.testing.assert_allclose(float(loss), 0.5 * ce + 0.5 * hard, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["feature_loss"]), hard, rtol=1e-5)


def test_deit_refuses_a_student_without_the_token_a_baseline_and_other_methods_the_token():
  validation.validate(_deit_config())
  config = _deit_config()
  config.student.kwargs.distillation_token = False
  with pytest.raises(ConfigError, match="student.kwargs.distillation_token=True"):
    validation.validate(config)
  with pytest.raises(ConfigError, match="baseline=False"):
    validation.validate(_deit_config(baseline=True))
  with pytest.raises(ConfigError, match="does not train the student's distillation head.*"
                     "deit_hard, deit_soft"):
    validation.validate(_deit_config("kd"))
  validation.validate(_deit_config("deit_soft"))
  with pytest.raises(ConfigError, match="temperature.schedule='constant'"):
    validation.validate(_deit_config("deit_soft", **{"temperature.schedule": "linear"}))


@pytest.mark.slow
@pytest.mark.usefixtures("idx_source")
def test_a_deit_run_trains_both_heads(tmp_path, teacher_dir):
  import json
  from kd_jax.run.pipeline import run_experiment
  from tests.conftest import MISSING_FASHION_MNIST, have_fashion_mnist, skip_or_fail
  if not have_fashion_mnist():
    skip_or_fail(MISSING_FASHION_MNIST)
  results = run_experiment(_deit_config("deit_soft"), str(tmp_path / "run"),
                           teacher_dir=teacher_dir, show_progress=False)
  assert 0 <= results["student"]["test_accuracy"] <= 1
  records = [json.loads(line) for line in open(tmp_path / "run" / "student" / "metrics.jsonl")]
  steps = [r for r in records if "feature_loss" in r]
  assert steps and all(r["feature_loss"] > 0 and r["ce"] > 0 for r in steps)


def test_an_exported_deit_student_computes_the_averaged_heads(tmp_path):
  pytest.importorskip("jax2onnx")
  pytest.importorskip("onnxruntime")
  from kd_jax.export import onnx_format
  model = models.create("vit", num_classes=10, rngs=nnx.Rngs(0), patch_size=7, dim=16,
                        num_layers=1, num_heads=2, distillation_token=True)
  function = lambda images: model((images.astype(jnp.float32) / 255.0 - 0.5) / 0.25)
  path = str(tmp_path / "vit.onnx")
  onnx_format.export(function, (28, 28, 1), path)
  session = onnx_format.session(path)
  (inputs,) = session.get_inputs()
  images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1)).astype(np.uint8)
  got = session.run(None, {inputs.name: images})[0]
  np.testing.assert_allclose(got, function(jnp.asarray(images)), atol=1e-4, rtol=1e-4)
