r"""Diffusion step distillation: a many-step teacher distilled into a few-step student (issue 24).

``progressive`` — progressive distillation (Salimans & Ho 2022, "Progressive
Distillation for Fast Sampling of Diffusion Models", Algorithm 2). The student starts as
a copy of the teacher (``student_init="teacher"``) and learns, in rounds, to take in one
DDIM step what its round's teacher takes in two: round r trains a student of
N_r = ``progressive.start_steps`` / 2^(r+1) steps against a teacher of 2·N_r steps, and
the next round's teacher is this round's student. A batch draws a grid time
t = i/N_r (i uniform in 1..N_r), noises the images to z_t, runs the round's teacher two
DDIM steps, t → t − ½/N_r → t − 1/N_r, and asks the student for the x̃ whose one DDIM
step lands where the two did (:func:`kd_jax.objectives.diffusion.two_step_target`),
expressed in the network's parameterisation at z_t; the loss is the squared error in
that space (v: the paper's "SNR+1" weighting), as the ``none`` method's.

The rounds run in one training phase of ``train.steps`` = rounds × steps per round:
the student module (:class:`RoundStudent`) carries its round's teacher as frozen
weights in its state, replaced by the student's own weights at the first step of every
round (at step 0 these are the teacher's, the student's start), and counts its steps,
so a resumed run resumes mid-round. The frozen weights are never differentiated or
updated by the optimiser (their variable type is not ``nnx.Param``). The learning-rate
schedule restarts with every round (``schedule_cycles`` = rounds,
:func:`kd_jax.engine.optim.learning_rate_schedule`), as the paper anneals it within each
round: one schedule over all rounds would leave the last ones, the hardest (2 → 1 step),
at a learning rate near zero. Each round's schedule is the whole phase's shrunk to the
round, warm-up included: with ``warmup_cosine`` every round starts from a learning rate
of 0 (its first step makes no update).
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
from kd_jax.methods.logit import regression
from kd_jax.objectives import diffusion
from kd_jax.tasks import diffusion as diffusion_task


class RoundStudent(nnx.Module):
  """The student (``model``) with its round's teacher: ``frozen`` (a pure dict of the
  model's parameters, taken at the first step of each round of ``steps_per_round``) and
  ``steps``, the training steps taken."""

  def __init__(self, model: nnx.Module, steps_per_round: int):
    self.model, self.steps_per_round = model, steps_per_round
    self.frozen = Frozen(weights_of(model))
    self.steps = StepCount(jnp.zeros((), jnp.int32))

  def round_teacher_weights(self):
    """The round's teacher as a pure dict: at a round's first step the student's own
    weights (the step's batch is made before it updates them), else the frozen ones."""
    fresh = self.steps[...] % self.steps_per_round == 0
    return select(fresh, weights_of(self.model), self.frozen.get_value())

  def __call__(self, z, t, labels=None, *, train: bool = False):
    if train:      # (in the step, before the update: the weights its batch was made with)
      self.frozen.set_value(self.round_teacher_weights())
      self.steps[...] = self.steps[...] + 1
    return self.model(z, t, labels, train=train)


def rounds_of(block) -> int:
  """log2(start_steps / final_steps): the halvings from the teacher to the last student."""
  return int(round(math.log2(block.start_steps // block.final_steps)))


def steps_per_round(config) -> int:
  return config.train.steps // rounds_of(config.progressive)


@dataclasses.dataclass(frozen=True)
class ProgressiveDenoising(diffusion_task.Denoising):
  """The diffusion task with progressive distillation's batches (the module docstring)."""
  start_steps: int = 256
  steps_per_round: int = 1

  def train_batch(self, data, index, mask, rng, policy=None, teacher=None):
    del teacher     # the round's teacher lives in the student's state
    graphdef, params, model_state = policy
    student = nnx.merge(graphdef, params, model_state)
    done = student.steps[...]
    round_ = done // self.steps_per_round
    student_steps = self.start_steps // (2 * 2**round_)       # N_r (traced)
    round_teacher = with_weights(student.model, student.round_teacher_weights())

    key_i, key_eps, key_drop = jax.random.split(rng, 3)
    x = diffusion_task.to_unit_range(data.images[index])
    labels = self.model_labels(data.labels[index], key_drop)
    n = student_steps.astype(jnp.float32)
    t = jax.random.randint(key_i, (x.shape[0],), 1, student_steps + 1).astype(jnp.float32) / n
    z_t = diffusion.noise(x, jax.random.normal(key_eps, x.shape), t)
    # The round's teacher: two DDIM steps, t → t − ½/N → t − 1/N.
    z, now = z_t, t
    for later in (t - 0.5 / n, t - 1.0 / n):
      x_hat, eps_hat = diffusion.to_x_eps(round_teacher(z.astype(self.dtype), now, labels), z,
                                          now, parameterization=self.parameterization)
      z, now = diffusion.ddim_step(x_hat, eps_hat, later), later
    x_tilde = diffusion.two_step_target(z_t, z, t, now)
    target = diffusion.from_x(x_tilde, z_t, t, parameterization=self.parameterization)
    metrics = {"round": round_.astype(jnp.float32),
               "student_steps": student_steps.astype(jnp.float32)}
    return ((z_t.astype(self.dtype), t, labels), jax.lax.stop_gradient(target), mask,
            metrics)


def _check(config) -> None:
  block = require_block(config, "progressive", "progressive_config")
  checks.ints_at_least("progressive", block, ("start_steps", "final_steps"), 1)
  start, final = block.start_steps, block.final_steps
  powers = all(n & (n - 1) == 0 for n in (start, final))
  if not powers or final >= start:
    raise ConfigError("progressive", "progressive.start_steps and .final_steps must be powers "
                      f"of 2 with final < start (each round halves), got {start} and {final}")
  rounds = rounds_of(block)
  if config.train.steps < rounds or config.train.steps % rounds:
    raise ConfigError("train.steps", f"train.steps={config.train.steps} must be a positive "
                      f"multiple of the {rounds} rounds ({start} → {final} steps)")
  require_teacher_start(config)


def _progressive_task(config, prepared):
  block = config.progressive
  return task_like(ProgressiveDenoising, prepared, start_steps=int(block.start_steps),
                   steps_per_round=steps_per_round(config))


METHODS = {
    "progressive": Method(regression, (diffusion_task.NAME,), uses_teacher=False,
                          check=_check, training_task=_progressive_task,
                          train_overrides=lambda config: {
                              "schedule_cycles": rounds_of(config.progressive)},
                          student_module=lambda config, model: RoundStudent(
                              model, steps_per_round(config))),
}
