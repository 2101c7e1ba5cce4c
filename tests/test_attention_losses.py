"""MiniLM's attention and value relations (kd_jax/objectives/attention_losses.py) against float64 NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from kd_jax.objectives import attention_losses
from tests.test_losses import rand

B, T = 2, 5


def np_relation_loss(sa, sb, ta, tb, heads, mask):
  def rel(a, b):
    a, b = a.astype(np.float64), b.astype(np.float64)
    d = a.shape[-1] // heads
    split = lambda x: x.reshape(B, T, heads, d).transpose(0, 2, 1, 3)
    scores = np.einsum("brid,brjd->brij", split(a), split(b)) / np.sqrt(d)
    scores = np.where(mask[:, None, None, :], scores, -np.inf)
    return scipy.special.log_softmax(scores, axis=-1)
  log_s, log_t = rel(sa, sb), rel(ta, tb)
  p = np.exp(log_t)
  kl = np.sum(np.where(p > 0, p * (log_t - np.where(p > 0, log_s, 0)), 0), axis=-1)   # [B,R,T]
  rows = np.broadcast_to(mask[:, None, :], kl.shape)
  return kl[rows].mean()


@pytest.mark.parametrize("heads", [1, 2, 4])
def test_relation_loss_is_the_mean_row_kl_of_the_relation_heads(heads):
  # A 8-wide student and a 12-wide teacher: relations do not depend on the width.
  sa, sb, ta, tb = rand(0, B, T, 8), rand(1, B, T, 8), rand(2, B, T, 12), rand(3, B, T, 12)
  mask = np.array([[True] * 5, [True, True, True, False, False]])
  got = attention_losses.relation_loss(sa, sb, ta, tb, num_heads=heads, mask=mask)
  np.testing.assert_allclose(got, np_relation_loss(sa, sb, ta, tb, heads, mask), rtol=1e-5)


def test_equal_relations_cost_nothing_and_gradients_reach_only_the_student():
  a, b = rand(0, B, T, 8), rand(1, B, T, 8)
  mask = np.array([[True] * 5, [True, True, False, False, False]])
  assert float(attention_losses.relation_loss(a, b, a, b, num_heads=2, mask=mask)) == (
      pytest.approx(0.0, abs=1e-6))
  grads = jax.grad(lambda s, t: attention_losses.relation_loss(s, s, t, t, num_heads=2,
                                                               mask=mask), argnums=(0, 1))(
      jnp.asarray(a), jnp.asarray(rand(2, B, T, 8)))
  assert np.all(np.isfinite(grads[0])) and np.any(grads[0]) and not np.any(grads[1])
  # Padded positions take no part: changing them changes nothing.
  moved = a.copy()
  moved[1, 2:] += 100.0
  t = rand(3, B, T, 8)
  before, after = (float(attention_losses.relation_loss(x, x, t, t, num_heads=2, mask=mask))
                   for x in (a, moved))
  assert before == pytest.approx(after, rel=1e-6)


def test_an_all_padding_row_stays_finite():
  a = rand(0, B, T, 8)
  mask = np.array([[True] * 5, [False] * 5])
  value, grad = jax.value_and_grad(lambda s: attention_losses.relation_loss(
      s, s, a, a, num_heads=2, mask=mask))(jnp.asarray(rand(1, B, T, 8)))
  assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_heads_must_divide_the_width():
  with pytest.raises(ValueError, match="width 8 is not divisible by 3 heads"):
    attention_losses.relations(rand(0, B, T, 8), rand(1, B, T, 8), 3)


def test_with_the_models_heads_the_qk_relation_is_the_attention_distribution():
  """relation_loss(Q, K) with R = the heads is KL between the models' own attention maps."""
  from flax import nnx
  from kd_jax.models import bert
  make = lambda seed: bert.Bert(vocab_size=30, dim=16, num_layers=1, num_heads=4, mlp_dim=32,
                                max_len=8, rngs=nnx.Rngs(seed))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 30, (B, T)), jnp.int32)
  mask = jnp.asarray([[True] * 5, [True, True, True, False, False]])
  (_, s), (_, t) = (make(seed)(tokens, mask, return_features=True) for seed in (0, 1))
  got = attention_losses.relation_loss(s["query_0"], s["key_0"], t["query_0"], t["key_0"],
                                       num_heads=4, mask=mask)
  p, q = np.asarray(t["attention_0"], np.float64), np.asarray(s["attention_0"], np.float64)
  kl = np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(np.where(p > 0, q, 1))),
                       0), axis=-1)
  rows = np.broadcast_to(np.asarray(mask)[:, None, :], kl.shape)
  np.testing.assert_allclose(got, kl[rows].mean(), rtol=1e-3, atol=1e-8)
