"""One-step KD (kd_jax/methods/one_step_kd.py): the teacher's cached pairs and the regression batch."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core import parallel
from kd_jax.methods import one_step_kd as kd1
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion, diffusion_sampler
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import assert_refused_field, cli_load

SMOKE = "experiments/diffusion/one_step_kd.py:smoke"


def _teacher():
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(1), model.out.kernel.shape))
  return model


@needs_fashion_mnist
def test_the_pairs_are_the_teachers_samples_and_are_made_once(tmp_path):
  c = cli_load(SMOKE)
  c.one_step_kd.pairs = 10
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  teacher = _teacher()
  noise, samples, labels = kd1.teacher_pairs(c, prepared, teacher, {"t": 1},
                                                           str(tmp_path))
  graphdef, state = nnx.split(teacher)
  want = diffusion_sampler.sample(graphdef, state, jnp.asarray(noise),
                                  steps=c.one_step_kd.teacher_steps)
  np.testing.assert_allclose(samples, want, rtol=1e-5, atol=1e-6)
  assert noise.shape == (10, 28, 28, 1) and labels.shape == (10,)
  (path,) = [p for p in os.listdir(tmp_path) if p.startswith("diffusion_pairs-")]
  written = os.path.getmtime(tmp_path / path)
  again = kd1.teacher_pairs(c, prepared, teacher, {"t": 1}, str(tmp_path))
  np.testing.assert_array_equal(again[1], samples)
  assert os.path.getmtime(tmp_path / path) == written            # read back, not remade
  # Another teacher (its identity) is another set.
  kd1.teacher_pairs(c, prepared, teacher, {"t": 2}, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2


@needs_fashion_mnist
def test_a_batch_asks_for_the_teachers_sample_from_its_noise_in_one_step():
  c = cli_load(SMOKE)
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  task = kd1._one_step_task(c, prepared)
  noise = jax.random.normal(jax.random.key(3), (4, 28, 28, 1))
  samples = jax.random.uniform(jax.random.key(4), (4, 28, 28, 1), minval=-1, maxval=1)
  data = kd1.PairData(noise, samples, jnp.zeros(4, jnp.int32))
  (z, t, labels), target, _, _ = task.train_batch(data, jnp.arange(4), jnp.ones(4, bool),
                                                  jax.random.key(0))
  np.testing.assert_array_equal(z, noise)
  np.testing.assert_array_equal(t, 1.0)
  assert labels is None
  x_hat, _ = df.to_x_eps(target, z, t)
  np.testing.assert_allclose(x_hat, samples, atol=1e-5)


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.one_step_kd, "pairs", 0), "one_step_kd.pairs"),
    (lambda c: setattr(c.one_step_kd, "teacher_steps", 0), "one_step_kd.teacher_steps"),
    (lambda c: c.dataset.update(conditional=True, guidance=1.0), "dataset.guidance"),
])
def test_bad_one_step_settings_are_named(edit, field):
  assert_refused_field(cli_load(SMOKE), edit, field)
