"""DistiLLM-2's contrastive loss (kd_jax/objectives/contrastive.py) against its formula in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kd_jax.objectives import contrastive


def _skew_kl64(p, q, alpha):
  """KL(p ‖ α·p + (1−α)·q) per position, from probabilities (float64)."""
  m = alpha * p + (1 - alpha) * q
  return np.sum(p * (np.log(p) - np.log(m)), axis=-1)


def _softmax64(x):
  x = np.asarray(x, np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_the_loss_is_skew_kl_on_teacher_tokens_plus_skew_reverse_kl_on_student_tokens():
  rng = np.random.default_rng(0)
  s, t = rng.normal(size=(4, 3, 5)), 2 * rng.normal(size=(4, 3, 5))
  teacher_mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]], bool)
  student_mask = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0]], bool)
  q, p = _softmax64(s), _softmax64(t)
  pulled = _skew_kl64(p, q, 0.1)[teacher_mask].mean()           # KL(p ‖ 0.1 p + 0.9 q)
  pushed = _skew_kl64(q, p, 0.3)[student_mask].mean()           # KL(q ‖ 0.3 q + 0.7 p)
  loss, metrics = contrastive.distillm2_loss(jnp.float32(s), jnp.float32(t), teacher_mask,
                                             student_mask, alpha_teacher=0.1, alpha_student=0.3)
  np.testing.assert_allclose(float(loss), pulled + pushed, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["teacher_skew_kl"]), pulled, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["student_skew_reverse_kl"]), pushed, rtol=1e-5)


def test_the_loss_is_zero_when_the_student_is_the_teacher_and_its_gradient_is_finite():
  rng = np.random.default_rng(1)
  t = jnp.float32(rng.normal(size=(2, 4, 6)))
  masks = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool), jnp.array([[0] * 4, [1, 1, 0, 0]], bool)
  loss, _ = contrastive.distillm2_loss(t, t, *masks)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  with jax.enable_x64():
    s64, t64 = jnp.float64(rng.normal(size=(2, 4, 6))), jnp.float64(t)
    check_grads(lambda x: contrastive.distillm2_loss(x, t64, *masks)[0], (s64,), order=1,
                modes=("rev",))
