r"""Gaussian diffusion in continuous time: the noise schedule, the parameterisations and
the sampler updates, as pure functions (DESIGN §8).

A data point ``x`` is noised at time t ∈ [0, 1] to ``z_t = alpha(t)·x + sigma(t)·eps``,
eps ~ N(0, I), with ``alpha² + sigma² = 1`` (variance preserving). The schedule is the
cosine one written as a log signal-to-noise ratio (Nichol & Dhariwal 2021; Kingma et
al. 2021, "Variational Diffusion Models", §3; Salimans & Ho 2022, §2):

    logsnr(t) = −2·log tan(a·t + b),   b = arctan(exp(−λ_max / 2)),
                                       a = arctan(exp(−λ_min / 2)) − b,

so logsnr(0) = λ_max and logsnr(1) = λ_min (clipped so that neither end is singular),
and ``alpha² = sigmoid(logsnr)``, ``sigma² = sigmoid(−logsnr)``.

The network predicts **v** = alpha·eps − sigma·x (Salimans & Ho 2022, §4, "v-prediction")
or **x** itself; ``x_hat`` and ``eps_hat`` follow in closed form:

    x_hat   = alpha·z − sigma·v                  eps_hat = sigma·z + alpha·v
    eps_hat = (z − alpha·x_hat) / sigma          (x-prediction)

We default to v: ε-prediction fails at one or two steps, because ``x_hat = (z − sigma·eps_hat)
/ alpha`` divides by alpha → 0 at t = 1, where a one-step sampler starts, so any error in
eps_hat is amplified without bound; v- and x-prediction give x_hat with bounded error at
every t.

Samplers step from t to s < t:

* DDIM (Song et al. 2021, η = 0), deterministic: ``z_s = alpha_s·x_hat + sigma_s·eps_hat``;
* ancestral (DDPM, Ho et al. 2020), stochastic: a draw from the posterior
  q(z_s | z_t, x = x_hat) with, for alpha_{t|s} = alpha_t / alpha_s and
  sigma²_{t|s} = sigma_t² − alpha_{t|s}²·sigma_s²,

      mean = alpha_{t|s}·sigma_s²/sigma_t²·z_t + alpha_s·sigma²_{t|s}/sigma_t²·x_hat,
      var  = sigma²_{t|s}·sigma_s² / sigma_t².

Shapes: ``t`` is a scalar or ``[B]``; images are ``[B, H, W, C]`` and per-example
coefficients broadcast over the trailing axes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PREDICTIONS = ("v", "x")
LOGSNR_MAX, LOGSNR_MIN = 20.0, -20.0


def logsnr(t, logsnr_max: float = LOGSNR_MAX, logsnr_min: float = LOGSNR_MIN):
  """The cosine schedule's log signal-to-noise ratio at ``t`` ∈ [0, 1] (decreasing in t)."""
  b = jnp.arctan(jnp.exp(-0.5 * logsnr_max))
  a = jnp.arctan(jnp.exp(-0.5 * logsnr_min)) - b
  return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b))


def alpha_sigma(t, **schedule):
  """``(alpha(t), sigma(t))``, with alpha² = sigmoid(logsnr), sigma² = sigmoid(−logsnr)."""
  lam = logsnr(t, **schedule)
  return jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))


def _per_example(coefficient, like):
  """Broadcasts a scalar or ``[B]`` coefficient over ``like``'s trailing axes."""
  coefficient = jnp.asarray(coefficient, like.dtype)
  return coefficient.reshape(coefficient.shape + (1,) * (like.ndim - coefficient.ndim))


def noise(x, eps, t, **schedule):
  """``z_t = alpha(t)·x + sigma(t)·eps``."""
  alpha, sigma = alpha_sigma(t, **schedule)
  return _per_example(alpha, x) * x + _per_example(sigma, x) * eps


def v_target(x, eps, t, **schedule):
  """The v-prediction target, ``alpha(t)·eps − sigma(t)·x``."""
  alpha, sigma = alpha_sigma(t, **schedule)
  return _per_example(alpha, x) * eps - _per_example(sigma, x) * x


def to_x_eps(prediction, z, t, *, parameterization: str = "v", **schedule):
  """``(x_hat, eps_hat)`` from the network's ``prediction`` at ``z_t`` (formulas above)."""
  if parameterization not in PREDICTIONS:
    raise ValueError(f"parameterization must be one of {PREDICTIONS}, got {parameterization!r}")
  alpha, sigma = alpha_sigma(t, **schedule)
  alpha, sigma = _per_example(alpha, z), _per_example(sigma, z)
  if parameterization == "v":
    return alpha * z - sigma * prediction, sigma * z + alpha * prediction
  return prediction, (z - alpha * prediction) / sigma


def from_x(x_hat, z, t, *, parameterization: str = "v", **schedule):
  """The prediction that gives ``x_hat`` at ``z_t``: x itself, or v = (alpha·z − x_hat) / sigma.

  The regression target of a student taught an ``x_hat`` (progressive distillation's)."""
  if parameterization not in PREDICTIONS:
    raise ValueError(f"parameterization must be one of {PREDICTIONS}, got {parameterization!r}")
  if parameterization == "x":
    return x_hat
  alpha, sigma = alpha_sigma(t, **schedule)
  return (_per_example(alpha, z) * z - x_hat) / _per_example(sigma, z)


def ddim_step(x_hat, eps_hat, s, **schedule):
  """DDIM's deterministic update to time ``s``: ``alpha_s·x_hat + sigma_s·eps_hat``."""
  alpha_s, sigma_s = alpha_sigma(s, **schedule)
  return _per_example(alpha_s, x_hat) * x_hat + _per_example(sigma_s, x_hat) * eps_hat


def ancestral_step(x_hat, z, t, s, key, **schedule):
  """A draw from q(z_s | z_t, x = x_hat) (the posterior above), ``s < t``."""
  alpha_t, sigma_t = alpha_sigma(t, **schedule)
  alpha_s, sigma_s = alpha_sigma(s, **schedule)
  alpha_ts = alpha_t / alpha_s
  # (>= 0 in exact arithmetic; float32 can round it below 0 for close t and s)
  var_ts = jnp.maximum(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0)
  mean = (_per_example(alpha_ts * sigma_s**2 / sigma_t**2, z) * z
          + _per_example(alpha_s * var_ts / sigma_t**2, z) * x_hat)
  std = _per_example(jnp.sqrt(var_ts * sigma_s**2 / sigma_t**2), z)
  return mean + std * jax.random.normal(key, z.shape, z.dtype)


def two_step_target(z_t, z_s2, t, s2, **schedule):
  """Progressive distillation's target (Salimans & Ho 2022, Algorithm 2): the ``x_hat``
  with which one DDIM step from ``z_t`` at t lands on ``z_s2``, where the teacher's two
  DDIM steps landed at time ``s2``:

      x̃ = (z_s2 − (sigma_s2 / sigma_t)·z_t) / (alpha_s2 − (sigma_s2 / sigma_t)·alpha_t).
  """
  alpha_t, sigma_t = alpha_sigma(t, **schedule)
  alpha_s, sigma_s = alpha_sigma(s2, **schedule)
  ratio = sigma_s / sigma_t
  return ((z_s2 - _per_example(ratio, z_t) * z_t)
          / _per_example(alpha_s - ratio * alpha_t, z_t))


def time_grid(steps: int):
  """The ``steps + 1`` times a ``steps``-step sampler visits, from 1 down to 0."""
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  return jnp.linspace(1.0, 0.0, steps + 1)
