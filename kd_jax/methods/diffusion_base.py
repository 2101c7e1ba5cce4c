"""What the diffusion distillation methods share (kd_jax/methods/progressive.py,
consistency.py, one_step_kd.py, adversarial.py): variables a student wrapper keeps in its
state that the optimiser never sees, a model's weights as a pure dict and a copy of it
with other weights (the round teacher, the EMA target, the frozen teacher), and the
run's diffusion task with another batch maker."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.core.errors import ConfigError
from kd_jax.tasks import diffusion as diffusion_task


class Frozen(nnx.Variable):
  """Weights the step reads but never trains (the round's teacher): not an ``nnx.Param``."""


class StepCount(nnx.Variable):
  """The number of training steps the module has taken (its state, so resumes keep it)."""


def weights_of(model: nnx.Module):
  """``model``'s parameters as a pure dict, behind ``stop_gradient`` (read, never trained)."""
  return jax.lax.stop_gradient(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def with_weights(model: nnx.Module, weights) -> nnx.Module:
  """A copy of ``model`` whose parameters are ``weights`` (a pure dict of :func:`weights_of`'s
  form)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  nnx.replace_by_pure_dict(params, weights)
  return nnx.merge(graphdef, params, rest)


def select(condition, when_true, when_false):
  """Leaf by leaf, ``when_true`` where the (traced, scalar) ``condition`` holds."""
  return jax.tree.map(lambda a, b: jnp.where(condition, a, b), when_true, when_false)


def task_like(cls, prepared, **fields):
  """The run's diffusion task (``prepared.task``) as an instance of ``cls``, a subclass of
  :class:`kd_jax.tasks.diffusion.Denoising` that makes its own batches, with ``fields``."""
  return cls(**{f.name: getattr(prepared.task, f.name)
                for f in dataclasses.fields(diffusion_task.Denoising)}, **fields)


def require_teacher_start(config, *, v_prediction: bool = False) -> None:
  """A student that starts as the teacher's copy (and, with ``v_prediction``, reads both
  as v-predictors); raises ``ConfigError`` naming the field otherwise."""
  method = config.method
  if v_prediction and config.dataset.parameterization != "v":
    raise ConfigError("dataset.parameterization", f"method={method!r} reads the student and "
                      "teacher as v-predictors: set dataset.parameterization='v'")
  if config.get("student_init") != "teacher":
    raise ConfigError("student_init", f"method={method!r} starts from the teacher: set "
                      "student_init='teacher' (and the teacher's student.model and kwargs)")
