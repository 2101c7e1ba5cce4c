"""The UNet denoiser (kd_jax/models/unet.py): shapes, conditioning, and its checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.models import unet


def _with_random_output_layer(model):
  # The output convolution starts at zero (every prediction 0); the tests need it live.
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(9), model.out.kernel.shape))
  return model


@pytest.mark.parametrize("widths", [(8, 16), (8, 16, 16)])
def test_the_prediction_has_the_inputs_shape_and_depends_on_time_and_label(widths):
  model = _with_random_output_layer(models.create("unet", rngs=nnx.Rngs(0), widths=widths,
                                                  embed_dim=32, num_classes=10))
  x = jax.random.normal(jax.random.key(1), (3, 28, 28, 1))
  y = model(x, jnp.array([0.2, 0.5, 0.8]), jnp.array([0, 1, 2]))
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert not np.allclose(y, model(x, jnp.array([0.3, 0.5, 0.8]), jnp.array([0, 1, 2])))
  other_label = model(x, jnp.array([0.2, 0.5, 0.8]), jnp.array([5, 1, 2]))
  assert not np.allclose(y[0], other_label[0]) and np.allclose(y[1:], other_label[1:])
  # No labels: the null class (label num_classes) for every row.
  np.testing.assert_allclose(model(x, 0.5), model(x, 0.5, jnp.full((3,), 10)), rtol=1e-6)


def test_an_unconditional_unet_takes_no_labels_and_starts_at_zero():
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  assert model.class_embed is None
  x = jnp.ones((2, 28, 28, 1))
  np.testing.assert_array_equal(model(x, jnp.array([0.1, 0.9])), 0.0)


def test_rows_are_independent():
  # GroupNorm normalises each example alone: a row's prediction ignores the batch.
  model = _with_random_output_layer(models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16),
                                                  embed_dim=32))
  x = jax.random.normal(jax.random.key(2), (4, 28, 28, 1))
  t = jnp.array([0.1, 0.4, 0.6, 0.9])
  np.testing.assert_allclose(model(x, t)[1:2], model(x[1:2], t[1:2]), rtol=2e-5, atol=1e-6)


def test_the_timestep_embedding_is_the_sinusoid_of_1000t():
  e = unet.timestep_embedding(jnp.array([0.0, 0.25]), 8)
  frequencies = 10000.0 ** (-np.arange(4) / 4)
  want = np.concatenate([np.cos(250.0 * frequencies), np.sin(250.0 * frequencies)])
  np.testing.assert_allclose(e[1], want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(e[0], [1, 1, 1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(widths=()), "widths must name 1 to 4 levels"),
    (dict(widths=(8, 8, 8, 8), input_shape=(28, 28, 1)), "divisible by 8"),
    (dict(widths=(8, 16), num_classes=0), "num_classes must be a positive int or None"),
])
def test_bad_shapes_are_refused_naming_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.create("unet", rngs=nnx.Rngs(0), **kwargs)


def test_a_batch_of_another_size_is_refused():
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  with pytest.raises(ValueError, match="unet expects an NHWC batch"):
    model(jnp.zeros((1, 32, 32, 1)), 0.5)
