r"""``consistency`` — consistency distillation (Song et al. 2023, "Consistency Models",
Algorithm 2). The student is a consistency function f(z, t) ≈ the data point on z's
probability-flow ODE trajectory, parameterised so that f(z, 0) = z exactly
(:class:`ConsistencyStudent`): f = c_skip(t)·z/alpha(t) + (1 − c_skip(t))·x̂(z, t), with
x̂ from the network's v and c_skip(t) = σ_d² / (σ_d² + σ(t)² − σ(0)²), σ(t) = sigma/alpha
the noise level of z/alpha (the EDM form of Karras et al. 2022, shifted to t_min = 0),
σ_d = ``consistency.sigma_data``. Towards the samplers the student answers with the v
whose x̂ is f, so every sampler reads it like any denoiser. On the grid t_n = n/N
(N = ``consistency.grid``) a batch draws n uniform in 0..N−1, noises the images to
z at t_{n+1}, takes one DDIM step of the frozen teacher to t_n, and the loss is the
distance (``consistency.distance``: ``"l2"``, the mean square, or ``"pseudo_huber"``,
√(‖Δ‖² + c²) − c with c = 0.00054·√(pixels), Song & Dhariwal 2023) between the
student's f at (z_{t_{n+1}}, t_{n+1}) and the target network's f at the teacher's
z_{t_n}. The target network is an EMA of the student (rate ``consistency.ema``) kept
in its state; it starts, at the first step, as the student (the teacher's copy), and
each step's target is μ·θ⁻ + (1 − μ)·θ with the weights θ the previous update gave (the
paper's order). The student reported is the trained wrapper itself (its multistep
samples are DDIM's on its f, not the paper's re-noising multistep sampler).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.methods.base import Method, require_block
from kd_jax.methods.diffusion_base import (Frozen, StepCount, require_teacher_start, select,
                                           task_like, weights_of, with_weights)
from kd_jax.objectives import diffusion
from kd_jax.objectives.masked import masked_mean
from kd_jax.tasks import diffusion as diffusion_task


class ConsistencyStudent(nnx.Module):
  """A consistency function around ``network`` (a v-predicting denoiser), with its EMA
  target network (``target``, a pure dict of the network's parameters) and step count."""

  def __init__(self, network: nnx.Module, *, sigma_data: float, ema: float):
    self.network, self.sigma_data, self.ema = network, sigma_data, ema
    self.num_classes = getattr(network, "num_classes", None)
    self.input_shape = network.input_shape        # (what an exporter reads)
    self.target = Frozen(weights_of(network))
    self.steps = StepCount(jnp.zeros((), jnp.int32))

  def c_skip(self, t):
    sd2 = self.sigma_data**2
    noise_level = lambda t: jnp.exp(-diffusion.logsnr(t))        # sigma² / alpha²
    return sd2 / (sd2 + noise_level(t) - noise_level(0.0))

  def consistency(self, network, z, t, labels):
    """f(z, t) with ``network``'s weights (the student's or the target's)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
    alpha = diffusion.alpha_sigma(t)[0][:, None, None, None]
    skip = self.c_skip(t)[:, None, None, None]
    x_hat, _ = diffusion.to_x_eps(network(z, t, labels), z, t)
    return skip * z / alpha + (1.0 - skip) * x_hat

  def target_weights(self):
    """The EMA target θ⁻ as a pure dict, for the step about to run: the student itself at
    the first step, then μ·θ⁻ + (1 − μ)·θ with θ the weights the last update gave, which
    is Song et al.'s θ⁻ after that update (Algorithm 2)."""
    current = weights_of(self.network)
    averaged = jax.tree.map(lambda e, c: self.ema * e + (1.0 - self.ema) * c,
                            self.target.get_value(), current)
    return select(self.steps[...] == 0, current, averaged)

  def target_network(self):
    return with_weights(self.network, self.target_weights())

  def __call__(self, z, t, labels=None, *, train: bool = False):
    if train:      # keeps the target this step's batch was made with
      self.target.set_value(self.target_weights())
      self.steps[...] = self.steps[...] + 1
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
    # The v whose x̂ is f: what samplers read.
    return diffusion.from_x(self.consistency(self.network, z, t, labels), z, t)


DISTANCES = ("l2", "pseudo_huber")


def consistency_distance(kind: str, f, target, mask):
  """The per-row distance of the module docstring, averaged over the real rows."""
  delta = (f.astype(jnp.float32) - target).reshape(f.shape[0], -1)
  if kind == "l2":
    per_row = jnp.mean(jnp.square(delta), axis=1)
  else:
    c = 0.00054 * math.sqrt(delta.shape[1])
    per_row = jnp.sqrt(jnp.sum(jnp.square(delta), axis=1) + c**2) - c
  return masked_mean(per_row, mask)


@dataclasses.dataclass(frozen=True)
class ConsistencyDenoising(diffusion_task.Denoising):
  """The diffusion task with consistency distillation's batches (the module docstring)."""
  grid: int = 64

  def train_batch(self, data, index, mask, rng, policy=None, teacher=None):
    student = nnx.merge(*policy)
    teacher_model = nnx.merge(teacher[0], *teacher[1])
    key_n, key_eps, key_drop = jax.random.split(rng, 3)
    x = diffusion_task.to_unit_range(data.images[index])
    labels = self.model_labels(data.labels[index], key_drop)
    n = jax.random.randint(key_n, (x.shape[0],), 0, self.grid)
    t_now, t_next = n / self.grid, (n + 1) / self.grid
    z_next = diffusion.noise(x, jax.random.normal(key_eps, x.shape), t_next)
    x_hat, eps_hat = diffusion.to_x_eps(teacher_model(z_next, t_next, labels), z_next, t_next,
                                        parameterization="v")
    z_now = diffusion.ddim_step(x_hat, eps_hat, t_now)       # one step of the teacher's ODE
    target = student.consistency(student.target_network(), z_now, t_now, labels)
    return ((z_next, t_next, labels), (jax.lax.stop_gradient(target), z_next, t_next), mask,
            {})


def _consistency_term(settings, step, prediction, t_logits, targets, mask):
  """The distance between the student's f (from its v at z, t) and the target's f."""
  del step, t_logits
  target, z, t = targets
  f, _ = diffusion.to_x_eps(prediction, z, t)
  return consistency_distance(settings.consistency.distance, f, target, mask), {}

def _check_consistency(config) -> None:
  block = require_block(config, "consistency", "consistency_config")
  checks.ints_at_least("consistency", block, ("grid",), 1)
  checks.choice("consistency.distance", block.distance, DISTANCES)
  checks.in_unit_interval("consistency.ema", block.ema)
  if block.sigma_data <= 0:
    raise ConfigError("consistency.sigma_data", "consistency.sigma_data must be > 0, got "
                      f"{block.sigma_data}")
  require_teacher_start(config, v_prediction=True)


def _consistency_task(config, prepared):
  return task_like(ConsistencyDenoising, prepared, grid=int(config.consistency.grid))


METHODS = {
    "consistency": Method(_consistency_term, (diffusion_task.NAME,), uses_teacher=True,
                          check=_check_consistency, training_task=_consistency_task,
                          student_module=lambda config, model: ConsistencyStudent(
                              model, sigma_data=float(config.consistency.sigma_data),
                              ema=float(config.consistency.ema))),
}
