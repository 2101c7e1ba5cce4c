"""Consistency distillation (kd_jax/methods/consistency.py): the boundary condition, the EMA
target network, the teacher's ODE step and the distances."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core import parallel
from kd_jax.methods import consistency as cd
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import assert_refused_field, cli_load

SMOKE = "experiments/diffusion/consistency.py:smoke"


def _network(seed=0):
  model = models.create("unet", rngs=nnx.Rngs(seed), widths=(8, 16), embed_dim=32)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(seed + 7),
                                                     model.out.kernel.shape))
  return model


def _student(ema=0.9):
  return cd.ConsistencyStudent(_network(), sigma_data=0.5, ema=ema)


def test_the_boundary_condition_holds_exactly():
  student = _student()
  x = jax.random.uniform(jax.random.key(0), (3, 28, 28, 1), minval=-1, maxval=1)
  np.testing.assert_array_equal(student.consistency(student.network, x, 0.0, None), x)
  np.testing.assert_allclose(student.c_skip(jnp.array([0.0])), 1.0)
  assert float(student.c_skip(jnp.array([1.0]))[0]) < 1e-8      # pure network at t = 1


def test_the_student_answers_samplers_with_the_v_whose_x_hat_is_f():
  student = _student()
  z = jax.random.normal(jax.random.key(1), (2, 28, 28, 1))
  t = jnp.array([0.3, 0.8])
  x_hat, _ = df.to_x_eps(student(z, t), z, t)
  np.testing.assert_allclose(x_hat, student.consistency(student.network, z, t, None),
                             rtol=1e-4, atol=1e-4)


def test_the_ema_target_starts_as_the_student_and_then_averages():
  student = _student(ema=0.9)
  kernel = lambda weights: np.asarray(weights["out"]["kernel"])
  start = kernel(nnx.to_pure_dict(nnx.state(student.network, nnx.Param)))
  student.target.set_value(jax.tree.map(jnp.zeros_like, student.target.get_value()))
  z, t = jnp.zeros((1, 28, 28, 1)), jnp.array([0.5])
  # Before the first step the target is the student, whatever was stored.
  np.testing.assert_array_equal(kernel(student.target_weights()), start)
  student(z, t, train=True)
  np.testing.assert_allclose(kernel(student.target.get_value()), start, rtol=1e-6)
  moved = student.network.out.kernel
  moved.set_value(moved[...] + 1.0)                         # as if the optimiser had stepped
  # Song et al.'s order: the next step's target is μ·θ⁻ + (1 − μ)·θ with the updated θ.
  np.testing.assert_allclose(kernel(student.target_weights()), 0.9 * start + 0.1 * (start + 1),
                             rtol=1e-5, atol=1e-6)
  student(z, t, train=True)
  np.testing.assert_allclose(kernel(student.target.get_value()), 0.9 * start + 0.1 * (start + 1),
                             rtol=1e-5, atol=1e-6)


@needs_fashion_mnist
def test_the_target_is_the_ema_networks_f_after_one_teacher_ddim_step():
  c = cli_load(SMOKE)
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  task = cd._consistency_task(c, prepared)
  student, teacher = _student(), _network(seed=3)
  student.steps[...] = jnp.int32(5)                        # past the first step: the EMA counts
  stored = _network(seed=4)
  student.target.set_value(nnx.to_pure_dict(nnx.state(stored, nnx.Param)))
  # The step's target network: μ·stored + (1 − μ)·student, μ = 0.9.
  student.ema = 0.9
  ema = _network(seed=4)
  nnx.update(ema, jax.tree.map(lambda e, c: 0.9 * e + 0.1 * c, nnx.state(stored, nnx.Param),
                               nnx.state(student.network, nnx.Param)))
  t_graphdef, t_params, t_rest = nnx.split(teacher, nnx.Param, ...)
  (z, t_next, _), (target, z2, t2), _, _ = task.train_batch(
      prepared.train_data, jnp.arange(6), jnp.ones(6, bool), jax.random.key(2),
      policy=nnx.split(student, nnx.Param, ...), teacher=(t_graphdef, (t_params, t_rest)))
  np.testing.assert_array_equal(z, z2)
  np.testing.assert_array_equal(t_next, t2)
  grid = c.consistency.grid
  np.testing.assert_allclose(np.asarray(t_next) * grid, np.rint(np.asarray(t_next) * grid),
                             atol=1e-5)
  t_now = t_next - 1.0 / grid
  # The teacher's DDIM step by the formulas, then the EMA network's f (not the student's).
  alpha, sigma = (a[:, None, None, None] for a in df.alpha_sigma(t_next))
  v = teacher(z, t_next)
  x_hat, eps_hat = alpha * z - sigma * v, sigma * z + alpha * v
  alpha_s, sigma_s = (a[:, None, None, None] for a in df.alpha_sigma(t_now))
  z_now = alpha_s * x_hat + sigma_s * eps_hat
  want = student.consistency(ema, z_now, t_now, None)
  np.testing.assert_allclose(target, want, rtol=1e-4, atol=1e-5)
  assert not np.allclose(target, student.consistency(student.network, z_now, t_now, None),
                         atol=1e-3)


def test_the_distances_match_their_formulas():
  f = jnp.arange(8.0).reshape(2, 2, 2, 1)
  target = jnp.zeros_like(f)
  mask = jnp.array([True, True])
  l2 = cd.consistency_distance("l2", f, target, mask)
  np.testing.assert_allclose(l2, np.mean([np.mean(np.arange(4.0)**2),
                                          np.mean(np.arange(4.0, 8.0)**2)]))
  c = 0.00054 * math.sqrt(4)
  huber = cd.consistency_distance("pseudo_huber", f, target, mask)
  want = np.mean([np.sqrt(np.sum(np.arange(4.0)**2) + c**2) - c,
                  np.sqrt(np.sum(np.arange(4.0, 8.0)**2) + c**2) - c])
  np.testing.assert_allclose(huber, want, rtol=1e-6)


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.consistency, "distance", "l1"), "consistency.distance"),
    (lambda c: setattr(c.consistency, "ema", 1.5), "consistency.ema"),
    (lambda c: setattr(c.consistency, "grid", 0), "consistency.grid"),
    (lambda c: setattr(c.dataset, "parameterization", "x"), "dataset.parameterization"),
    (lambda c: setattr(c, "student_init", "scratch"), "student_init"),
])
def test_bad_consistency_settings_are_named(edit, field):
  assert_refused_field(cli_load(SMOKE), edit, field)
