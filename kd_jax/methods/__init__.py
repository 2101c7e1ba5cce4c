"""Distillation methods: the registry of method families (DESIGN §7).

Every method builds its loss from the same two terms:

    loss = logit_term + feature_weight · feature_term

* ``logit_term`` — ``kd_loss(..., divergence, temperature(step), alpha(step))``
  for ``kd`` and the feature methods, hard-label CE only for ``none``, CE + a ramped
  DKD for ``dkd``; the language-model methods beyond token-level ``kd`` and the
  sentence-encoder methods replace it with their own (see their modules).
* ``feature_term`` — the method's feature or relational loss, summed over its
  (student layer → teacher layer) pairs (:mod:`kd_jax.methods.student`).

A method family is one module that registers its names (``METHODS``) with their
objective, checks and hooks (:class:`kd_jax.methods.base.Method`); a new one is a module
plus one line below.

* :mod:`~kd_jax.methods.logit`: ``none``, ``kd``, ``dkd``, ``gkd``
* :mod:`~kd_jax.methods.features`: ``fitnets``, ``at``, ``rkd``, ``sp``, ``pkt``
* :mod:`~kd_jax.methods.sentence`: ``distilbert``, ``minilm``
* :mod:`~kd_jax.methods.preference`: ``dpo``
* :mod:`~kd_jax.methods.policy_gradient`: ``grpo``, ``minillm``
* :mod:`~kd_jax.methods.contrastive`: ``distillm2``
* :mod:`~kd_jax.methods.cross_tokenizer`: ``uld``, ``aligned_kd`` (teacher and student with
  different tokenizers)
* :mod:`~kd_jax.methods.deit`: ``deit_hard``, ``deit_soft`` (a ViT student's distillation
  token)
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.methods import (adversarial, consistency, contrastive, cross_tokenizer, deit,
                            features, logit, one_step_kd, policy_gradient, preference,
                            progressive, sentence)
from kd_jax.methods.base import Method, Settings
from kd_jax.methods.student import Student, adapter_widths, feature_pairs as _feature_pairs
from kd_jax.methods.student import trainable_student as _trainable_student
from kd_jax.objectives import schedules

# name -> method: one line per family.
REGISTRY: dict[str, Method] = {
    **logit.METHODS,
    **features.METHODS,
    **sentence.METHODS,
    **preference.METHODS,
    **policy_gradient.METHODS,
    **contrastive.METHODS,
    **progressive.METHODS,
    **consistency.METHODS,
    **one_step_kd.METHODS,
    **adversarial.METHODS,
    **cross_tokenizer.METHODS,
    **deit.METHODS,
}

__all__ = ["REGISTRY", "Method", "Settings", "Student", "accepting", "adapter_widths",
           "feature_pairs", "make_objective", "student_train_config", "trainable_student"]


def accepting(task_family: str) -> tuple[str, ...]:
  """The methods that run on ``task_family`` (a :data:`kd_jax.tasks.FAMILIES` name), in
  registry order.

  >>> accepting("embedding")
  ('distilbert', 'minilm')
  """
  return tuple(name for name, method in REGISTRY.items() if task_family in method.tasks)


def feature_pairs(config, student_features: dict, teacher_features: dict) -> dict[str, str]:
  """:func:`kd_jax.methods.student.feature_pairs` for ``config.method``."""
  return _feature_pairs(config, student_features, teacher_features, REGISTRY[config.method])


def trainable_student(config, student_model: nnx.Module, teacher_model: nnx.Module):
  """:func:`kd_jax.methods.student.trainable_student` for ``config.method``: ``(module,
  pairs)``, what a run trains and checkpoints, and its layer pairs."""
  return _trainable_student(config, student_model, teacher_model, REGISTRY[config.method])


def make_objective(config, pairs: dict[str, str] | None = None) -> Callable:
  """Builds ``objective(step, student_out, teacher_out, labels, mask) -> (loss, metrics)``.

  ``loss = logit_term + feature_weight · feature_term`` for ``config.method``'s
  entry of :data:`REGISTRY`. ``pairs`` are the resolved (student layer → teacher
  layer) pairs of :func:`feature_pairs`; features are keyed by student layer on
  the student side and by teacher layer on the teacher side.

  ``student_out`` / ``teacher_out`` are ``(logits, features)`` pairs; the teacher's
  is ``None`` for ``method='none'``. Temperature and α follow their schedules
  as functions of the traced ``step``.
  """
  method = REGISTRY[config.method]
  # A constant schedule reaches the losses as a Python number, so that α = 1 (the
  # feature methods' default) skips the divergence instead of computing 0 · D,
  # which is NaN wherever D is infinite (see losses.kd_loss).
  settings = Settings(
      temperature=schedules.make(config.temperature, field="temperature", positive=True,
                                 constant_as_number=True),
      alpha=schedules.make(config.alpha, field="alpha", unit_interval=True,
                           constant_as_number=True),
      divergence=config.divergence, divergence_params=dict(config.divergence_params),
      dkd=config.dkd, gkd=config.get("gkd"), dpo=config.get("dpo"), rl=config.get("rl"),
      distillm2=config.get("distillm2"), consistency=config.get("consistency"),
      adversarial=config.get("adversarial"), uld=config.get("uld"),
      topk_mode=(config.get("topk") or {}).get("mode", "tail"),
      loss_chunk_size=int(config.get("loss_chunk_size", 0)))
  pairs = dict(pairs or {})
  feature_loss = method.feature_loss
  if feature_loss is not None and method.feature_options is not None:
    feature_loss = functools.partial(feature_loss, **method.feature_options(config))

  uses_teacher = method.runs_teacher(config)

  def objective(step, student_out, teacher_out, labels, mask):
    s_logits, s_features = student_out
    t_logits, t_features = teacher_out if uses_teacher else (None, {})
    loss, metrics = method.logit_term(settings, step, s_logits, t_logits, labels, mask)
    if method.feature_loss is not None:
      feature_term = sum(_masked_feature_loss(feature_loss, s_features[s],
                                              t_features[t_name], mask)
                         for s, t_name in pairs.items())
      metrics["feature_loss"] = feature_term
      loss = loss + config.feature_weight * feature_term
    metrics["loss"] = loss
    return loss, metrics

  # The step then gives (hidden, head) pairs instead of logits (kd_jax.engine.step.forward).
  objective.head_inputs = bool(method.head_inputs and method.head_inputs(config))
  return objective


def _masked_feature_loss(fn, student_feature, teacher_feature, mask):
  student_feature = student_feature.astype(jnp.float32)
  teacher_feature = jax.lax.stop_gradient(teacher_feature.astype(jnp.float32))
  return fn(student_feature, teacher_feature, mask=mask)


def student_train_config(config):
  """``config.train`` with the method's overrides for the distilled student's phase."""
  overrides = REGISTRY[config.method].train_overrides
  fields = overrides(config) if overrides is not None else {}
  if not fields:
    return config.train
  train_config = config.train.copy_and_resolve_references()
  with train_config.unlocked():
    train_config.update(fields)
  return train_config
