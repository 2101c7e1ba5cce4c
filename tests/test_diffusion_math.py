"""The diffusion schedule, parameterisations and sampler updates (kd_jax/objectives/diffusion.py)
against their closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.objectives import diffusion as df

def test_the_cosine_schedule_is_variance_preserving_and_spans_its_logsnr_range():
  t = jnp.linspace(0.0, 1.0, 101)
  alpha, sigma = df.alpha_sigma(t)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, rtol=1e-6)
  lam = np.asarray(df.logsnr(t))
  np.testing.assert_allclose([lam[0], lam[-1]], [df.LOGSNR_MAX, df.LOGSNR_MIN], rtol=1e-4)
  assert np.all(np.diff(lam) < 0)
  # At t = 1/2 the unclipped cosine schedule has alpha = cos(π/4): logsnr = 0 (symmetric clip).
  np.testing.assert_allclose(df.logsnr(0.5), 0.0, atol=1e-5)


@pytest.mark.parametrize("t", [0.05, 0.5, 0.95])
def test_v_and_x_predictions_give_back_the_data_and_the_noise(t):
  x, eps = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 1))
  z = df.noise(x, eps, t)
  alpha, sigma = df.alpha_sigma(t)
  np.testing.assert_allclose(z, alpha * x + sigma * eps, rtol=1e-6)
  v = df.v_target(x, eps, t)
  np.testing.assert_allclose(v, alpha * eps - sigma * x, rtol=1e-6)
  for parameterization, prediction in (("v", v), ("x", x)):
    x_hat, eps_hat = df.to_x_eps(prediction, z, t, parameterization=parameterization)
    np.testing.assert_allclose(x_hat, x, atol=2e-5)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4 if parameterization == "x" else 2e-5)
    np.testing.assert_allclose(df.from_x(x, z, t, parameterization=parameterization),
                               prediction, atol=2e-4)


def test_per_example_times_broadcast_over_the_image():
  x, eps = jax.random.normal(jax.random.key(1), (2, 3, 2, 2, 1))
  t = jnp.array([0.1, 0.5, 0.9])
  z = df.noise(x, eps, t)
  for i in range(3):
    np.testing.assert_allclose(z[i], df.noise(x[i:i + 1], eps[i:i + 1], t[i])[0], rtol=1e-6)


def test_a_ddim_step_with_the_true_data_and_noise_stays_on_their_path():
  x, eps = jax.random.normal(jax.random.key(2), (2, 4, 3, 3, 1))
  np.testing.assert_allclose(df.ddim_step(x, eps, 0.3), df.noise(x, eps, 0.3), rtol=1e-6)


def _gaussian_denoiser(mean, std):
  """E[x | z_t] for x ~ N(mean, std²) per dimension: mean + alpha·std²/(alpha²·std² + sigma²)·(z − alpha·mean)."""
  def x_hat(z, t):
    alpha, sigma = df.alpha_sigma(t)
    return mean + alpha * std**2 / (alpha**2 * std**2 + sigma**2) * (z - alpha * mean)
  return x_hat


def _ddim(x_hat_fn, z, steps):
  times = df.time_grid(steps)
  for t, s in zip(times[:-1], times[1:]):
    x_hat = x_hat_fn(z, t)
    _, sigma = df.alpha_sigma(t)
    alpha, _ = df.alpha_sigma(t)
    eps_hat = (z - alpha * x_hat) / sigma
    z = df.ddim_step(x_hat, eps_hat, s)
  return z


def test_ddim_with_the_exact_denoiser_of_a_gaussian_recovers_it():
  # For x ~ N(m, s²) the probability-flow ODE maps z_1 to m + s·(z_1 − alpha_1·m) / sqrt(alpha_1²·s²
  # + sigma_1²): every sample, not only the moments. DDIM is its discretisation.
  mean, std = 0.7, 0.3
  z1 = jax.random.normal(jax.random.key(3), (4096,))
  alpha1, sigma1 = df.alpha_sigma(1.0)
  exact = mean + std * (z1 - alpha1 * mean) / jnp.sqrt(alpha1**2 * std**2 + sigma1**2)
  errors = [float(jnp.max(jnp.abs(_ddim(_gaussian_denoiser(mean, std), z1, n) - exact)))
            for n in (4, 16, 256)]
  # DDIM is first order in the step: 16 times the steps, about a sixteenth of the error.
  assert errors[2] < 0.02 and errors[1] / errors[2] > 8 and errors[0] > errors[1], errors
  samples = _ddim(_gaussian_denoiser(mean, std), z1, 256)
  np.testing.assert_allclose([samples.mean(), samples.std()], [mean, std], atol=0.02)


def test_the_ancestral_sampler_with_the_exact_denoiser_draws_from_the_gaussian():
  mean, std, n = -0.4, 0.5, 20000
  x_hat_fn = _gaussian_denoiser(mean, std)
  z = jax.random.normal(jax.random.key(4), (n,))
  times = df.time_grid(256)
  keys = jax.random.split(jax.random.key(5), 256)
  for t, s, key in zip(times[:-1], times[1:], keys):
    z = df.ancestral_step(x_hat_fn(z, t), z, t, s, key)
  # Standard errors at n = 20,000: 0.0035 for the mean, 0.0025 for the std; 4 of them allowed.
  np.testing.assert_allclose(z.mean(), mean, atol=0.014)
  np.testing.assert_allclose(z.std(), std, atol=0.01)


def test_the_two_step_target_makes_one_ddim_step_land_where_two_did():
  key_x, key_e = jax.random.split(jax.random.key(6))
  x = jax.random.normal(key_x, (3, 4, 4, 1))
  t, s2 = 0.8, 0.6
  z_t = df.noise(x, jax.random.normal(key_e, x.shape), t)
  # Any two-step landing point (here: a made-up teacher's) defines the target.
  z_s2 = 0.9 * df.noise(x, jnp.zeros_like(x), s2) + 0.1 * z_t
  target = df.two_step_target(z_t, z_s2, t, s2)
  alpha_t, sigma_t = df.alpha_sigma(t)
  eps_hat = (z_t - alpha_t * target) / sigma_t
  np.testing.assert_allclose(df.ddim_step(target, eps_hat, s2), z_s2, atol=1e-5)


def test_bad_arguments_name_the_choices():
  z = jnp.zeros((1, 2, 2, 1))
  with pytest.raises(ValueError, match="parameterization must be one of"):
    df.to_x_eps(z, z, 0.5, parameterization="eps")
  with pytest.raises(ValueError, match="steps must be >= 1"):
    df.time_grid(0)
