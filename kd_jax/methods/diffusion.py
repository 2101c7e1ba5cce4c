"""Diffusion step distillation: a many-step teacher distilled into a few-step student (issue 24).

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
updated by the optimiser (their variable type is not ``nnx.Param``).

``consistency`` — consistency distillation (Song et al. 2023, "Consistency Models",
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
is updated each step with the weights that step's batch was made with.

``one_step_kd`` — knowledge distillation into a one-step generator (Luhman & Luhman
2021, "Knowledge Distillation in Iterative Generative Models for Improved Sampling
Speed"; the "KD" baseline of the rectified-flow papers). The teacher's DDIM samples at
``one_step_kd.teacher_steps`` steps from ``one_step_kd.pairs`` noise draws are made once
and cached, keyed by the teacher and the settings (``<cache>/transfer_sets/
diffusion_pairs-<key>.npz``), like a language model's transfer set; the student then
regresses each sample from its noise at t = 1, in the network's parameterisation (v
at t = 1 is about −x: the loss is about the squared error of the image).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.config import checks
from kd_jax.core import files, parallel
from kd_jax.core import identity as identity_lib
from kd_jax.core.errors import ConfigError
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.methods.base import Method, require_block
from kd_jax.methods.logit import regression
from kd_jax.objectives import diffusion
from kd_jax.objectives.masked import masked_mean
from kd_jax.tasks import diffusion as diffusion_task
from kd_jax.tasks import diffusion_sampler

PAIR_BATCH = 256        # teacher samples drawn per sampler call (one compilation)


class Frozen(nnx.Variable):
  """Weights the step reads but never trains (the round's teacher): not an ``nnx.Param``."""


class StepCount(nnx.Variable):
  """The number of training steps the module has taken (its state, so resumes keep it)."""


class RoundStudent(nnx.Module):
  """The student (``model``) with its round's teacher: ``frozen`` (a pure dict of the
  model's parameters, taken at the first step of each round of ``steps_per_round``) and
  ``steps``, the training steps taken."""

  def __init__(self, model: nnx.Module, steps_per_round: int):
    self.model, self.steps_per_round = model, steps_per_round
    self.frozen = Frozen(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    self.steps = StepCount(jnp.zeros((), jnp.int32))

  def round_teacher_weights(self):
    """The round's teacher as a pure dict: at a round's first step the student's own
    weights (the step's batch is made before it updates them), else the frozen ones."""
    fresh = self.steps[...] % self.steps_per_round == 0
    current = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(self.model, nnx.Param)))
    return jax.tree.map(lambda c, f: jnp.where(fresh, c, f), current, self.frozen.get_value())

  def __call__(self, z, t, labels=None, *, train: bool = False):
    if train:      # (in the step, before the update: the weights its batch was made with)
      self.frozen.set_value(self.round_teacher_weights())
      self.steps[...] = self.steps[...] + 1
    return self.model(z, t, labels, train=train)


class ConsistencyStudent(nnx.Module):
  """A consistency function around ``network`` (a v-predicting denoiser), with its EMA
  target network (``target``, a pure dict of the network's parameters) and step count."""

  def __init__(self, network: nnx.Module, *, sigma_data: float, ema: float):
    self.network, self.sigma_data, self.ema = network, sigma_data, ema
    self.num_classes = getattr(network, "num_classes", None)
    self.target = Frozen(nnx.to_pure_dict(nnx.state(network, nnx.Param)))
    self.steps = StepCount(jnp.zeros((), jnp.int32))

  def c_skip(self, t):
    sd2 = self.sigma_data**2
    noise_level = lambda t: jnp.exp(-diffusion.logsnr(t))        # sigma² / alpha²
    return sd2 / (sd2 + noise_level(t) - noise_level(0.0))

  def consistency(self, network, z, t, labels):
    """f(z, t) with ``network``'s weights (the student's or the target's)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
    alpha, sigma = (a[:, None, None, None] for a in diffusion.alpha_sigma(t))
    skip = self.c_skip(t)[:, None, None, None]
    x_hat = alpha * z - sigma * network(z, t, labels)
    return skip * z / alpha + (1.0 - skip) * x_hat

  def target_weights(self):
    """The EMA target as a pure dict: the student itself before the first step."""
    current = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(self.network, nnx.Param)))
    first = self.steps[...] == 0
    return jax.tree.map(lambda c, e: jnp.where(first, c, e), current, self.target.get_value())

  def target_network(self):
    graphdef, params, rest = nnx.split(self.network, nnx.Param, ...)
    nnx.replace_by_pure_dict(params, self.target_weights())
    return nnx.merge(graphdef, params, rest)

  def __call__(self, z, t, labels=None, *, train: bool = False):
    if train:      # the EMA takes the weights this step's batch was made with
      current = jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(self.network, nnx.Param)))
      self.target.set_value(jax.tree.map(lambda e, c: self.ema * e + (1.0 - self.ema) * c,
                                         self.target_weights(), current))
      self.steps[...] = self.steps[...] + 1
    f = self.consistency(self.network, z, t, labels)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (z.shape[0],))
    alpha, sigma = (a[:, None, None, None] for a in diffusion.alpha_sigma(t))
    return (alpha * z - f) / sigma          # the v whose x̂ is f: what samplers read


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
  alpha, sigma = (a[:, None, None, None] for a in diffusion.alpha_sigma(t))
  f = alpha * z - sigma * prediction
  return consistency_distance(settings.consistency.distance, f, target, mask), {}


def rounds_of(block) -> int:
  """log2(start_steps / final_steps): the halvings from the teacher to the last student."""
  return int(round(math.log2(block.start_steps // block.final_steps)))


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
    model_graphdef, model_params, model_rest = nnx.split(student.model, nnx.Param, ...)
    nnx.replace_by_pure_dict(model_params, student.round_teacher_weights())
    round_teacher = nnx.merge(model_graphdef, model_params, model_rest)

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
  if config.get("student_init") != "teacher":
    raise ConfigError("student_init", "method='progressive' distils the teacher into a copy of "
                      "itself: set student_init='teacher' (and the teacher's student.model "
                      "and student.kwargs)")


def _progressive_task(config, prepared):
  block = config.progressive
  return ProgressiveDenoising(**{f.name: getattr(prepared.task, f.name)
                                 for f in dataclasses.fields(diffusion_task.Denoising)},
                              start_steps=int(block.start_steps),
                              steps_per_round=config.train.steps // rounds_of(block))


@device_split
class PairData(DeviceSplit):
  """The teacher's (noise, sample) pairs on the devices, with the samples' labels (0 when
  unconditional)."""
  noise: jax.Array
  samples: jax.Array
  labels: jax.Array


@dataclasses.dataclass(frozen=True)
class OneStepDenoising(diffusion_task.Denoising):
  """The diffusion task whose batches are the teacher's pairs: (noise, t = 1) → its sample."""

  def train_batch(self, data, index, mask, rng, policy=None, teacher=None):
    del rng, policy, teacher
    z = data.noise[index]
    t = jnp.ones((z.shape[0],), jnp.float32)
    labels = self.model_labels(data.labels[index])
    target = diffusion.from_x(data.samples[index], z, t, parameterization=self.parameterization)
    return (z.astype(self.dtype), t, labels), target, mask, {}


def teacher_pairs(config, prepared, teacher_module, teacher_identity: dict, cache_dir: str):
  """``(noise, samples, labels)`` as NumPy arrays: the teacher's DDIM samples from fixed noise,
  read from the cache or made (and cached) now."""
  block, d = config.one_step_kd, config.dataset
  num_classes = prepared.task.num_classes
  key = identity_lib.digest({"teacher": teacher_identity, "block": block.to_dict(),
                             "seed": config.seed, "guidance": d.guidance,
                             "conditional": num_classes is not None,
                             "parameterization": d.parameterization})
  path = os.path.join(cache_dir, f"diffusion_pairs-{key}.npz")
  if os.path.exists(path):
    with np.load(path) as stored:
      return stored["noise"], stored["samples"], stored["labels"]
  shape = tuple(prepared.train_data.images.shape[1:])
  noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 7),
                                       (block.pairs, *shape)))
  labels = (np.arange(block.pairs, dtype=np.int32) % num_classes if num_classes is not None
            else np.zeros(block.pairs, np.int32))
  graphdef, state = nnx.split(teacher_module)
  samples = []
  for start in range(0, block.pairs, PAIR_BATCH):
    samples.append(np.asarray(diffusion_sampler.sample(
        graphdef, state, jnp.asarray(noise[start:start + PAIR_BATCH]),
        steps=int(block.teacher_steps),
        labels=None if num_classes is None else jnp.asarray(labels[start:start + PAIR_BATCH]),
        guidance=float(d.guidance), parameterization=d.parameterization)))
  samples = np.concatenate(samples)
  os.makedirs(cache_dir, exist_ok=True)
  with files.atomic_open(path, "wb") as f:       # complete or absent
    np.savez(f, noise=noise, samples=samples, labels=labels)
  return noise, samples, labels


def _pair_data(config, prepared, student_module, teacher_module, teacher_identity, cache_dir):
  del student_module
  noise, samples, labels = teacher_pairs(config, prepared, teacher_module, teacher_identity,
                                         cache_dir)
  data = PairData(*parallel.put_replicated((noise, samples, labels), prepared.mesh))
  return data, {"teacher_pairs": {"pairs": int(len(noise)),
                                  "teacher_steps": int(config.one_step_kd.teacher_steps)}}


def _one_step_task(config, prepared):
  return OneStepDenoising(**{f.name: getattr(prepared.task, f.name)
                             for f in dataclasses.fields(diffusion_task.Denoising)})


def _check_one_step(config) -> None:
  block = require_block(config, "one_step_kd", "one_step_kd_config")
  checks.ints_at_least("one_step_kd", block, ("pairs", "teacher_steps"), 1)


def _check_consistency(config) -> None:
  block = require_block(config, "consistency", "consistency_config")
  checks.ints_at_least("consistency", block, ("grid",), 1)
  checks.choice("consistency.distance", block.distance, DISTANCES)
  checks.in_unit_interval("consistency.ema", block.ema)
  if block.sigma_data <= 0:
    raise ConfigError("consistency.sigma_data", "consistency.sigma_data must be > 0, got "
                      f"{block.sigma_data}")
  if config.dataset.parameterization != "v":
    raise ConfigError("dataset.parameterization", "method='consistency' reads the teacher and "
                      "student as v-predictors: set dataset.parameterization='v'")
  if config.get("student_init") != "teacher":
    raise ConfigError("student_init", "method='consistency' starts from the teacher: set "
                      "student_init='teacher' (and the teacher's student.model and kwargs)")


def _consistency_task(config, prepared):
  return ConsistencyDenoising(**{f.name: getattr(prepared.task, f.name)
                                 for f in dataclasses.fields(diffusion_task.Denoising)},
                              grid=int(config.consistency.grid))


METHODS = {
    "progressive": Method(regression, (diffusion_task.NAME,), uses_teacher=False,
                          check=_check, training_task=_progressive_task,
                          student_module=lambda config, model: RoundStudent(
                              model, config.train.steps // rounds_of(config.progressive))),
    "one_step_kd": Method(regression, (diffusion_task.NAME,), uses_teacher=False,
                          check=_check_one_step, training_task=_one_step_task,
                          student_data=_pair_data),
    "consistency": Method(_consistency_term, (diffusion_task.NAME,), uses_teacher=True,
                          check=_check_consistency, training_task=_consistency_task,
                          student_module=lambda config, model: ConsistencyStudent(
                              model, sigma_data=float(config.consistency.sigma_data),
                              ema=float(config.consistency.ema))),
}
