"""Tests for kd_jax.models: shapes, features, parameter counts, BatchNorm, dtypes.

Expected values come from closed-form parameter counts, published counts and
float64 NumPy re-implementations of the forward passes, never from the code under
test.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core import tracing

RESNETS = tuple(n for n in models.NAMES if n.startswith("resnet"))
EPS = 1e-5  # BatchNorm epsilon
MOMENTUM = 0.9  # running = MOMENTUM * running + (1 - MOMENTUM) * batch


def _rngs(seed):
  # Eager threefry initialisation compiles one sampler per parameter shape
  # (seconds each on a loaded 2-core CPU); RBG keys compile far faster and
  # these tests do not depend on the initial distribution.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


@functools.lru_cache(maxsize=None)
def _cached_model(name, input_shape, num_classes):
  """One model per configuration, shared by tests that never mutate it."""
  return models.create(name, num_classes=num_classes, rngs=_rngs(0),
                       input_shape=input_shape)


def _num_params(model):
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _np(v):
  return np.asarray(v[...], np.float64)


# ----------------------------------------------------------- NumPy references
def _conv(x, kernel, stride=1):
  """NHWC conv, HWIO kernel, symmetric padding k//2 (PyTorch `padding=k//2`)."""
  k = kernel.shape[0]
  p = k // 2
  xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  h_out = (x.shape[1] + 2 * p - k) // stride + 1
  w_out = (x.shape[2] + 2 * p - k) // stride + 1
  out = np.zeros((x.shape[0], h_out, w_out, kernel.shape[-1]))
  for di in range(k):
    for dj in range(k):
      patch = xp[:, di:di + stride * (h_out - 1) + 1:stride,
                 dj:dj + stride * (w_out - 1) + 1:stride]
      out += patch @ kernel[di, dj]
  return out


def _relu(x):
  return np.maximum(x, 0.0)


def _bn(bn, x, train, updates):
  """BatchNorm; in train mode records the expected running-stat update."""
  if train:
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased var
    updates.append((bn, MOMENTUM * _np(bn.mean) + (1 - MOMENTUM) * mean,
                    MOMENTUM * _np(bn.var) + (1 - MOMENTUM) * var))
  else:
    mean, var = _np(bn.mean), _np(bn.var)
  return (x - mean) / np.sqrt(var + EPS) * _np(bn.scale) + _np(bn.bias)


def _resnet_reference(model, x, train):
  """He et al. 2016 CIFAR ResNet forward in float64 from the model's variables."""
  updates = []
  h = _relu(_bn(model.stem_bn, _conv(x, _np(model.stem_conv.kernel)), train,
                updates))
  feats = {"stem": h}
  for s, stage in enumerate(model.stages):
    for b, block in enumerate(stage):
      stride = 2 if (s > 0 and b == 0) else 1
      y = _relu(_bn(block.bn1, _conv(h, _np(block.conv1.kernel), stride),
                    train, updates))
      y = _bn(block.bn2, _conv(y, _np(block.conv2.kernel)), train, updates)
      if block.proj_conv is not None:
        h = _bn(block.proj_bn, _conv(h, _np(block.proj_conv.kernel), stride),
                train, updates)
      h = _relu(y + h)
    feats[f"stage{s + 1}"] = h
  feats["embedding"] = h.mean(axis=(1, 2))
  logits = feats["embedding"] @ _np(model.head.kernel) + _np(model.head.bias)
  return logits, feats, updates


def _randomize_batchnorm(model, seed):
  """Non-trivial BN scale/bias/running stats so eval mode is a real test."""
  rng = np.random.default_rng(seed)
  for _, bn in nnx.iter_modules(model):
    if isinstance(bn, nnx.BatchNorm):
      n = bn.num_features
      bn.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
      bn.bias[...] = jnp.asarray(rng.normal(0, 0.1, n), jnp.float32)
      bn.mean[...] = jnp.asarray(rng.normal(0, 0.3, n), jnp.float32)
      bn.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, n), jnp.float32)


def _cifar_resnet_params(depth, widths, in_channels, num_classes):
  """Closed-form trainable-parameter count (BN: scale + bias per channel).

  Stem 3x3 conv + BN; n = (depth-2)/6 basic blocks per stage (two 3x3 convs +
  BNs); a 1x1 conv + BN shortcut where the block changes width or stride; the
  linear classifier with bias.
  """
  n = (depth - 2) // 6
  total = 9 * in_channels * widths[0] + 2 * widths[0]
  c = widths[0]
  for s, w in enumerate(widths[1:]):
    for b in range(n):
      total += 9 * c * w + 2 * w + 9 * w * w + 2 * w
      if c != w or (s > 0 and b == 0):
        total += c * w + 2 * w
      c = w
  return total + c * num_classes + num_classes


# --------------------------------------------------------------------- tests
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("name", models.IMAGE_MODELS)
def test_output_and_feature_shapes(name, input_shape):
  model = _cached_model(name, input_shape, 10)
  h, w, _ = input_shape
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *input_shape)),
                  jnp.float32)
  logits, feats = model(x, return_features=True)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  np.testing.assert_array_equal(logits, model(x))
  assert set(feats) == set(model.feature_names)
  assert "embedding" in model.feature_names
  if name in RESNETS:
    widths = models.resnet.CONFIGS[name][1]
    half, quarter = math.ceil(h / 2), math.ceil(h / 4)
    expected = {"stem": (2, h, w, widths[0]), "stage1": (2, h, w, widths[1]),
                "stage2": (2, half, half, widths[2]),
                "stage3": (2, quarter, quarter, widths[3]),
                "embedding": (2, widths[3])}
    assert {k: v.shape for k, v in feats.items()} == expected


def test_feature_shapes_helper_matches_features():
  cnn = models.create("cnn", num_classes=10, rngs=_rngs(0), hidden=48)
  assert models.feature_shapes(cnn) == {
      "conv1": (1, 28, 28, 32), "conv2": (1, 14, 14, 64),
      "conv3": (1, 7, 7, 128), "embedding": (1, 48), "logits": (1, 10)}
  mlp = models.create("mlp", num_classes=3, rngs=_rngs(0), hidden=(64, 32),
                      input_shape=(8, 8, 3))
  assert mlp.feature_names == ("hidden1", "hidden2", "embedding")
  assert models.feature_shapes(mlp, (5, 8, 8, 3)) == {
      "hidden1": (5, 64), "hidden2": (5, 32), "embedding": (5, 32), "logits": (5, 3)}
  resnet = _cached_model("resnet8x4", (32, 32, 3), 10)
  shapes = models.feature_shapes(resnet, (3, 32, 32, 3))
  assert shapes == {"stem": (3, 32, 32, 32), "stage1": (3, 32, 32, 64),
                    "stage2": (3, 16, 16, 128), "stage3": (3, 8, 8, 256),
                    "embedding": (3, 256), "logits": (3, 10)}


# Published sizes: He et al. 2016 Table 6 (CIFAR-10, 10 classes) and the CRD /
# DKD benchmark tables (CIFAR-100). He et al. used zero-padding shortcuts, we use
# 1x1 projections (+2,752 params), hence the 2% tolerance.
PUBLISHED = {
    ("resnet20", 10): 0.27e6, ("resnet32", 10): 0.46e6,
    ("resnet44", 10): 0.66e6, ("resnet56", 10): 0.85e6,
    ("resnet110", 10): 1.7e6,
    ("resnet8x4", 100): 1.23e6, ("resnet32x4", 100): 7.43e6,
}


@pytest.mark.parametrize("name,num_classes", sorted(PUBLISHED))
def test_resnet_param_counts(name, num_classes):
  model = _cached_model(name, (32, 32, 3), num_classes)
  depth, widths = models.resnet.CONFIGS[name]
  count = _num_params(model)
  assert count == _cifar_resnet_params(depth, widths, 3, num_classes)
  assert abs(count - PUBLISHED[name, num_classes]) <= 0.02 * PUBLISHED[
      name, num_classes]


def test_param_counts_by_hand():
  # resnet20 on CIFAR-10: stem 432+32; stage1 3x(2x(2304+32)); stage2
  # 4608+9216+128+(512+64)+2x2x(9216+64); stage3 18432+36864+256+(2048+128)
  # +2x2x(36864+128); classifier 650.
  assert _num_params(_cached_model("resnet20", (32, 32, 3), 10)) == 272_474
  # resnet8x4 on CIFAR-100: 864+64 + 57,728 + 230,144 + 919,040 + 25,700.
  assert _num_params(_cached_model("resnet8x4", (32, 32, 3), 100)) == 1_233_540
  # cnn: (9x1x32+32) + (9x32x64+64) + (9x64x128+128) + (128x10+10).
  assert _num_params(_cached_model("cnn", (28, 28, 1), 10)) == 93_962
  # mlp: 784x256+256 + 256x10+10.
  assert _num_params(_cached_model("mlp", (28, 28, 1), 10)) == 203_530
  # No BatchNorm running statistics are counted as parameters.
  bn_stats = nnx.state(_cached_model("resnet20", (32, 32, 3), 10),
                       nnx.BatchStat)
  assert sum(x.size for x in jax.tree.leaves(bn_stats)) == 2 * (
      16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64)


@pytest.mark.parametrize("train", [False, True])
def test_resnet_matches_numpy_reference(train):
  # resnet8x4 has a projection shortcut in every stage; 9x9 inputs exercise
  # the odd-size stride-2 path (9 -> 5 -> 3).
  model = models.create("resnet8x4", num_classes=7, rngs=_rngs(1),
                        input_shape=(9, 9, 3))
  _randomize_batchnorm(model, seed=2)
  x = np.random.default_rng(3).normal(size=(2, 9, 9, 3))
  want_logits, want_feats, updates = _resnet_reference(model, x, train)
  logits, feats = model(jnp.asarray(x, jnp.float32), train=train,
                        return_features=True)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-4, atol=1e-4)
  for k, v in want_feats.items():
    np.testing.assert_allclose(feats[k], v, rtol=1e-4, atol=1e-4, err_msg=k)
  assert len(updates) == (10 if train else 0)  # stem + 3 x (2 + proj)
  for bn, mean, var in updates:
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.var[...], var, rtol=1e-4, atol=1e-5)


def test_eval_mode_leaves_statistics_and_differs_from_train():
  model = models.create("resnet8", num_classes=10, rngs=_rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (2, 28, 28, 1)),
                  jnp.float32)
  before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))  # a copy
  eval_logits = model(x, train=False)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.BatchStat),
               before)
  train_logits = model(x, train=True)
  assert not np.allclose(eval_logits, train_logits, atol=1e-3)
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                         nnx.state(model, nnx.BatchStat), before)
  assert all(jax.tree.leaves(changed))


def test_mlp_matches_numpy_reference():
  # The default threefry nnx.Rngs path, on a model small enough to init fast.
  model = models.create("mlp", num_classes=4, rngs=nnx.Rngs(0), hidden=(6, 5),
                        input_shape=(3, 3, 2))
  x = np.random.default_rng(0).normal(size=(2, 3, 3, 2))
  h = x.reshape(2, -1)
  for layer in model.layers:
    h = _relu(h @ _np(layer.kernel) + _np(layer.bias))
  want = h @ _np(model.head.kernel) + _np(model.head.bias)
  logits, feats = model(jnp.asarray(x, jnp.float32), return_features=True)
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(feats["embedding"], h, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_cnn_matches_numpy_reference(batch_norm):
  model = models.create("cnn", num_classes=3, rngs=_rngs(0), widths=(4, 6, 5),
                        batch_norm=batch_norm, hidden=7, input_shape=(7, 7, 2))
  if batch_norm:
    _randomize_batchnorm(model, seed=1)
  x = np.random.default_rng(0).normal(size=(2, 7, 7, 2))
  h, want_feats, updates = x, {}, []
  for i, conv in enumerate(model.convs):
    h = _conv(h, _np(conv.kernel), stride=1 if i == 0 else 2)
    h = _bn(model.norms[i], h, False, updates) if batch_norm else h + _np(
        conv.bias)
    h = _relu(h)
    want_feats[f"conv{i + 1}"] = h
  emb = _relu(h.mean(axis=(1, 2)) @ _np(model.hidden.kernel) +
              _np(model.hidden.bias))
  want = emb @ _np(model.head.kernel) + _np(model.head.bias)
  logits, feats = model(jnp.asarray(x, jnp.float32), return_features=True)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(feats["embedding"], emb, rtol=1e-4, atol=1e-5)
  for k, v in want_feats.items():  # 7 -> 4 -> 2 pixels
    np.testing.assert_allclose(feats[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("first_kernel", [5, 4])
def test_cnn_flatten_head_matches_numpy_reference(first_kernel):
  model = models.create("cnn", num_classes=3, rngs=_rngs(0), widths=(4, 6),
                        first_kernel=first_kernel, first_stride=2, head="flatten",
                        hidden=5, input_shape=(9, 9, 1))
  x = np.random.default_rng(1).normal(size=(2, 9, 9, 1))
  h = _relu(_conv(x, _np(model.convs[0].kernel), stride=2) + _np(model.convs[0].bias))
  h = _relu(_conv(h, _np(model.convs[1].kernel), stride=2) + _np(model.convs[1].bias))
  emb = _relu(h.reshape(2, -1) @ _np(model.hidden.kernel) + _np(model.hidden.bias))
  want = emb @ _np(model.head.kernel) + _np(model.head.bias)
  np.testing.assert_allclose(model(jnp.asarray(x, jnp.float32)), want, rtol=1e-4, atol=1e-5)
  # The default experiment's teacher, by hand: (25x32+32) + (9x32x64+64) + (7x7x64x256+256)
  # + (256x10+10).
  teacher = models.create("cnn", num_classes=10, rngs=_rngs(0), widths=(32, 64), first_kernel=5,
                          first_stride=2, head="flatten", hidden=256)
  assert _num_params(teacher) == 824_970
  with pytest.raises(ValueError, match="head"):
    models.create("cnn", num_classes=3, rngs=_rngs(0), head="max")


@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet8"])
def test_bfloat16_compute_float32_outputs(name):
  kwargs = {"batch_norm": True} if name == "cnn" else {}
  f32 = models.create(name, num_classes=10, rngs=_rngs(0), **kwargs)
  bf16 = models.create(name, num_classes=10, rngs=_rngs(0),
                       dtype=jnp.bfloat16, **kwargs)
  params = nnx.state(bf16, nnx.Param)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  jax.tree.map(np.testing.assert_array_equal, params, nnx.state(f32, nnx.Param))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)),
                  jnp.float32)
  for train in (True, False):
    want = f32(x, train=train)
    got, feats = bf16(x, train=train, return_features=True)
    assert got.dtype == jnp.float32
    assert feats["embedding"].dtype == jnp.bfloat16
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 3e-2, rel
  stats = jax.tree.leaves(nnx.state(bf16, nnx.BatchStat))
  assert all(s.dtype == jnp.float32 for s in stats)


def test_jitted_split_merge_step_updates_batch_stats():
  build = functools.partial(models.create, "resnet8", num_classes=10)
  model, reference = build(rngs=_rngs(0)), build(rngs=_rngs(0))
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  @functools.partial(jax.jit, donate_argnums=(1,))
  @tracing.count_traces
  def step(params, batch_stats, x):
    def loss_fn(params):
      # copy=True: fresh Variables at the grad trace level; BatchNorm can only
      # update Variables created in the trace it runs in.
      m = nnx.merge(graphdef, params, batch_stats, copy=True)
      logits = m(x, train=True)
      return jnp.mean(logits ** 2), nnx.state(m, nnx.BatchStat)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats

  x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, (2, 28, 28, 1)),
                  jnp.float32)
  loss, grads, new_stats = step(params, batch_stats, x)
  reference(x, train=True)  # eager, stateful: the semantics being mirrored
  want_stats = nnx.state(reference, nnx.BatchStat)
  assert (jax.tree.structure(new_stats) == jax.tree.structure(want_stats))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               new_stats, want_stats)
  # Every parameter gets a finite, non-zero gradient (all layers are used).
  for g in jax.tree.leaves(grads):
    assert np.isfinite(np.asarray(g)).all() and np.any(np.asarray(g) != 0)
  assert np.isfinite(float(loss))
  # The re-merged model evaluates with the updated running averages.
  merged = nnx.merge(graphdef, params, new_stats)
  np.testing.assert_allclose(merged(x), reference(x), rtol=1e-5, atol=1e-5)
  # Same structure/dtypes in and out, so a second call reuses the compilation.
  step(params, new_stats, x)
  assert tracing.traces(step) == 1


def test_jitted_merge_call_split_round_trip():
  # The plain functional pattern: the whole state in, the whole state out.
  build = functools.partial(models.create, "cnn", num_classes=10,
                            batch_norm=True)
  model, reference = build(rngs=_rngs(0)), build(rngs=_rngs(0))
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x):
    m = nnx.merge(graphdef, state)
    logits = m(x, train=True)
    return logits, nnx.split(m)[1]

  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 28, 28, 1)),
                  jnp.float32)
  logits, new_state = forward(state, x)
  np.testing.assert_allclose(logits, reference(x, train=True), rtol=1e-5,
                             atol=1e-5)
  want = nnx.state(reference)
  assert jax.tree.structure(new_state) == jax.tree.structure(want)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               new_state, want)
  old_mean = np.asarray(state["norms"][0]["mean"][...])
  assert not np.allclose(new_state["norms"][0]["mean"][...], old_mean)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as err:
    models.create("resnet9000", num_classes=10, rngs=_rngs(0))
  assert "resnet9000" in str(err.value)
  assert all(n in str(err.value) for n in models.NAMES)


@pytest.mark.parametrize("name,kwargs,bad", [
    ("cnn", {"widht": (8,)}, "widht"),
    ("mlp", {"widths": (8,)}, "widths"),
    ("resnet20", {"widths": (8, 8, 8, 8)}, "widths"),  # fixed by the name
    ("resnet8x4", {"depth": 14}, "depth"),
])
def test_unknown_kwarg_names_model_and_kwarg(name, kwargs, bad):
  with pytest.raises(TypeError) as err:
    models.create(name, num_classes=10, rngs=_rngs(0), **kwargs)
  assert name in str(err.value) and bad in str(err.value)
  assert "input_shape" in str(err.value)  # the accepted kwargs are listed


def test_wrong_input_raises_readable_error():
  cnn = _cached_model("cnn", (28, 28, 1), 10)
  with pytest.raises(ValueError, match="cnn expects"):
    cnn(jnp.zeros((2, 32, 32, 3)))
  mlp = _cached_model("mlp", (28, 28, 1), 10)
  with pytest.raises(ValueError, match="input_shape"):
    mlp(jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="num_classes"):
    models.create("mlp", num_classes=0, rngs=_rngs(0))
