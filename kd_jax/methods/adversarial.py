r"""``adversarial`` — adversarial diffusion distillation, the SD-Turbo method (Sauer et al.
2023, "Adversarial Diffusion Distillation", §3), in miniature.

The student (a copy of the teacher, ``student_init="teacher"``) denoises a training
image noised to one of a few student times τ ∈ ``adversarial.student_times`` (ADD's
four: 1, ¾, ½, ¼) in one step, x̂_θ. Two losses train it:

* **score distillation**: x̂_θ is noised again to a time t ~ U(0, 1) with fresh noise and
  the frozen teacher denoises it; the student regresses the teacher's answer,
  c(t)·‖x̂_θ − sg(x̂_ψ)‖² (mean over pixels) with ADD's weighting c(t) = alpha(t), times
  ``adversarial.distillation_weight`` (ADD's λ = 2.5);
* **adversarial**: a small discriminator scores images; the student minimises
  −D(x̂_θ) and the discriminator the hinge loss max(0, 1 − D(x)) + max(0, 1 + D(x̂_θ))
  against the batch's real images. ADD's discriminator is a frozen DINOv2 with trainable
  heads; here it is a small strided CNN trained from scratch on the images themselves
  (:class:`Discriminator`), unconditional — the miniature has no pretrained feature
  network to borrow.

The discriminator has its own weights and optimiser: it lives in the student module
(:class:`AdversarialStudent`, next to the generator ``model``), its parameters get their
own learning rate (``adversarial.discriminator_learning_rate``, no weight decay) through
the phase's ``param_groups`` (kd_jax/engine/optim.py), and one loss trains both sides
because each side's term sees the other's through ``stop_gradient``: the student's
adversarial term calls the discriminator with frozen weights, the discriminator's terms
see the student's samples frozen. The frozen teacher is the student's own starting
weights, kept in its state from the first step (a teacher in the step could not score
the student's samples, which exist only inside the differentiated function).
"""

from __future__ import annotations

import dataclasses

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


class Discriminator(nnx.Module):
  """Strided 3x3 convolutions with leaky ReLUs, global average pooling, one logit per image."""

  def __init__(self, widths, *, rngs: nnx.Rngs, channels: int = 1):
    convs, width = [], channels
    for w in widths:
      convs.append(nnx.Conv(width, w, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs))
      width = w
    self.convs = nnx.List(convs)
    self.head = nnx.Linear(width, 1, rngs=rngs)

  def __call__(self, images):
    h = images
    for conv in self.convs:
      h = jax.nn.leaky_relu(conv(h), 0.2)
    return self.head(h.mean(axis=(1, 2)))[:, 0]


def _frozen_copy(module: nnx.Module) -> nnx.Module:
  """``module`` with its parameters behind ``stop_gradient`` (the other side of the game)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state))


class AdversarialStudent(nnx.Module):
  """The generator (``model``), its ``discriminator``, the frozen ``teacher`` weights (a
  pure dict, taken at the first step) and the step count. Called with the three inputs
  of a denoiser it is the generator; with the training batch's six it returns the terms
  of both losses (the module docstring)."""

  def __init__(self, model: nnx.Module, discriminator: Discriminator):
    self.model, self.discriminator = model, discriminator
    self.teacher = Frozen(weights_of(model))
    self.steps = StepCount(jnp.zeros((), jnp.int32))

  def teacher_weights(self):
    """The frozen teacher: before the first step, the student's own (the teacher's copy)."""
    return select(self.steps[...] == 0, weights_of(self.model), self.teacher.get_value())

  def __call__(self, z, t, labels=None, real=None, t_distill=None, eps_distill=None, *,
               train: bool = False):
    if real is None:
      return self.model(z, t, labels, train=train)
    x_gen, _ = diffusion.to_x_eps(self.model(z, t, labels, train=train), z, t)   # x̂_θ, one step
    teacher = with_weights(self.model, self.teacher_weights())
    z_distill = diffusion.noise(jax.lax.stop_gradient(x_gen), eps_distill, t_distill)
    teacher_x, _ = diffusion.to_x_eps(teacher(z_distill, t_distill, labels), z_distill,
                                      t_distill)
    if train:
      self.teacher.set_value(self.teacher_weights())
      self.steps[...] = self.steps[...] + 1
    return {"x_gen": x_gen, "teacher_x": jax.lax.stop_gradient(teacher_x),
            "weight": diffusion.alpha_sigma(t_distill)[0],
            "d_fake_for_student": _frozen_copy(self.discriminator)(x_gen),
            "d_fake": self.discriminator(jax.lax.stop_gradient(x_gen)),
            "d_real": self.discriminator(real)}


@dataclasses.dataclass(frozen=True)
class AdversarialDenoising(diffusion_task.Denoising):
  """The diffusion task with ADD's batches: images noised to a student time, the real
  images, and the re-noising time and noise of the score-distillation term."""
  student_times: tuple = (1.0, 0.75, 0.5, 0.25)

  def train_batch(self, data, index, mask, rng, policy=None, teacher=None):
    del policy, teacher
    key_tau, key_eps, key_t, key_eps2, key_drop = jax.random.split(rng, 5)
    x = diffusion_task.to_unit_range(data.images[index])
    labels = self.model_labels(data.labels[index], key_drop)
    tau = jax.random.choice(key_tau, jnp.asarray(self.student_times, jnp.float32),
                            (x.shape[0],))
    z = diffusion.noise(x, jax.random.normal(key_eps, x.shape), tau)
    t_distill = jax.random.uniform(key_t, (x.shape[0],))
    inputs = (z.astype(self.dtype), tau, labels, x, t_distill,
              jax.random.normal(key_eps2, x.shape))
    return inputs, jnp.zeros((x.shape[0],), jnp.float32), mask, {}


def _adversarial_term(settings, step, out, t_logits, targets, mask):
  """Both players' losses in one: each side's term sees the other's frozen."""
  del step, t_logits, targets
  a = settings.adversarial
  squared = jnp.square(out["x_gen"] - out["teacher_x"]).reshape(out["x_gen"].shape[0], -1)
  distill = masked_mean(out["weight"] * squared.mean(axis=1), mask)
  student_adversarial = masked_mean(-out["d_fake_for_student"], mask)
  discriminator = (masked_mean(jax.nn.relu(1.0 - out["d_real"]), mask)
                   + masked_mean(jax.nn.relu(1.0 + out["d_fake"]), mask))
  loss = student_adversarial + a.distillation_weight * distill + discriminator
  return loss, {"distill": distill, "student_adversarial": student_adversarial,
                "discriminator": discriminator}


def _check(config) -> None:
  a = require_block(config, "adversarial", "adversarial_config")
  times = a.student_times
  if not times or not all(isinstance(v, (int, float)) and 0 < v <= 1 for v in times):
    raise ConfigError("adversarial.student_times", "adversarial.student_times must be a "
                      f"non-empty tuple of times in (0, 1], got {times!r}")
  checks.nonnegative("adversarial.distillation_weight", a.distillation_weight)
  checks.positive("adversarial.discriminator_learning_rate", a.discriminator_learning_rate)
  checks.ints_at_least("adversarial", a, ("discriminator_width",), 1)
  require_teacher_start(config, v_prediction=True)


def _student(config, model):
  width = int(config.adversarial.discriminator_width)
  channels = model.input_shape[-1]
  return AdversarialStudent(model, Discriminator((width, 2 * width), channels=channels,
                                                 rngs=nnx.Rngs(config.seed + 1)))


def _discriminator_optimiser(config) -> dict:
  return {"param_groups": {"discriminator": {
      "learning_rate": float(config.adversarial.discriminator_learning_rate),
      "weight_decay": 0.0}}}


METHODS = {
    "adversarial": Method(_adversarial_term, (diffusion_task.NAME,), uses_teacher=False,
                          check=_check,
                          training_task=lambda config, prepared: task_like(
                              AdversarialDenoising, prepared,
                              student_times=tuple(config.adversarial.student_times)),
                          student_module=_student, train_overrides=_discriminator_optimiser),
}
