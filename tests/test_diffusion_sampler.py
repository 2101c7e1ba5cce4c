"""The samplers (kd_jax/tasks/diffusion_sampler.py) with the exact denoiser of a Gaussian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax.core import tracing
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion_sampler


class GaussianDenoiser(nnx.Module):
  """The exact v of x ~ N(mean, std²) per pixel; with ``num_classes``, label c has mean
  ``means[c]`` and the null label ``num_classes`` mean 0."""

  def __init__(self, means, std, parameterization="v"):
    self.means = nnx.Param(jnp.asarray(means, jnp.float32))
    self.std, self.parameterization = std, parameterization
    self.num_classes = len(means) - 1

  def __call__(self, z, t, labels=None):
    labels = jnp.full((z.shape[0],), self.num_classes) if labels is None else labels
    mean = self.means[labels][:, None, None, None]
    alpha, sigma = df.alpha_sigma(t)
    alpha, sigma = alpha[:, None, None, None], sigma[:, None, None, None]
    x_hat = mean + alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2) * (z - alpha * mean)
    return x_hat if self.parameterization == "x" else (alpha * z - x_hat) / sigma


def _split(model):
  return nnx.split(model)


@pytest.mark.parametrize("parameterization", ["v", "x"])
def test_ddim_maps_each_noise_to_its_gaussian_quantile(parameterization):
  mean, std = 0.3, 0.2
  graphdef, state = _split(GaussianDenoiser([mean], std, parameterization))
  noise = jax.random.normal(jax.random.key(0), (512, 4, 4, 1))
  images = diffusion_sampler.sample(graphdef, state, noise, steps=256, clip=False,
                                    parameterization=parameterization)
  alpha1, sigma1 = df.alpha_sigma(1.0)
  exact = mean + std * (noise - alpha1 * mean) / jnp.sqrt(alpha1**2 * std**2 + sigma1**2)
  np.testing.assert_allclose(images, exact, atol=0.01)


def test_one_step_gives_the_denoisers_mean_and_clipping_bounds_it():
  graphdef, state = _split(GaussianDenoiser([0.5], 0.2))
  noise = 3.0 * jax.random.normal(jax.random.key(1), (8, 4, 4, 1))
  # From z_1 (alpha_1 ≈ 0) one step answers E[x | z_1] ≈ the data mean.
  np.testing.assert_allclose(diffusion_sampler.sample(graphdef, state, noise, steps=1), 0.5,
                             atol=1e-3)
  graphdef, state = _split(GaussianDenoiser([0.0], 5.0))
  images = diffusion_sampler.sample(graphdef, state, noise, steps=8)
  assert float(jnp.abs(images).max()) <= 1.0


def test_the_ancestral_sampler_draws_from_the_gaussian():
  mean, std = -0.2, 0.25
  graphdef, state = _split(GaussianDenoiser([mean], std))
  noise = jax.random.normal(jax.random.key(2), (20000, 1, 1, 1))
  images = diffusion_sampler.sample(graphdef, state, noise, steps=200, ddim=False,
                                    rng=jax.random.key(3), clip=False)
  # n = 20,000: standard errors 0.0018 (mean) and 0.0013 (std); 5 of them allowed. Its last
  # step returns x_hat, E[x | z] at t_1, which shrinks the spread by a negligible factor.
  np.testing.assert_allclose([images.mean(), images.std()], [mean, std], atol=0.009)


def test_guidance_mixes_the_conditional_and_null_predictions():
  # Label 0 has mean 0.4, the null label mean 0: with weight w the one-step sample (the
  # mixed x_hat at t = 1, where x_hat ≈ the mean) is (1 + w)·0.4 − w·0 = 0.4·(1 + w).
  graphdef, state = _split(GaussianDenoiser([0.4, 0.0], 0.1))
  noise = jax.random.normal(jax.random.key(4), (4, 2, 2, 1))
  labels = jnp.zeros((4,), jnp.int32)
  for w in (0.0, 0.5, 1.0):
    images = diffusion_sampler.sample(graphdef, state, noise, steps=1, labels=labels,
                                      guidance=w, clip=False)
    np.testing.assert_allclose(images, 0.4 * (1 + w), atol=2e-3)


def test_each_shape_and_step_count_compiles_once():
  graphdef, state = _split(GaussianDenoiser([0.0], 0.5))
  before = tracing.traces(diffusion_sampler._sample)
  for seed in range(3):
    noise = jax.random.normal(jax.random.key(seed), (2, 4, 4, 1))
    diffusion_sampler.sample(graphdef, state, noise, steps=4)
  assert tracing.traces(diffusion_sampler._sample) == before + 1
  diffusion_sampler.sample(graphdef, state, noise, steps=2)
  assert tracing.traces(diffusion_sampler._sample) == before + 2


def test_bad_sampler_arguments_are_refused():
  graphdef, state = _split(GaussianDenoiser([0.0], 0.5))
  noise = jnp.zeros((1, 2, 2, 1))
  for kwargs, match in ((dict(steps=0), "steps must be >= 1"),
                        (dict(steps=2, parameterization="eps"), "parameterization must be"),
                        (dict(steps=2, guidance=1.0), "guidance != 0 needs labels"),
                        (dict(steps=2, ddim=False), "needs rng")):
    with pytest.raises(ValueError, match=match):
      diffusion_sampler.sample(graphdef, state, noise, **kwargs)
