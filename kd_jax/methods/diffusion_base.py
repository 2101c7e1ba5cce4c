"""What the diffusion distillation methods share (kd_jax/methods/progressive.py,
consistency.py, one_step_kd.py): variables a student wrapper keeps in its state that the
optimiser never sees, and the run's diffusion task with another batch maker."""

from __future__ import annotations

import dataclasses

from flax import nnx

from kd_jax.core.errors import ConfigError
from kd_jax.tasks import diffusion as diffusion_task


class Frozen(nnx.Variable):
  """Weights the step reads but never trains (the round's teacher): not an ``nnx.Param``."""


class StepCount(nnx.Variable):
  """The number of training steps the module has taken (its state, so resumes keep it)."""


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
