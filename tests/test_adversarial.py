"""Adversarial diffusion distillation (kd_jax/methods/adversarial.py): each player's gradient,
the frozen teacher, the discriminator's own optimiser and the checks (its smoke run:
tests/test_diffusion_task.py's table smoke)."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import models
from kd_jax.engine import optim
from kd_jax.methods import adversarial as add
from kd_jax.objectives import diffusion as df
from tests.test_experiments import assert_refused_field, cli_load

SMOKE = "experiments/diffusion/adversarial.py:smoke"
LAMBDA = 2.5


def _student():
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(1), model.out.kernel.shape))
  return add.AdversarialStudent(model, add.Discriminator((8, 16), rngs=nnx.Rngs(2)))


def _batch(n=4):
  keys = jax.random.split(jax.random.key(3), 4)
  x = jax.random.uniform(keys[0], (n, 28, 28, 1), minval=-1, maxval=1)
  tau = jnp.array([1.0, 0.75, 0.5, 0.25])[:n]
  z = df.noise(x, jax.random.normal(keys[1], x.shape), tau)
  return (z, tau, None, x, jax.random.uniform(keys[2], (n,)), jax.random.normal(keys[3], x.shape))


def _objective_of(student_graphdef, rest, inputs):
  settings = type("S", (), {"adversarial": config_lib.adversarial_config()})()
  def total(params):
    out = nnx.merge(student_graphdef, params, rest)(*inputs)
    return add._adversarial_term(settings, 0, out, None, None, jnp.ones(4, bool))[0]
  return total


def test_each_player_gets_only_its_own_losss_gradient():
  student = _student()
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)
  inputs = _batch()
  grads = jax.grad(_objective_of(graphdef, rest, inputs))(params)
  z, tau, _, real, t_d, eps_d = inputs

  # The student's loss by hand: −D(x̂) + λ·alpha(t)·‖x̂ − x̂_teacher‖², the teacher its start.
  teacher = nnx.clone(student.model)
  def student_loss(model_params):
    model = nnx.merge(nnx.graphdef(student.model), model_params,
                      nnx.state(student.model, nnx.Not(nnx.Param)))
    alpha, sigma = (a[:, None, None, None] for a in df.alpha_sigma(tau))
    x_gen = alpha * z - sigma * model(z, tau)
    z_d = df.noise(jax.lax.stop_gradient(x_gen), eps_d, t_d)
    teacher_x, _ = df.to_x_eps(teacher(z_d, t_d), z_d, t_d)
    squared = jnp.mean(jnp.square(x_gen - jax.lax.stop_gradient(teacher_x)).reshape(4, -1), 1)
    return (-jnp.mean(student.discriminator(x_gen))
            + LAMBDA * jnp.mean(df.alpha_sigma(t_d)[0] * squared))
  want = jax.grad(student_loss)(nnx.state(student.model, nnx.Param))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6),
               grads["model"], want)

  # The discriminator's: the hinge loss on the real images and the (fixed) student samples.
  alpha, sigma = (a[:, None, None, None] for a in df.alpha_sigma(tau))
  x_gen = alpha * z - sigma * student.model(z, tau)
  def discriminator_loss(d_params):
    d = nnx.merge(nnx.graphdef(student.discriminator), d_params)
    return jnp.mean(jax.nn.relu(1 - d(real))) + jnp.mean(jax.nn.relu(1 + d(x_gen)))
  want = jax.grad(discriminator_loss)(nnx.state(student.discriminator, nnx.Param))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=2e-4, atol=1e-6),
               grads["discriminator"], want)


def test_the_teacher_stays_the_students_start():
  student = _student()
  start = np.asarray(student.model.out.kernel[...])
  student(*_batch(), train=True)
  student.model.out.kernel.set_value(student.model.out.kernel[...] + 1.0)
  student(*_batch(), train=True)
  np.testing.assert_array_equal(student.teacher_weights()["out"]["kernel"], start)
  # Called as a denoiser it is the generator alone.
  z, tau = _batch()[:2]
  np.testing.assert_array_equal(student(z, tau), student.model(z, tau))


def test_a_param_group_gets_its_own_learning_rate():
  t = ml_collections.ConfigDict(dict(optimizer="sgd", learning_rate=0.1, lr_schedule="constant",
                                     weight_decay=0.0, grad_clip_norm=0.0, warmup_fraction=0.0,
                                     momentum=0.9,
                                     param_groups={"discriminator": {"learning_rate": 0.01}}))
  params = {"model": {"w": jnp.ones(3)}, "discriminator": {"w": jnp.ones(2)}}
  opt = optim.make_optimizer(t, 10)
  updates, _ = opt.update(jax.tree.map(jnp.ones_like, params), opt.init(params), params)
  np.testing.assert_allclose(updates["model"]["w"], -0.1)
  np.testing.assert_allclose(updates["discriminator"]["w"], -0.01)
  assert isinstance(optim.make_optimizer(ml_collections.ConfigDict(
      {k: v for k, v in t.items() if k != "param_groups"}), 10), optax.GradientTransformation)


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.adversarial, "student_times", (0.0,)), "adversarial.student_times"),
    (lambda c: setattr(c.adversarial, "discriminator_learning_rate", 0.0),
     "adversarial.discriminator_learning_rate"),
    (lambda c: setattr(c, "student_init", "scratch"), "student_init"),
])
def test_bad_adversarial_settings_are_named(edit, field):
  assert_refused_field(cli_load(SMOKE), edit, field)
