"""Cross-tokenizer losses (kd_jax/objectives/cross_tokenizer.py) against independent NumPy
forms of their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from kd_jax import losses
from kd_jax.objectives import cross_tokenizer as ct


def _softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _ce(s, labels):
  log_q = np.log(_softmax(s))
  return -np.take_along_axis(log_q, labels[..., None], -1)[..., 0]


def _uld_numpy(s, t, temperature):
  """Per position: sort both probability vectors (descending), pad the shorter with zeros."""
  p, q = _softmax(t, temperature), _softmax(s, temperature)
  out = np.zeros(s.shape[:-1])
  for idx in np.ndindex(*s.shape[:-1]):
    a, b = sorted(p[idx], reverse=True), sorted(q[idx], reverse=True)
    n = max(len(a), len(b))
    a, b = np.array(a + [0.0] * (n - len(a))), np.array(b + [0.0] * (n - len(b)))
    out[idx] = np.abs(a - b).sum()
  return out


def _mean(values, mask):
  return values[mask].mean() if mask.any() else 0.0


@pytest.mark.parametrize("v_s,v_t", [(5, 9), (9, 5), (7, 7)])
def test_uld_matches_numpy_with_unequal_vocabularies_and_masks(v_s, v_t):
  rng = np.random.default_rng(v_s * 10 + v_t)
  s = rng.normal(size=(2, 4, v_s)) * 2
  t = rng.normal(size=(2, 4, v_t)) * 2
  labels = rng.integers(0, v_s, (2, 4))
  mask = np.array([[True, True, False, True], [True, False, True, True]])
  aligned = np.array([[True, False, True, True], [True, True, True, False]])
  for alpha, temperature in [(0.5, 1.0), (0.0, 2.0), (0.3, 0.5)]:
    expected = (alpha * _mean(_ce(s, labels), mask)
                + (1 - alpha) * _mean(_uld_numpy(s, t, temperature), mask & aligned))
    got = ct.uld_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                      jnp.asarray(labels), alpha=alpha, temperature=temperature,
                      mask=jnp.asarray(mask), aligned=jnp.asarray(aligned))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_uld_is_zero_for_a_permuted_teacher_and_needs_no_labels_at_alpha_zero():
  z = jnp.array([[3.0, 1.0, -2.0, 0.5]])
  permuted = z[:, ::-1]
  assert float(ct.uld_loss(z, permuted, None, alpha=0.0)) == pytest.approx(0.0, abs=1e-7)
  # A teacher with a larger vocabulary whose extra tokens carry no mass: still 0.
  padded = jnp.concatenate([permuted, jnp.full((1, 3), -1e9)], -1)
  assert float(ct.uld_loss(z, padded, None, alpha=0.0)) == pytest.approx(0.0, abs=1e-7)


def test_uld_gradients_are_the_students_only():
  rng = np.random.default_rng(0)
  s = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 10)), jnp.float32)
  labels = jnp.array([1, 4, 0])
  check_grads(lambda x: ct.uld_loss(x, t, labels, alpha=0.3, temperature=1.5), (s,),
              order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
  teacher_grad = jax.grad(lambda x: ct.uld_loss(s, x, labels))(t)
  assert float(jnp.abs(teacher_grad).max()) == 0.0


def test_aligned_kd_with_the_identity_map_is_kd_with_kl():
  rng = np.random.default_rng(1)
  s = jnp.asarray(rng.normal(size=(2, 5, 11)) * 2, jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 5, 11)) * 2, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 11, (2, 5)))
  mask = jnp.asarray(rng.random((2, 5)) > 0.3)
  for alpha, temperature in [(0.5, 1.0), (0.2, 3.0)]:
    expected = losses.kd_loss(s, t, labels, divergence="kl", temperature=temperature,
                              alpha=alpha, mask=mask)
    got = ct.aligned_kd_loss(s, t, labels, jnp.arange(11), alpha=alpha,
                             temperature=temperature, mask=mask)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5, atol=1e-6)


def _matched_kl_numpy(s, t, vocab_map, temperature):
  """Restrict both distributions to the matched pairs by a loop, renormalise, KL."""
  p, q = _softmax(t, temperature), _softmax(s, temperature)
  out = np.zeros(s.shape[:-1])
  pairs = [(v, u) for v, u in enumerate(vocab_map) if u >= 0]
  for idx in np.ndindex(*s.shape[:-1]):
    pm = np.array([p[idx][v] for v, _ in pairs]); qm = np.array([q[idx][u] for _, u in pairs])
    pm, qm = pm / pm.sum(), qm / qm.sum()
    out[idx] = temperature ** 2 * np.sum(pm * np.log(pm / qm))
  return out


def test_aligned_kd_with_a_partial_map_matches_numpy():
  rng = np.random.default_rng(2)
  s = rng.normal(size=(3, 4, 6)) * 2              # student: 6 tokens
  t = rng.normal(size=(3, 4, 8)) * 2              # teacher: 8 tokens
  vocab_map = np.array([2, -1, 0, 5, -1, -1, 1, -1])   # student 3 and 4 unmatched
  labels = rng.integers(0, 6, (3, 4))
  mask = rng.random((3, 4)) > 0.2
  aligned = rng.random((3, 4)) > 0.3
  exact = rng.random((3, 4)) > 0.5
  for alpha, temperature in [(0.5, 1.0), (0.0, 2.0)]:
    per_position = np.where(exact, _matched_kl_numpy(s, t, vocab_map, temperature),
                            _uld_numpy(s, t, temperature))
    expected = (alpha * _mean(_ce(s, labels), mask)
                + (1 - alpha) * _mean(per_position, mask & aligned))
    got = ct.aligned_kd_loss(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                             jnp.asarray(labels), jnp.asarray(vocab_map),
                             exact=jnp.asarray(exact), alpha=alpha, temperature=temperature,
                             mask=jnp.asarray(mask), aligned=jnp.asarray(aligned))
    np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_only_where_equals_evaluating_everywhere_then_masking(density):
  """Values and gradients, over several columns, the last one partial (rows of 23
  positions in columns of 4), with none, some or all positions needed."""
  rng = np.random.default_rng(5)
  s = jnp.asarray(rng.normal(size=(2, 3, 23, 6)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 3, 23, 9)), jnp.float32)
  needed = jnp.asarray(rng.random((2, 3, 23)) < density)
  fn = lambda a, b: (ct.uld_terms(a, b, top_k=3, with_bound=True))
  def masked_everywhere(x):
    value, bound = fn(x, t)
    return jnp.where(needed, value, 0), jnp.where(needed, bound, 0)
  only = lambda x: ct._only_where(needed, fn, x, t, chunk_size=4)
  for got, want in zip(only(s), masked_everywhere(s)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-7)
  weights = jnp.asarray(rng.normal(size=(2, 3, 23)), jnp.float32)
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x)[0] * weights))(s)
  np.testing.assert_allclose(np.asarray(grad(only)), np.asarray(grad(masked_everywhere)),
                             rtol=1e-6, atol=1e-7)


def test_only_where_evaluates_only_the_columns_a_row_needs():
  """Rows of 23 positions in columns of 4; no row needs more than 5 positions, so after
  ordering them needed-first only the first 2 of 6 columns are evaluated."""
  rng = np.random.default_rng(6)
  needed = np.zeros((3, 23), bool)
  for row, count in enumerate([5, 2, 0]):
    needed[row, rng.choice(23, count, replace=False)] = True
  calls = []
  def per_position(a, b):
    jax.debug.callback(lambda: calls.append(1))
    return ct.uld_terms(a, b)
  s = jnp.asarray(rng.normal(size=(3, 23, 6)), jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 23, 9)), jnp.float32)
  got = ct._only_where(jnp.asarray(needed), per_position, s, t, chunk_size=4)
  jax.block_until_ready(got)
  jax.effects_barrier()
  assert len(calls) == 2
  np.testing.assert_allclose(np.asarray(got), np.where(needed, np.asarray(ct.uld_terms(s, t)), 0),
                             rtol=1e-6, atol=1e-7)


def test_aligned_kd_terms_skip_nothing_they_need_and_broadcast_their_masks():
  """The method's path (a bound, ``aligned``) against the term written out everywhere; a
  mask of the positions alone broadcasts over the batch; a single position (rank 0)."""
  rng = np.random.default_rng(7)
  s = jnp.asarray(rng.normal(size=(2, 5, 6)) * 2, jnp.float32)
  t = jnp.asarray(rng.normal(size=(2, 5, 8)) * 2, jnp.float32)
  vocab_map = jnp.array([2, -1, 0, 5, -1, -1, 1, -1])
  exact = jnp.asarray(rng.random((2, 5)) > 0.5)
  aligned = jnp.asarray(rng.random((2, 5)) > 0.3)
  value, bound = ct.aligned_kd_terms(s, t, vocab_map, exact, top_k=3, with_bound=True,
                                     aligned=aligned)
  kl = ct.matched_kl_terms(s, t, vocab_map)
  uld, uld_bound = ct.uld_terms(s, t, top_k=3, with_bound=True)
  used = aligned | exact            # where the term is defined (0 at unaligned ULD positions)
  np.testing.assert_allclose(np.where(used, value, 0), np.where(
      used, np.where(exact, kl, uld), 0), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.where(used, bound, 0), np.where(
      used & ~exact, uld_bound, 0), rtol=1e-6, atol=1e-7)
  row_mask = exact[0]               # [T]: broadcast over the batch
  np.testing.assert_allclose(ct.aligned_kd_terms(s, t, vocab_map, row_mask),
                             np.where(row_mask, kl, ct.uld_terms(s, t)), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(ct.aligned_kd_terms(s[0, 0], t[0, 0], vocab_map, False),
                             ct.uld_terms(s[0, 0], t[0, 0]), rtol=1e-6)


def test_aligned_kd_is_finite_where_either_side_puts_no_mass_on_a_shared_token():
  s = jnp.array([[0.0, -1e9, 2.0]])       # student token 1 has probability 0
  t = jnp.array([[1.0, 0.5, 0.0, -1e9]])  # teacher token 3 has probability 0
  vocab_map = jnp.array([0, 2, -1, 1])    # teacher 3 ↔ student 1: both 0
  loss, grad = jax.value_and_grad(
      lambda x: ct.aligned_kd_loss(x, t, None, vocab_map, alpha=0.0))(s)
  assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
  check_grads(lambda x: ct.aligned_kd_loss(x, t, jnp.array([2]), vocab_map, alpha=0.5),
              (jnp.array([[0.3, -1.0, 2.0]]),), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)


def test_truncated_uld_is_a_lower_bound_within_twice_the_smaller_tail():
  rng = np.random.default_rng(4)
  s = rng.normal(size=(3, 5, 12)) * 1.5
  t = rng.normal(size=(3, 5, 20)) * 1.5
  exact = _uld_numpy(s, t, 1.0)
  p, q = _softmax(t), _softmax(s)
  for k in (1, 3, 8):
    p_top, q_top = -np.sort(-p, -1)[..., :k], -np.sort(-q, -1)[..., :k]
    p_tail, q_tail = 1 - p_top.sum(-1), 1 - q_top.sum(-1)
    expected = np.abs(p_top - q_top).sum(-1) + np.abs(p_tail - q_tail)
    got, bound = ct.uld_terms(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                              top_k=k, with_bound=True)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bound), 2 * np.minimum(p_tail, q_tail), atol=1e-6)
    assert np.all(expected <= exact + 1e-9) and np.all(exact - expected <= bound + 1e-5)
  # top_k at or past the shorter vocabulary is the exact form, with no gap.
  got, bound = ct.uld_terms(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32),
                            top_k=12, with_bound=True)
  np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(bound).max()) == 0.0


@pytest.mark.parametrize("student_vocab,teacher_vocab", [(12, 20), (20, 12)])
@pytest.mark.parametrize("top_k", [0, 1, 3, 8, 12, 19, 30])
def test_uld_from_the_teachers_sorted_side_is_uld(student_vocab, teacher_vocab, top_k):
  # The teacher's side computed once (sorted_teacher, kept at width min(top_k, V_t), or V_t
  # when exact) gives uld_terms' value, bound and gradient at every truncation.
  rng = np.random.default_rng(top_k)
  s = jnp.asarray(rng.normal(size=(3, 5, student_vocab)) * 1.5, jnp.float32)
  t = jnp.asarray(rng.normal(size=(3, 5, teacher_vocab)) * 1.5, jnp.float32)
  aligned = jnp.asarray(rng.random((3, 5)) < 0.8)
  for temperature in (1.0, 2.0):
    width = min(top_k, teacher_vocab) if top_k else teacher_vocab
    teacher = ct.sorted_teacher(t, aligned, temperature=temperature, width=width)
    assert teacher.top.shape == (3, 5, width)
    np.testing.assert_array_equal(np.asarray(teacher[jnp.array([2, 0])].aligned),
                                  np.asarray(aligned)[[2, 0]])
    live = ct.uld_terms(s, t, temperature=temperature, top_k=top_k, with_bound=True)
    cached = ct.uld_terms_from_sorted(s, teacher, temperature=temperature, with_bound=True)
    np.testing.assert_allclose(np.asarray(cached[0]), np.asarray(live[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cached[1]), np.asarray(live[1]), atol=1e-6)
    if top_k == 0 or top_k >= min(student_vocab, teacher_vocab):     # exact: no gap at all
      assert float(jnp.abs(cached[1]).max()) == 0.0
    grad_live = jax.grad(lambda x: ct.uld_terms(x, t, temperature=temperature,
                                                top_k=top_k).sum())(s)
    grad_cached = jax.grad(lambda x: ct.uld_terms_from_sorted(
        x, teacher, temperature=temperature).sum())(s)
    np.testing.assert_allclose(np.asarray(grad_cached), np.asarray(grad_live), atol=1e-6)
