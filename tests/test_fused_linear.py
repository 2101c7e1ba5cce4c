"""losses.fused_linear_kd_loss equals kd_loss of the heads' logits, in value and gradients,
without holding [N, V] (DESIGN §5.4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.run import validation
from kd_jax import divergences
from kd_jax import losses
from tests.test_divergences import reference
from tests.test_losses import np_ce, rand

N, H_S, H_T, V = 37, 8, 12, 50
PROBABILITY = sorted(divergences.PROBABILITY_DIVERGENCES)
PARAMS = {"js": {"beta": 0.3}, "skew_kl": {"alpha": 0.2}, "skew_reverse_kl": {"alpha": 0.2}}


def _inputs(seed=0, dtype=np.float32):
  h_s, w_s = rand(seed, N, H_S), rand(seed + 1, H_S, V, scale=0.5)
  h_t, w_t = rand(seed + 2, N, H_T), rand(seed + 3, H_T, V, scale=0.5)
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, V, N).astype(np.int32)
  labels[::5] = -100                            # padding labels, masked below
  mask = rng.uniform(size=N) < 0.7
  mask[::5] = False
  return [jnp.asarray(x, dtype) for x in (h_s, w_s, h_t, w_t)] + [labels, mask]


def _both(divergence, chunk_size, *, mask=True, alpha=0.3, temperature=2.0, dtype=np.float32):
  h_s, w_s, h_t, w_t, labels, m = _inputs(dtype=dtype)
  m = m if mask else None
  labels = labels if mask else np.abs(labels)
  kw = dict(divergence=divergence, temperature=temperature, alpha=alpha, mask=m,
            divergence_params=PARAMS.get(divergence))
  fused = lambda a, b: losses.fused_linear_kd_loss(a, b, h_t, w_t, labels,
                                                    chunk_size=chunk_size, **kw)
  naive = lambda a, b: losses.kd_loss(a @ b, h_t @ w_t, labels, **kw)
  grad = lambda f: jax.value_and_grad(f, argnums=(0, 1))(h_s, w_s)
  return grad(fused), grad(naive)


def _close(got, want, rtol, atol):
  (value, (g_h, g_w)), (value_ref, (g_h_ref, g_w_ref)) = got, want
  np.testing.assert_allclose(value, value_ref, rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(g_h, np.float32), np.asarray(g_h_ref, np.float32),
                             rtol=rtol, atol=atol)
  np.testing.assert_allclose(np.asarray(g_w, np.float32), np.asarray(g_w_ref, np.float32),
                             rtol=rtol, atol=atol)


@pytest.mark.parametrize("divergence", PROBABILITY)
@pytest.mark.parametrize("chunk_size", [1, 7, 64])    # 7 and 64 do not divide N = 37
def test_value_and_gradients_equal_the_naive_loss(divergence, chunk_size):
  _close(*_both(divergence, chunk_size), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("divergence", PROBABILITY)
def test_without_a_mask_and_at_the_alpha_ends(divergence):
  _close(*_both(divergence, 8, mask=False), rtol=2e-5, atol=1e-6)
  for alpha in (0.0, 1.0):
    _close(*_both(divergence, 8, alpha=alpha), rtol=2e-5, atol=1e-6)


def test_value_matches_the_float64_formula():
  h_s, w_s, h_t, w_t, labels, mask = _inputs()
  s = np.asarray(h_s, np.float64) @ np.asarray(w_s, np.float64)
  t = np.asarray(h_t, np.float64) @ np.asarray(w_t, np.float64)
  per_row = 0.3 * np_ce(s, np.where(mask, labels, 0)) + 0.7 * 4.0 * reference(
      "kl", s, t, temperature=2.0)
  want = per_row[mask].mean()
  got = losses.fused_linear_kd_loss(h_s, w_s, h_t, w_t, labels, temperature=2.0, alpha=0.3,
                                    mask=mask, chunk_size=6)
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("divergence", ["kl", "reverse_kl", "js"])
def test_bf16_inputs_match_the_naive_loss_on_the_same_inputs(divergence):
  (value, (g_h, g_w)), want = _both(divergence, 7, dtype=jnp.bfloat16)
  assert value.dtype == jnp.float32 and g_h.dtype == g_w.dtype == jnp.bfloat16
  _close((value, (g_h, g_w)), want, rtol=2e-2, atol=2e-3)


def test_jit_traced_schedules_and_no_teacher_gradient():
  h_s, w_s, h_t, w_t, labels, mask = _inputs()

  @jax.jit
  def loss(h_s, w_s, h_t, w_t, temperature, alpha):
    return losses.fused_linear_kd_loss(h_s, w_s, h_t, w_t, labels, temperature=temperature,
                                       alpha=alpha, mask=mask, chunk_size=16)

  grads = jax.grad(loss, argnums=(0, 1, 2, 3))(h_s, w_s, h_t, w_t, 2.0, 0.3)
  assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) > 0
  assert not np.any(grads[2]) and not np.any(grads[3])          # the frozen teacher
  want = losses.kd_loss(h_s @ w_s, h_t @ w_t, labels, temperature=2.0, alpha=0.3, mask=mask)
  np.testing.assert_allclose(loss(h_s, w_s, h_t, w_t, 2.0, 0.3), want, rtol=2e-5)
  # The backward pass scales the forward pass's gradients by the incoming cotangent.
  scaled = jax.grad(lambda a: 3.0 * loss(a, w_s, h_t, w_t, 2.0, 0.3))(h_s)
  np.testing.assert_allclose(scaled, 3.0 * grads[0], rtol=1e-6)


def test_a_fully_masked_batch_gives_zero_and_finite_gradients():
  h_s, w_s, h_t, w_t, labels, _ = _inputs()
  value, grads = jax.value_and_grad(
      lambda a, b: losses.fused_linear_kd_loss(a, b, h_t, w_t, labels, mask=np.zeros(N, bool),
                                               chunk_size=8), argnums=(0, 1))(h_s, w_s)
  assert float(value) == 0.0 and all(not np.any(g) for g in grads)


def test_memory_is_bounded_by_the_chunk():
  """Compiled temporaries of value-and-grad: a few [chunk, V] arrays, never [N, V]."""
  n, h, v, chunk = 8192, 32, 4096, 256
  shapes = [(n, h), (h, v), (n, h), (h, v)]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  args.append(jax.ShapeDtypeStruct((n,), jnp.int32))

  def temp_bytes(loss):
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes

  fused = temp_bytes(lambda a, b, c, d, y: losses.fused_linear_kd_loss(a, b, c, d, y,
                                                                       chunk_size=chunk))
  naive = temp_bytes(lambda a, b, c, d, y: losses.kd_loss(a @ b, c @ d, y))
  full_logits, chunk_logits = n * v * 4, chunk * v * 4
  assert naive > full_logits                 # the check can see an [N, V] array
  assert fused < 12 * chunk_logits < full_logits / 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(divergence="cosine"), "not a probability divergence; valid: js, kl"),
    (dict(chunk_size=0), "chunk_size must be >= 1"),
])
def test_bad_arguments(kwargs, message):
  h_s, w_s, h_t, w_t, labels, mask = _inputs()
  with pytest.raises(ValueError, match=message):
    losses.fused_linear_kd_loss(h_s, w_s, h_t, w_t, labels, mask=mask, **kwargs)
  with pytest.raises(ValueError, match=r"expected student_hidden \[N, H_s\]"):
    losses.fused_linear_kd_loss(h_s, w_s[:, :10], h_t, w_t, labels)


@pytest.mark.parametrize("tie", [False, True])
def test_gpt_hidden_and_head_make_its_logits(tie):
  from flax import nnx
  from kd_jax import models
  model = models.create("gpt", vocab_size=23, max_len=16, num_layers=2, num_heads=2, dim=16,
                        tie_embeddings=tie, rngs=nnx.Rngs(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 23, (2, 7)), jnp.int32)
  hidden, head = model.hidden_and_head(tokens)
  assert hidden.shape == (2, 7, 16) and head.shape == (16, 23)
  np.testing.assert_allclose(hidden @ head, model(tokens), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_kd_with_loss_chunk_size_trains_like_the_naive_loss(tmp_path):
  """The engine's fused path (GPT hidden states and heads, chunks of 7 tokens) takes the same
  steps as the naive kd loss on the logits."""
  import json
  import os
  from kd_jax.config import cli
  from kd_jax.run.pipeline import run_experiment
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  losses_of = {}
  for chunk in (0, 7):
    c = cli.load_config_file(os.path.join(root, "experiments", "arithmetic", "token_kd.py:smoke"))
    c.baseline, c.teacher_cache, c.loss_chunk_size = False, "none", chunk
    run_experiment(c, str(tmp_path / f"chunk{chunk}"), teacher_dir=str(tmp_path / "teachers"),
                   show_progress=False)
    with open(tmp_path / f"chunk{chunk}" / "student" / "metrics.jsonl") as f:
      losses_of[chunk] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  assert len(losses_of[0]) == 5
  np.testing.assert_allclose(losses_of[7], losses_of[0], rtol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(method="none"), "needs method='kd' on a language dataset"),
    (dict(divergence="mse"), "loss_chunk_size=8 needs a probability divergence"),
    (dict(teacher_cache="memory"), "cannot be combined with topk.k or teacher_cache='memory'"),
    (dict(loss_chunk_size=-1), "loss_chunk_size must be an int >= 0"),
])
def test_loss_chunk_size_settings_are_checked(overrides, message):
  import os
  from kd_jax.config import cli
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = cli.load_config_file(os.path.join(root, "experiments", "arithmetic", "token_kd.py:smoke"))
  c.loss_chunk_size, c.teacher_cache = 8, "none"
  for key, value in overrides.items():
    c[key] = value
  with pytest.raises(ValueError, match=message):
    validation.validate(c)
