"""Tests for kd_jax.divergences.

Expected values come from the formulas (closed form on hand-made
distributions) or from independent float64 NumPy/SciPy references, never from
running the code under test.
"""

import contextlib
import doctest
import functools
import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

from kd_jax import divergences

LN2 = math.log(2.0)
TEMPERATURES = (0.5, 1.0, 4.0, 20.0)

# (name, params) pairs exercised by the value, gradient and numerics tests.
CASES = (
    ("kl", {}),
    ("reverse_kl", {}),
    ("js", {"beta": 0.0}),
    ("js", {"beta": 0.1}),
    ("js", {"beta": 0.5}),
    ("js", {"beta": 0.9}),
    ("js", {"beta": 1.0}),
    ("skew_kl", {"alpha": 0.0}),
    ("skew_kl", {"alpha": 0.1}),
    ("skew_kl", {"alpha": 0.5}),
    ("skew_reverse_kl", {"alpha": 0.1}),
    ("skew_reverse_kl", {"alpha": 0.9}),
    ("tvd", {}),
    ("cosine", {}),
    ("mse", {}),
)
CASE_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in p.items())}" for n, p in CASES]


@contextlib.contextmanager
def float64():
  """Enables float64 in JAX for the duration (works on every JAX >= 0.4)."""
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


def divergence(name, **params):
  return functools.partial(divergences.get(name), **params)


def value_and_grads(fn, student, teacher):
  """Value of Σ fn and its gradients w.r.t. both inputs."""
  return jax.value_and_grad(lambda s, t: jnp.sum(fn(s, t)), (0, 1))(
      student, teacher)


# ----------------------------------------------------------------------------
# Independent float64 references (NumPy / SciPy, log space so that logits of
# magnitude 1e4 at high temperature do not underflow the mixtures).
# ----------------------------------------------------------------------------


def _np_kl(log_a, log_b):
  """Σ a (log a − log b) with 0 log 0 = 0."""
  a = np.exp(log_a)
  with np.errstate(invalid="ignore"):
    return np.sum(np.where(a > 0, a * (log_a - log_b), 0.0), axis=-1)


def _np_log_mixture(weight, log_a, log_b):
  """log(w·a + (1 − w)·b) with SciPy's weighted logsumexp."""
  weights = np.array([weight, 1 - weight]).reshape((2,) + (1,) * log_a.ndim)
  return scipy.special.logsumexp(np.stack([log_a, log_b]), b=weights, axis=0)


def reference(name, student, teacher, *, temperature=1.0, **params):
  s = np.asarray(student, np.float64)
  t = np.asarray(teacher, np.float64)
  if name == "cosine":
    return 1 - np.sum(s * t, -1) / (np.linalg.norm(s, axis=-1) *
                                    np.linalg.norm(t, axis=-1))
  if name == "mse":
    return np.mean((s - t) ** 2, axis=-1)
  log_p = scipy.special.log_softmax(t / temperature, axis=-1)
  log_q = scipy.special.log_softmax(s / temperature, axis=-1)
  beta = params.get("beta", 0.5)
  alpha = params.get("alpha", 0.1)
  if name == "kl" or (name == "js" and beta == 0):
    return _np_kl(log_p, log_q)
  if name == "reverse_kl" or (name == "js" and beta == 1):
    return _np_kl(log_q, log_p)
  if name == "js":
    log_m = _np_log_mixture(beta, log_p, log_q)
    return beta * _np_kl(log_p, log_m) + (1 - beta) * _np_kl(log_q, log_m)
  if name == "skew_kl":
    return _np_kl(log_p, _np_log_mixture(alpha, log_p, log_q))
  if name == "skew_reverse_kl":
    return _np_kl(log_q, _np_log_mixture(alpha, log_q, log_p))
  if name == "tvd":
    return 0.5 * np.sum(np.abs(np.exp(log_p) - np.exp(log_q)), axis=-1)
  raise AssertionError(name)


# ----------------------------------------------------------------------------
# Registry and validation.
# ----------------------------------------------------------------------------


def test_registry_names():
  assert divergences.NAMES == ("kl", "reverse_kl", "js", "skew_kl",
                               "skew_reverse_kl", "tvd", "cosine", "mse")
  assert divergences.PROBABILITY_DIVERGENCES == frozenset(
      {"kl", "reverse_kl", "js", "skew_kl", "skew_reverse_kl", "tvd"})
  for name in divergences.NAMES:
    assert divergences.get(name) is getattr(divergences, name)


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="not_a_divergence") as error:
    divergences.get("not_a_divergence")
  for name in divergences.NAMES:
    assert name in str(error.value)


@pytest.mark.parametrize("name, params, field", [
    ("js", {"beta": -0.1}, "beta"),
    ("js", {"beta": 1.5}, "beta"),
    ("js", {"beta": float("nan")}, "beta"),
    ("skew_kl", {"alpha": 1.0}, "alpha"),
    ("skew_reverse_kl", {"alpha": -0.2}, "alpha"),
    ("kl", {"temperature": 0.0}, "temperature"),
    ("tvd", {"temperature": -1.0}, "temperature"),
    ("reverse_kl", {"temperature": float("inf")}, "temperature"),
    ("mse", {"temperature": 0}, "temperature"),
])
def test_invalid_params_raise(name, params, field):
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match=field):
    divergences.get(name)(x, x, **params)


def test_unexpected_param_and_shape_mismatch():
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(TypeError):
    divergences.kl(x, x, beta=0.5)
  with pytest.raises(ValueError, match="same shape"):
    divergences.kl(x, np.zeros((2, 4), np.float32))


def test_docstring_examples():
  from kd_jax.objectives import divergences as defined  # kd_jax.divergences re-exports it
  failures, attempted = doctest.testmod(defined)
  assert attempted >= 9 and failures == 0


# ----------------------------------------------------------------------------
# Closed-form values: p = (1/2, 1/2) (teacher), q = (1/4, 3/4) (student).
# ----------------------------------------------------------------------------

P = (0.5, 0.5)
Q = (0.25, 0.75)


def _kl2(a, b):
  return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b))


def _mix(w, a, b):
  return tuple(w * ai + (1 - w) * bi for ai, bi in zip(a, b))


CLOSED_FORM = (
    ("kl", {}, 0.5 * math.log(4 / 3)),
    ("reverse_kl", {}, 0.25 * math.log(0.5) + 0.75 * math.log(1.5)),
    # m = (3/8, 5/8).
    ("js", {"beta": 0.5},
     0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5))
     + 0.5 * (0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))),
    # m = (5/16, 11/16).
    ("js", {"beta": 0.25},
     0.25 * (0.5 * math.log(8 / 5) + 0.5 * math.log(8 / 11))
     + 0.75 * (0.25 * math.log(4 / 5) + 0.75 * math.log(12 / 11))),
    ("js", {"beta": 0.0}, 0.5 * math.log(4 / 3)),
    ("js", {"beta": 1.0}, 0.25 * math.log(0.5) + 0.75 * math.log(1.5)),
    # m = 0.1 p + 0.9 q = (0.275, 0.725).
    ("skew_kl", {"alpha": 0.1},
     0.5 * math.log(0.5 / 0.275) + 0.5 * math.log(0.5 / 0.725)),
    # m = 0.1 q + 0.9 p = (0.475, 0.525).
    ("skew_reverse_kl", {"alpha": 0.1},
     0.25 * math.log(0.25 / 0.475) + 0.75 * math.log(0.75 / 0.525)),
    ("tvd", {}, 0.25),
)


def test_closed_form_helpers_agree_with_table():
  # Cross-checks the hand-simplified table entries against the definitions.
  assert math.isclose(CLOSED_FORM[0][2], _kl2(P, Q))
  m = _mix(0.25, P, Q)
  assert math.isclose(CLOSED_FORM[3][2],
                      0.25 * _kl2(P, m) + 0.75 * _kl2(Q, m))
  assert math.isclose(CLOSED_FORM[7][2], _kl2(Q, _mix(0.1, Q, P)))


@pytest.mark.parametrize("name, params, expected", CLOSED_FORM)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
def test_closed_form_probability(name, params, expected, temperature):
  # Logits T·log p give softmax(logits / T) = p at every temperature.
  teacher = temperature * jnp.log(jnp.array(P))
  student = temperature * jnp.log(jnp.array(Q))
  value = divergences.get(name)(student, teacher, temperature=temperature,
                                **params)
  assert value.shape == () and value.dtype == jnp.float32
  np.testing.assert_allclose(value, expected, rtol=1e-5)


@pytest.mark.parametrize("student, teacher, expected", [
    ((1.0, 0.0, 0.0), (1.0, 1.0, 0.0), 1 - 1 / math.sqrt(2)),
    ((1.0, 2.0, 3.0), (2.0, 4.0, 6.0), 0.0),
    ((1.0, 2.0, 3.0), (-1.0, -2.0, -3.0), 2.0),
    ((1.0, 0.0, 0.0), (0.0, 5.0, 0.0), 1.0),
    ((3.0, 4.0, 0.0), (4.0, 3.0, 0.0), 1 - 24 / 25),
])
@pytest.mark.parametrize("temperature", [1.0, 7.0])
def test_closed_form_cosine(student, teacher, expected, temperature):
  value = divergences.cosine(jnp.array(student), jnp.array(teacher),
                             temperature=temperature)
  np.testing.assert_allclose(value, expected, atol=1e-6)


def test_cosine_of_zero_vector_is_finite():
  zero = jnp.zeros((4, 10))
  x = jnp.asarray(np.random.default_rng(9).standard_normal((4, 10)),
                  jnp.float32)
  np.testing.assert_allclose(divergences.cosine(zero, x), 1.0)
  _, grads = value_and_grads(divergences.cosine, zero, x)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.parametrize("student, teacher, expected", [
    ((1.0, 2.0, 3.0), (1.0, 0.0, 0.0), 13 / 3),
    ((0.0, 0.0, 0.0), (2.0, -2.0, 2.0), 4.0),
    ((1.5, -1.5, 0.5), (1.5, -1.5, 0.5), 0.0),
])
@pytest.mark.parametrize("temperature", [1.0, 7.0])
def test_closed_form_mse(student, teacher, expected, temperature):
  value = divergences.mse(jnp.array(student), jnp.array(teacher),
                          temperature=temperature)
  np.testing.assert_allclose(value, expected, rtol=1e-6)


# ----------------------------------------------------------------------------
# Random logits against the float64 references.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 10), (2, 4, 10), (2, 3, 32768)])
@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_matches_float64_reference(name, params, shape):
  rng = np.random.default_rng(sum(shape))
  student = 3.0 * rng.standard_normal(shape)
  teacher = 3.0 * rng.standard_normal(shape)
  fn = divergences.get(name)
  for temperature in TEMPERATURES:
    value = fn(jnp.asarray(student, jnp.float32),
               jnp.asarray(teacher, jnp.float32),
               temperature=temperature, **params)
    assert value.shape == shape[:-1] and value.dtype == jnp.float32
    expected = reference(name, student, teacher, temperature=temperature,
                         **params)
    np.testing.assert_allclose(value, expected, rtol=2e-4, atol=2e-6,
                               err_msg=f"temperature={temperature}")


def test_jit_with_traced_temperature_and_params():
  # One compiled function for every case keeps this test to a single compile.
  rng = np.random.default_rng(0)
  student, teacher = rng.standard_normal((2, 4, 10))

  @jax.jit
  def all_cases(student, teacher, temperature, params):
    return [divergences.get(name)(student, teacher, temperature=temperature,
                                  **case_params)
            for (name, _), case_params in zip(CASES, params)]

  traced = [{k: jnp.float32(v) for k, v in p.items()} for _, p in CASES]
  values = all_cases(student, teacher, jnp.float32(2.0), traced)
  for (name, params), value in zip(CASES, values):
    expected = reference(name, student, teacher, temperature=2.0, **params)
    np.testing.assert_allclose(value, expected, rtol=2e-4, atol=2e-6,
                               err_msg=f"{name} {params}")


# ----------------------------------------------------------------------------
# Limits and identities.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_identical_inputs_give_zero(name, params):
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 10)) * 5,
                       jnp.float32)
  for temperature in TEMPERATURES:
    value = divergences.get(name)(logits, logits, temperature=temperature,
                                  **params)
    np.testing.assert_allclose(value, 0.0, atol=1e-6)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_js_endpoints_are_forward_and_reverse_kl(temperature):
  rng = np.random.default_rng(2)
  student, teacher = (jnp.asarray(x, jnp.float32)
                      for x in 4 * rng.standard_normal((2, 4, 10)))
  kw = {"temperature": temperature}
  kl = divergences.kl(student, teacher, **kw)
  reverse = divergences.reverse_kl(student, teacher, **kw)
  np.testing.assert_array_equal(divergences.js(student, teacher, beta=0, **kw),
                                kl)
  np.testing.assert_array_equal(divergences.js(student, teacher, beta=1, **kw),
                                reverse)
  np.testing.assert_array_equal(
      divergences.skew_kl(student, teacher, alpha=0, **kw), kl)
  np.testing.assert_array_equal(
      divergences.skew_reverse_kl(student, teacher, alpha=0, **kw), reverse)
  # Near the endpoints the formula itself vanishes; only the endpoints switch.
  assert float(jnp.max(divergences.js(student, teacher, beta=1e-6, **kw))) < 1e-4


def test_js_traced_endpoints_match_static():
  rng = np.random.default_rng(3)
  student, teacher = (jnp.asarray(x, jnp.float32)
                      for x in rng.standard_normal((2, 4, 10)))
  traced_js = jax.jit(divergences.js)
  np.testing.assert_allclose(traced_js(student, teacher, beta=jnp.float32(0)),
                             divergences.kl(student, teacher), rtol=1e-6)
  np.testing.assert_allclose(traced_js(student, teacher, beta=jnp.float32(1)),
                             divergences.reverse_kl(student, teacher),
                             rtol=1e-6)


def test_disjoint_supports_reach_the_bounds():
  # Teacher and student put their mass on disjoint classes: JS(½) = ln 2 and
  # TVD = 1. Rows 0-1 use huge finite logits, rows 2-3 −inf off the support.
  teacher = np.full((4, 10), -1e4, np.float32)
  student = np.full((4, 10), -1e4, np.float32)
  teacher[:2, 0] = student[:2, 1] = 1e4
  teacher[2:], student[2:] = -np.inf, -np.inf
  teacher[2:, :5] = np.arange(5)
  student[2:, 5:] = -np.arange(5)
  np.testing.assert_allclose(divergences.js(student, teacher), LN2, rtol=1e-6)
  np.testing.assert_allclose(divergences.tvd(student, teacher), 1.0, rtol=1e-6)


def test_kl_gradient_is_hinton_identity():
  # d KL(p‖q) / d student_logits = (q − p) / T.
  rng = np.random.default_rng(4)
  student, teacher = rng.standard_normal((2, 4, 10))
  temperature = 3.0
  grad = jax.grad(lambda s: jnp.sum(divergences.kl(
      s, jnp.asarray(teacher, jnp.float32), temperature=temperature)))(
          jnp.asarray(student, jnp.float32))
  p = scipy.special.softmax(teacher / temperature, axis=-1)
  q = scipy.special.softmax(student / temperature, axis=-1)
  np.testing.assert_allclose(grad, (q - p) / temperature, atol=1e-6)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_check_grads_float64(name, params):
  fn = divergence(name, temperature=2.0, **params)
  rng = np.random.default_rng(5)
  with float64():
    student, teacher = (jnp.asarray(x, jnp.float64)
                        for x in 2 * rng.standard_normal((2, 4, 10)))
    assert fn(student, teacher).dtype == jnp.float64
    check_grads(fn, (student, teacher), order=1, modes=("rev",))


# ----------------------------------------------------------------------------
# Numerics: huge logits, masked vocabulary, bf16.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("temperature", [0.5, 1.0, 20.0])
def test_huge_logits_finite(name, params, temperature):
  rng = np.random.default_rng(6)
  student, teacher = 1e4 * rng.standard_normal((2, 4, 10))
  fn = divergence(name, temperature=temperature, **params)
  s32, t32 = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
  value = fn(s32, t32)
  total, grads = value_and_grads(fn, s32, t32)
  assert bool(jnp.isfinite(total))
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
  expected = reference(name, np.asarray(s32), np.asarray(t32),
                       temperature=temperature, **params)
  np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_shared_masked_vocabulary(name, params):
  rng = np.random.default_rng(7)
  student, teacher = 3 * rng.standard_normal((2, 4, 10))
  masked = np.zeros(10, bool)
  masked[[0, 5, 6, 9]] = True
  student[..., masked] = -np.inf
  teacher[..., masked] = -np.inf
  fn = divergence(name, temperature=1.5, **params)
  s32, t32 = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32)
  # The value equals the divergence over the unmasked entries alone.
  np.testing.assert_allclose(
      fn(s32, t32),
      reference(name, student[..., ~masked], teacher[..., ~masked],
                temperature=1.5, **params),
      rtol=2e-4, atol=2e-6)
  _, grads = value_and_grads(fn, s32, t32)
  for grad in grads:
    assert bool(jnp.all(jnp.isfinite(grad)))
    np.testing.assert_array_equal(grad[..., masked], 0.0)


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_bf16_inputs_give_float32(name, params):
  rng = np.random.default_rng(8)
  student, teacher = 2 * rng.standard_normal((2, 4, 10))
  fn = divergence(name, temperature=2.0, **params)
  s16, t16 = jnp.asarray(student, jnp.bfloat16), jnp.asarray(teacher, jnp.bfloat16)
  value = fn(s16, t16)
  assert value.dtype == jnp.float32
  # The bf16 inputs are exact in float64: after the rounding to bf16, the computation
  # must be float32-accurate (not bf16-accurate) against the float64 reference.
  expected = reference(name, np.asarray(s16, np.float64), np.asarray(t16, np.float64),
                       temperature=2.0, **params)
  np.testing.assert_allclose(value, expected, rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# Property-based tests.
# ----------------------------------------------------------------------------

_logits = hnp.arrays(np.float32, (4, 10),
                     elements=st.floats(-30, 30, width=32))
_settings = hypothesis.settings(max_examples=25, deadline=None)


def _rounding_slack(student, teacher, temperature):
  # float32 log-probabilities carry an error of a few ulp of |logits| / T.
  scale = max(np.max(np.abs(student)), np.max(np.abs(teacher))) / temperature
  return 1e-6 * (1.0 + scale)


@_settings
@hypothesis.given(student=_logits, teacher=_logits,
                  temperature=st.sampled_from(TEMPERATURES),
                  case=st.sampled_from(CASES))
def test_non_negative(student, teacher, temperature, case):
  name, params = case
  value = divergences.get(name)(student, teacher, temperature=temperature,
                                **params)
  assert bool(jnp.all(jnp.isfinite(value)))
  assert float(jnp.min(value)) >= -_rounding_slack(student, teacher,
                                                   temperature)


@_settings
@hypothesis.given(student=_logits, teacher=_logits,
                  temperature=st.sampled_from(TEMPERATURES))
def test_bounds(student, teacher, temperature):
  js = divergences.js(student, teacher, temperature=temperature)
  tvd = divergences.tvd(student, teacher, temperature=temperature)
  cosine = divergences.cosine(student, teacher)
  slack = _rounding_slack(student, teacher, temperature)
  assert float(jnp.max(js)) <= LN2 + slack
  assert float(jnp.max(tvd)) <= 1 + slack
  assert float(jnp.max(cosine)) <= 2 + slack


@_settings
@hypothesis.given(student=_logits, teacher=_logits,
                  temperature=st.sampled_from(TEMPERATURES),
                  case=st.sampled_from([("tvd", {}), ("js", {"beta": 0.5}),
                                        ("mse", {}), ("cosine", {})]))
def test_symmetric(student, teacher, temperature, case):
  name, params = case
  fn = divergence(name, temperature=temperature, **params)
  np.testing.assert_allclose(
      fn(student, teacher), fn(teacher, student), rtol=1e-5,
      atol=_rounding_slack(student, teacher, temperature))
