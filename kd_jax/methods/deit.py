"""Distillation through a distillation token (Touvron et al. 2021, DeiT): ``deit_hard`` and
``deit_soft``.

The student is a ViT with ``distillation_token=True`` (:mod:`kd_jax.models.vit`): its
class head learns the labels, its distillation head learns the teacher::

    loss = α · CE(class head, y) + feature_weight · L_dist(distillation head, teacher)

    deit_hard:  L_dist = CE(distillation logits, argmax of the teacher's logits)
    deit_soft:  L_dist = T² · KL(softmax(z_t / T) ‖ softmax(z_dist / T))

DeiT's hard distillation weighs both ½ (α = feature_weight = 0.5); its soft one uses
α = 1 − λ, feature_weight = λ (λ = 0.1, T = 3 in the paper). At test time the ViT averages
the two heads' logits. The pair is the student's ``distillation_logits`` feature and the
teacher's output (the ``logits`` feature every model gives, :data:`kd_jax.models.LOGITS_FEATURE`).
"""

from __future__ import annotations

import jax.numpy as jnp

from kd_jax import models
from kd_jax.core.errors import ConfigError
from kd_jax.methods.base import Method
from kd_jax.objectives import losses

DISTILLATION_FEATURE = "distillation_logits"


def class_head_ce(settings, step, s_logits, t_logits, labels, mask):
  """α · CE of the class head (the student's training logits) on the labels."""
  del t_logits
  a = settings.alpha(step)
  ce = losses.cross_entropy(s_logits, labels, mask)
  return a * ce, {"ce": ce, "alpha": a}


def hard_distillation(student_logits, teacher_logits, mask=None):
  """CE of the distillation head on the teacher's argmax (``[B, C]`` each; mean over mask)."""
  return losses.cross_entropy(student_logits, jnp.argmax(teacher_logits, axis=-1), mask)


def soft_distillation(student_logits, teacher_logits, mask=None, *, temperature: float):
  """T² · KL(teacher ‖ distillation head) at temperature T (``[B, C]`` each; mean over mask)."""
  return losses.kd_loss(student_logits, teacher_logits, None, divergence="kl",
                        temperature=temperature, alpha=0.0, mask=mask)


def _pairs(student_features, teacher_features):
  del student_features, teacher_features
  return {DISTILLATION_FEATURE: models.LOGITS_FEATURE}


def _check(config) -> None:
  student = config.student
  if student.model != "vit" or not student.kwargs.get("distillation_token", False):
    raise ConfigError("student.kwargs.distillation_token", f"method={config.method!r} trains "
                      "the distillation head of a ViT: set student.model='vit' and "
                      f"student.kwargs.distillation_token=True (got {student.model!r})")
  if config.baseline:
    raise ConfigError("baseline", f"method={config.method!r}: the baseline would be this ViT "
                      "with an untrained distillation head in its test-time average; set "
                      "baseline=False and run the ViT without the token (method='none', "
                      "student.kwargs.distillation_token=False) as its own point")
  if config.method == "deit_soft" and config.temperature.get("schedule") != "constant":
    raise ConfigError("temperature", "deit_soft uses one temperature: set "
                      "temperature.schedule='constant'")


METHODS = {
    "deit_hard": Method(class_head_ce, ("classification",), feature_loss=hard_distillation,
                        default_pairs=_pairs, check=_check, distillation_head=True),
    "deit_soft": Method(class_head_ce, ("classification",), feature_loss=soft_distillation,
                        feature_options=lambda c: {"temperature": float(c.temperature.init)},
                        default_pairs=_pairs, check=_check, distillation_head=True),
}
