"""Tests for kd_jax.losses against closed forms and float64 NumPy references."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import optax
import pytest

from kd_jax import divergences
from kd_jax import losses

PROB_DIVERGENCES = sorted(divergences.PROBABILITY_DIVERGENCES)


# ---------------------------------------------------------------------------
# Independent float64 NumPy references.
# ---------------------------------------------------------------------------


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  m = np.max(x, axis=-1, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def np_kl(s, t, T):
  """Per-row KL(softmax(t/T) ‖ softmax(s/T))."""
  log_p, log_q = np_log_softmax(np.asarray(t) / T), np_log_softmax(np.asarray(s) / T)
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def np_ce(logits, labels):
  log_q = np_log_softmax(logits)
  return -np.take_along_axis(log_q, np.asarray(labels)[..., None], axis=-1)[..., 0]


def np_binary_kl(a, b):
  return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def np_tckd_nckd(s, t, y, T):
  """Per-row (TCKD, NCKD) straight from the DKD paper's definitions."""
  p, q = np.exp(np_log_softmax(t / T)), np.exp(np_log_softmax(s / T))
  tckd, nckd = [], []
  for i, label in enumerate(y):
    others = np.arange(p.shape[-1]) != label
    tckd.append(np_binary_kl(p[i, label], q[i, label]))
    p_hat = p[i, others] / p[i, others].sum()
    q_hat = q[i, others] / q[i, others].sum()
    nckd.append(np.sum(p_hat * np.log(p_hat / q_hat)))
  return np.array(tckd), np.array(nckd)


def np_unit_rows(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_attention(s, t, p):
  def att(f):
    a = np.mean(np.abs(np.asarray(f, np.float64)) ** p, axis=-1)
    return np_unit_rows(a.reshape(len(a), -1))
  return np.mean((att(s) - att(t)) ** 2)


def np_huber(x):
  return np.where(np.abs(x) <= 1, 0.5 * x ** 2, np.abs(x) - 0.5)


def np_rkd_potentials(x):
  """Normalised distances over distinct pairs, cosines over distinct triplets."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  n = len(x)
  pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
  dist = {(i, j): np.linalg.norm(x[i] - x[j]) for i, j in pairs}
  mu = np.mean(list(dist.values()))
  triplets = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)
              if len({i, j, k}) == 3]
  cos = {(i, j, k): np.dot(x[j] - x[i], x[k] - x[i])
                    / np.linalg.norm(x[j] - x[i]) / np.linalg.norm(x[k] - x[i])
         for i, j, k in triplets}
  return {kk: v / mu for kk, v in dist.items()}, cos


def np_rkd(s, t, wd, wa):
  ds, cs = np_rkd_potentials(s)
  dt, ct = np_rkd_potentials(t)
  dist_term = np.mean([np_huber(ds[k] - dt[k]) for k in ds])
  angle_term = np.mean([np_huber(cs[k] - ct[k]) for k in cs])
  return wd * dist_term + wa * angle_term


def np_sp(s, t):
  def gram(x):
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return np_unit_rows(x @ x.T)
  return np.sum((gram(s) - gram(t)) ** 2) / len(s) ** 2


def np_pkt(s, t, eps=1e-7):
  def cond(x):
    u = np_unit_rows(np.asarray(x, np.float64).reshape(len(x), -1))
    k = (u @ u.T + 1) / 2
    return k / k.sum(axis=1, keepdims=True)
  p, q = cond(t), cond(s)
  return np.mean(p * np.log((p + eps) / (q + eps)))


def rand(seed, *shape, scale=1.0):
  return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


LOGITS_S = rand(0, 4, 7, scale=3.0)
LOGITS_T = rand(1, 4, 7, scale=3.0)
LABELS = np.array([0, 3, 6, 2], np.int32)


# ---------------------------------------------------------------------------
# kd_loss
# ---------------------------------------------------------------------------


def test_kd_alpha_one_is_optax_cross_entropy():
  expected = optax.softmax_cross_entropy_with_integer_labels(
      LOGITS_S, LABELS).mean()
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=1.0, temperature=4.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  np.testing.assert_allclose(got, np_ce(LOGITS_S, LABELS).mean(), rtol=1e-5)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 20.0])
def test_kd_alpha_zero_kl_is_t_squared_kl(temperature):
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=0.0,
                       temperature=temperature)
  expected = temperature ** 2 * np_kl(LOGITS_S, LOGITS_T, temperature).mean()
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_kd_mixes_ce_and_scaled_kl():
  alpha, temperature = 0.3, 2.5
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=alpha,
                       temperature=temperature)
  expected = np.mean(alpha * np_ce(LOGITS_S, LABELS) + (1 - alpha)
                     * temperature ** 2 * np_kl(LOGITS_S, LOGITS_T, temperature))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  assert got.dtype == jnp.float32 and got.shape == ()


def test_kd_labels_may_be_none_only_for_pure_distillation():
  got = losses.kd_loss(LOGITS_S, LOGITS_T, None, alpha=0.0, temperature=2.0)
  np.testing.assert_allclose(got, 4.0 * np_kl(LOGITS_S, LOGITS_T, 2.0).mean(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="labels"):
    losses.kd_loss(LOGITS_S, LOGITS_T, None, alpha=0.5)


def test_kd_cosine_and_mse_get_no_t_squared():
  s, t = LOGITS_S.astype(np.float64), LOGITS_T.astype(np.float64)
  mse = np.mean((s - t) ** 2, axis=-1).mean()
  cos = np.mean(1 - np.sum(np_unit_rows(s) * np_unit_rows(t), axis=-1))
  for name, expected in (("mse", mse), ("cosine", cos)):
    got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, divergence=name, alpha=0.0,
                         temperature=4.0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=name)


def test_kd_passes_divergence_params():
  # js with beta = 0 is forward KL (GKD convention), so gets T²·KL.
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, divergence="js", beta=0.0,
                       alpha=0.0, temperature=3.0)
  np.testing.assert_allclose(got, 9.0 * np_kl(LOGITS_S, LOGITS_T, 3.0).mean(),
                             rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_hinton_gradient_identity(temperature):
  # d(T²·KL(p‖q))/dz_s = T·(q − p) per row; the batch mean divides by B.
  grad = jax.jit(jax.grad(lambda s: losses.kd_loss(
      s, LOGITS_T, None, alpha=0.0, temperature=temperature)))(LOGITS_S)
  p = np.exp(np_log_softmax(LOGITS_T / temperature))
  q = np.exp(np_log_softmax(LOGITS_S / temperature))
  expected = temperature * (q - p) / len(LOGITS_S)
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_kd_traced_temperature_and_alpha_under_jit():
  fn = jax.jit(lambda T, a: losses.kd_loss(LOGITS_S, LOGITS_T, LABELS,
                                           temperature=T, alpha=a))
  got = fn(jnp.float32(3.0), jnp.float32(0.25))
  expected = np.mean(0.25 * np_ce(LOGITS_S, LABELS)
                     + 0.75 * 9.0 * np_kl(LOGITS_S, LOGITS_T, 3.0))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
    (dict(divergence="nope"), "kl"),
])
def test_kd_rejects_invalid_python_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, **kwargs)


def test_kd_masked_mean_over_selected_rows():
  mask = np.array([True, False, True, False])
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=0.5, temperature=2.0,
                       mask=mask)
  per_row = 0.5 * np_ce(LOGITS_S, LABELS) + 0.5 * 4.0 * np_kl(LOGITS_S, LOGITS_T, 2.0)
  np.testing.assert_allclose(got, per_row[mask].mean(), rtol=1e-5)


def test_kd_sequence_mask_full_and_prefix():
  s, t = rand(2, 2, 3, 5), rand(3, 2, 3, 5)
  labels = np.array([[0, 1, 2], [3, 4, 0]], np.int32)
  per_pos = 0.5 * np_ce(s, labels) + 0.5 * np_kl(s, t, 1.0)
  kd = jax.jit(losses.kd_loss)
  mask = np.array([[True, True, False], [False, True, False]])
  np.testing.assert_allclose(kd(s, t, labels, mask=mask), per_pos[mask].mean(),
                             rtol=1e-5)
  rows = np.array([False, True])
  np.testing.assert_allclose(kd(s, t, labels, mask=rows), per_pos[1].mean(),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="mask shape"):
    kd(s, t, labels, mask=np.ones((3,), bool))


def test_kd_large_logits_and_shared_minus_inf():
  s, t = rand(4, 3, 6, scale=1e4), rand(5, 3, 6, scale=1e4)
  labels = np.array([1, 2, 0], np.int32)
  expected = np.mean(0.5 * np_ce(s, labels) + 0.5 * 16.0 * np_kl(s, t, 4.0))
  loss, grad = jax.jit(jax.value_and_grad(lambda x: losses.kd_loss(
      x, t, labels, temperature=4.0)))(s)
  np.testing.assert_allclose(loss, expected, rtol=1e-4)
  assert np.all(np.isfinite(grad))

  # Masked vocabulary: -inf shared by both sides equals dropping those entries.
  s_inf, t_inf = LOGITS_S.copy(), LOGITS_T.copy()
  s_inf[:, 5:] = t_inf[:, 5:] = -np.inf
  labels = np.array([0, 1, 2, 4], np.int32)
  loss, grad = jax.jit(jax.value_and_grad(lambda x: losses.kd_loss(
      x, t_inf, labels, temperature=2.0)))(s_inf)
  expected = np.mean(0.5 * np_ce(LOGITS_S[:, :5], labels)
                     + 0.5 * 4.0 * np_kl(LOGITS_S[:, :5], LOGITS_T[:, :5], 2.0))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert np.all(np.isfinite(grad)) and np.all(grad[:, 5:] == 0)


def test_kd_bf16_inputs():
  s16, t16 = jnp.asarray(LOGITS_S, jnp.bfloat16), jnp.asarray(LOGITS_T, jnp.bfloat16)
  got = losses.kd_loss(s16, t16, LABELS, temperature=4.0)
  assert got.dtype == jnp.float32
  s_r, t_r = np.asarray(s16, np.float64), np.asarray(t16, np.float64)
  exact = np.mean(0.5 * np_ce(s_r, LABELS) + 0.5 * 16.0 * np_kl(s_r, t_r, 4.0))
  np.testing.assert_allclose(got, exact, rtol=1e-5)


# ---------------------------------------------------------------------------
# dkd_loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_matches_paper_definitions(temperature):
  tckd, nckd = np_tckd_nckd(LOGITS_S.astype(np.float64), LOGITS_T.astype(np.float64),
                            LABELS, temperature)
  got = losses.dkd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=1.0, beta=8.0,
                        temperature=temperature)
  np.testing.assert_allclose(
      got, temperature ** 2 * np.mean(tckd + 8.0 * nckd), rtol=1e-5)
  # α = β = 1: the sum of the two terms, per the paper's formula.
  got = losses.dkd_loss(LOGITS_S, LOGITS_T, LABELS, alpha=1.0, beta=1.0,
                        temperature=temperature)
  np.testing.assert_allclose(got, temperature ** 2 * np.mean(tckd + nckd),
                             rtol=1e-5)


def test_dkd_decomposition_identity():
  # KL(p‖q) = TCKD + (1 − p_y)·NCKD (Zhao et al. 2022, Eq. 4), row by row.
  temperature = 2.0
  p = np.exp(np_log_softmax(LOGITS_T / temperature))
  dkd = jax.jit(losses.dkd_loss)  # traced alpha, beta and mask: one compile
  for i, label in enumerate(LABELS):
    only_row_i = np.arange(len(LABELS)) == i
    row = lambda a, b: dkd(LOGITS_S, LOGITS_T, LABELS, alpha=a, beta=b,
                           temperature=temperature, mask=only_row_i) / temperature ** 2
    tckd, nckd = row(1.0, 0.0), row(0.0, 1.0)
    kl = np_kl(LOGITS_S[i], LOGITS_T[i], temperature)
    np.testing.assert_allclose(tckd + (1 - p[i, label]) * nckd, kl, rtol=1e-5)


def test_dkd_identical_inputs_give_zero_and_mask():
  np.testing.assert_allclose(losses.dkd_loss(LOGITS_T, LOGITS_T, LABELS), 0.0,
                             atol=1e-6)
  mask = np.array([False, True, True, False])
  tckd, nckd = np_tckd_nckd(LOGITS_S, LOGITS_T, LABELS, 4.0)
  got = losses.dkd_loss(LOGITS_S, LOGITS_T, LABELS, mask=mask)
  np.testing.assert_allclose(got, 16.0 * np.mean((tckd + 8 * nckd)[mask]),
                             rtol=1e-5)


def test_dkd_confident_large_logits_and_bf16():
  # p_y ≈ 1 to float precision: naive log(1 − p_y) would be log 0.
  s, t = rand(6, 3, 5, scale=1e4), rand(7, 3, 5, scale=1e4)
  labels = np.argmax(t, axis=-1).astype(np.int32)
  loss, grad = jax.jit(jax.value_and_grad(
      lambda x: losses.dkd_loss(x, t, labels)))(s)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  s16, t16 = jnp.asarray(LOGITS_S, jnp.bfloat16), jnp.asarray(LOGITS_T, jnp.bfloat16)
  got = losses.dkd_loss(s16, t16, LABELS)
  assert got.dtype == jnp.float32
  # Against the float64 reference on the bf16-rounded inputs (exact in float64).
  s_r, t_r = np.asarray(s16, np.float64), np.asarray(t16, np.float64)
  tckd, nckd = np_tckd_nckd(s_r, t_r, LABELS, 4.0)
  np.testing.assert_allclose(got, 16.0 * np.mean(tckd + 8 * nckd), rtol=1e-5)


# ---------------------------------------------------------------------------
# Feature and relational losses.
# ---------------------------------------------------------------------------

FEAT_S = rand(10, 5, 4, 4, 3)   # NHWC, 3 channels
FEAT_T = rand(11, 5, 4, 4, 6)   # NHWC, 6 channels
EMB_S = rand(12, 5, 4)
EMB_T = rand(13, 5, 7)
EMB_T[2] *= 8.0  # an outlier row pushes some distance differences past δ = 1


def test_hint_loss_reference_and_shape_check():
  t = rand(14, 5, 4, 4, 3)
  np.testing.assert_allclose(losses.hint_loss(FEAT_S, t),
                             np.mean((FEAT_S.astype(np.float64) - t) ** 2),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="equal shapes"):
    losses.hint_loss(FEAT_S, FEAT_T)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_attention_transfer_reference(p):
  np.testing.assert_allclose(losses.attention_transfer_loss(FEAT_S, FEAT_T, p=p),
                             np_attention(FEAT_S, FEAT_T, p), rtol=1e-5)


def test_attention_transfer_needs_equal_spatial_shape():
  with pytest.raises(ValueError, match="H, W"):
    losses.attention_transfer_loss(FEAT_S, rand(0, 5, 2, 2, 6))


def test_rkd_reference_both_huber_branches():
  rkd = jax.jit(losses.rkd_loss)
  np.testing.assert_allclose(rkd(EMB_S, EMB_T), np_rkd(EMB_S, EMB_T, 25.0, 50.0),
                             rtol=1e-5)
  np.testing.assert_allclose(rkd(EMB_S, EMB_T, 1.0, 0.0),
                             np_rkd(EMB_S, EMB_T, 1.0, 0.0), rtol=1e-5)
  # The outlier row makes some distance differences reach Huber's linear branch.
  ds, _ = np_rkd_potentials(EMB_S)
  dt, _ = np_rkd_potentials(EMB_T)
  assert max(abs(ds[k] - dt[k]) for k in ds) > 1.0


def test_rkd_is_scale_and_translation_invariant():
  np.testing.assert_allclose(jax.jit(losses.rkd_loss)(EMB_S, 3.0 * EMB_S + 1.0),
                             0.0, atol=1e-4)


def test_similarity_preserving_reference():
  np.testing.assert_allclose(losses.similarity_preserving_loss(FEAT_S, FEAT_T),
                             np_sp(FEAT_S, FEAT_T), rtol=1e-5)
  np.testing.assert_allclose(losses.similarity_preserving_loss(EMB_S, EMB_T),
                             np_sp(EMB_S, EMB_T), rtol=1e-5)


def test_pkt_reference():
  np.testing.assert_allclose(losses.pkt_loss(EMB_S, EMB_T), np_pkt(EMB_S, EMB_T),
                             rtol=1e-5)
  # The feature maps' PKT is a KL between two nearly equal distributions (6.5e-4): float32
  # cancellation leaves ~1.3e-5 relative error on some CPUs (AMD EPYC, XLA 0.10.x), so the
  # bound is set from float32's precision of the terms, not of their small difference.
  np.testing.assert_allclose(losses.pkt_loss(FEAT_S, FEAT_T),
                             np_pkt(FEAT_S, FEAT_T), rtol=1e-4)


# Each entry: loss fn on (student, teacher, mask), student, teacher, float64 reference.
RELATIONAL = {
    "rkd": (losses.rkd_loss, EMB_S, EMB_T, lambda s, t: np_rkd(s, t, 25.0, 50.0)),
    "sp": (losses.similarity_preserving_loss, FEAT_S, FEAT_T, np_sp),
    "pkt": (losses.pkt_loss, EMB_S, EMB_T, np_pkt),
    "at": (losses.attention_transfer_loss, FEAT_S, FEAT_T,
           lambda s, t: np_attention(s, t, 2)),
    "hint": (losses.hint_loss, EMB_S, rand(15, 5, 4),
             lambda s, t: np.mean((s.astype(np.float64) - t) ** 2)),
}


@pytest.mark.parametrize("name", sorted(RELATIONAL))
def test_feature_losses_mask_selects_rows(name):
  fn, s, t, reference = RELATIONAL[name]
  mask = np.array([True, False, True, True, False])
  # Garbage in masked-out rows must not matter.
  s_pad, t_pad = s.copy(), t.copy()
  s_pad[~mask] = 1e3
  t_pad[~mask] = -7.0
  np.testing.assert_allclose(jax.jit(fn)(s_pad, t_pad, mask=mask),
                             reference(s[mask], t[mask]), rtol=1e-5)


ALL_MASKED_CASES = {
    "kd": lambda s, m: losses.kd_loss(s, LOGITS_T, LABELS, temperature=2.0, mask=m),
    "dkd": lambda s, m: losses.dkd_loss(s, LOGITS_T, LABELS, mask=m),
    "hint": lambda s, m: losses.hint_loss(s, LOGITS_T, mask=m),
    "at": lambda s, m: losses.attention_transfer_loss(
        s.reshape(4, 7, 1, 1), LOGITS_T.reshape(4, 7, 1, 1), mask=m),
    "rkd": lambda s, m: losses.rkd_loss(s, LOGITS_T[:, :3], mask=m),
    "sp": lambda s, m: losses.similarity_preserving_loss(s, LOGITS_T, mask=m),
    "pkt": lambda s, m: losses.pkt_loss(s, LOGITS_T, mask=m),
}


@pytest.mark.parametrize("name", sorted(ALL_MASKED_CASES))
def test_all_masked_gives_zero_and_finite_gradient(name):
  fn = ALL_MASKED_CASES[name]
  mask = np.zeros((4,), bool)
  value, grad = jax.jit(jax.value_and_grad(fn))(LOGITS_S, mask)
  assert value == 0.0 and value.dtype == jnp.float32
  assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_rkd_with_too_few_rows_is_zero():
  # One row: no pairs. Two rows: both normalised distances are 1, no triplets.
  for mask in ([True, False, False, False, False], [True, True, False, False, False]):
    value, grad = jax.jit(jax.value_and_grad(
        lambda s, m: losses.rkd_loss(s, EMB_T, mask=m)))(EMB_S, np.array(mask))
    assert abs(value) < 1e-6 and np.all(np.isfinite(grad))


GRAD_CASES = {
    "kd": (lambda s: losses.kd_loss(s, LOGITS_T, LABELS, temperature=2.0),
           LOGITS_S),
    "kd_js": (lambda s: losses.kd_loss(s, LOGITS_T, LABELS, divergence="js",
                                       temperature=3.0, alpha=0.2), LOGITS_S),
    "dkd": (lambda s: losses.dkd_loss(s, LOGITS_T, LABELS), LOGITS_S),
    "hint": (lambda s: losses.hint_loss(s, EMB_T[:, :4]), EMB_S),
    "at": (lambda s: losses.attention_transfer_loss(s, FEAT_T), FEAT_S),
    "rkd": (lambda s: losses.rkd_loss(s, EMB_T), EMB_S),
    "sp": (lambda s: losses.similarity_preserving_loss(s, EMB_T), EMB_S),
    "pkt": (lambda s: losses.pkt_loss(s, EMB_T), EMB_S),
}


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
def test_check_grads(name):
  fn, x = GRAD_CASES[name]
  # Finite differences need float64 to be a meaningful check; jit keeps the many
  # evaluations cheap.
  with jax.enable_x64(True):
    check_grads(jax.jit(fn), (x.astype(np.float64),), order=1, modes=("rev",),
                atol=1e-5, rtol=1e-5, eps=1e-6)


# ---------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------

_logits = hnp.arrays(np.float32, (3, 5),
                     elements=st.floats(-30, 30, width=32))
# Jitted once per shape (temperature traced) so that examples do not re-dispatch.
_kd_jit = jax.jit(losses.kd_loss, static_argnames=("divergence", "alpha"))
_dkd_jit = jax.jit(losses.dkd_loss)
_features = hnp.arrays(np.float32, (4, 3),
                       elements=st.floats(-5, 5, width=32))


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(s=_logits, t=_logits, temperature=st.floats(0.5, 20.0),
                  name=st.sampled_from(PROB_DIVERGENCES))
def test_pure_distillation_is_nonnegative(s, t, temperature, name):
  loss = _kd_jit(s, t, None, divergence=name, alpha=0.0, temperature=temperature)
  assert loss >= -1e-5 * temperature ** 2
  assert _dkd_jit(s, t, np.array([0, 2, 4]), temperature=temperature) >= -1e-4


_hint_jit = jax.jit(losses.hint_loss)
_sp_jit = jax.jit(losses.similarity_preserving_loss)
_at_jit = jax.jit(losses.attention_transfer_loss)


@hypothesis.settings(max_examples=30, deadline=None)
@hypothesis.given(s=_features, t=_features)
def test_symmetric_feature_losses(s, t):
  # Huber and squared errors are symmetric, so swapping the roles changes nothing.
  s4, t4 = s.reshape(4, 3, 1, 1), t.reshape(4, 3, 1, 1)
  for fn, a, b in ((_hint_jit, s, t), (_sp_jit, s, t), (_at_jit, s4, t4)):
    ab, ba = fn(a, b), fn(b, a)
    assert ab >= 0
    np.testing.assert_allclose(ab, ba, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------
# Numerics that cannot turn into NaN: static loss weights, padding labels.
# ---------------------------------------------------------------------------


def _objective_loss_and_grad(alpha, student, teacher, labels, mask):
  import ml_collections
  from kd_jax import config as config_lib
  from kd_jax import methods
  c = ml_collections.ConfigDict(dict(config_lib.base_config().to_dict(), alpha=alpha))
  objective = methods.make_objective(c)

  def loss(s):
    value, _ = objective(jnp.int32(3), (s, {}), (teacher, {}), labels, mask)
    return value
  return jax.jit(jax.value_and_grad(loss))(student)


def test_alpha_one_never_computes_the_divergence():
  # The student gives class 2 zero probability where the teacher does not: KL(p‖q) = inf,
  # and 0 · inf = NaN if the divergence were computed and weighted by 1 − α = 0.
  student = np.array([[2.0, 0.5, -np.inf], [0.0, 1.0, -np.inf]], np.float32)
  teacher = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]], np.float32)
  labels = np.array([0, 1], np.int32)
  assert np.isinf(losses.kd_loss(student, teacher, labels, alpha=0.0))
  for alpha in (1.0, {"schedule": "constant", "init": 1.0}):
    value, grad = _objective_loss_and_grad(alpha, student, teacher, labels, None)
    np.testing.assert_allclose(value, np.mean(np_ce(student, labels)), rtol=1e-6)
    assert np.all(np.isfinite(np.asarray(grad)[:, :2]))


@pytest.mark.parametrize("pad", [-100, 7, 2**30])
def test_padding_labels_under_the_mask_give_finite_values_and_gradients(pad):
  s, t = rand(11, 2, 3, 5), rand(12, 2, 3, 5)
  labels = np.array([[0, 1, pad], [3, pad, pad]], np.int32)
  mask = labels != pad
  clean = np.where(mask, labels, 0)
  per_position = 0.5 * np_ce(s, clean) + 0.5 * np_kl(s, t, 1.0)
  for fn in (lambda x: losses.kd_loss(x, t, labels, mask=mask),
             lambda x: losses.cross_entropy(x, labels, mask),
             lambda x: losses.dkd_loss(x, t, labels, mask=mask)):
    # debug_nans raises on a NaN in any intermediate (run eagerly), also one jnp.where hides
    # from the value (optax's cross-entropy of an out-of-range label is NaN).
    with jax.debug_nans(True):
      value, grad = jax.value_and_grad(fn)(s)   # eager: every primitive is checked
    assert np.isfinite(value) and np.all(np.isfinite(grad)), fn
    np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)
  np.testing.assert_allclose(losses.kd_loss(s, t, labels, mask=mask), per_position[mask].mean(),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.cross_entropy(s, labels, mask),
                             np_ce(s, clean)[mask].mean(), rtol=1e-5)


def test_kd_loss_takes_the_skew_divergences_alpha_through_divergence_params():
  # `alpha` is kd_loss's CE weight, so skew_kl's own alpha goes in divergence_params.
  from tests.test_divergences import reference
  got = losses.kd_loss(LOGITS_S, LOGITS_T, LABELS, divergence="skew_kl", temperature=2.0,
                       alpha=0.25, divergence_params={"alpha": 0.3})
  expected = np.mean(0.25 * np_ce(LOGITS_S, LABELS) + 0.75 * 4.0 * reference(
      "skew_kl", LOGITS_S, LOGITS_T, temperature=2.0, alpha=0.3))
  np.testing.assert_allclose(got, expected, rtol=1e-5)
