"""DistiLLM-2's contrastive distillation (``method="distillm2"``; Ko et al. 2025) of a
language-model student, from the trained baseline.

Its data are DPKD's teacher-versus-student pairs (:mod:`kd_jax.methods.preference`,
``pairs="teacher"``): for each training prompt, a verified response of the teacher's
transfer set (the ``transfer`` block) and one the starting student sampled at
``distillm2.temperature``, made once. Each step runs the teacher live on both rows and
pulls the student up on the teacher's response with the skew KL while pushing it towards
the teacher on its own with the skew reverse KL
(:func:`kd_jax.objectives.contrastive.distillm2_loss`). DPO on the same pairs is the
``dpo`` method with ``dpo.pairs="teacher"`` (the baseline DistiLLM-2 compares with).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.methods import preference
from kd_jax.methods.base import PROMPT_TASKS, Method, require_block, require_sft_start
from kd_jax.objectives import contrastive
from kd_jax.tasks import lm


def _contrastive_term(settings, step, s_logits, t_logits, labels, mask):
  """``distillm2`` on a batch of pairs (rows: the teacher's responses, then the student's)."""
  del step, labels            # the pairs' targets and reference scores: not used here
  d, half = settings.distillm2, s_logits.shape[0] // 2
  teacher_rows = (jnp.arange(s_logits.shape[0]) < half)[:, None]
  return contrastive.distillm2_loss(s_logits, t_logits, mask & teacher_rows,
                                    mask & ~teacher_rows, alpha_teacher=d.alpha_teacher,
                                    alpha_student=d.alpha_student)


def _pair_block(config) -> ml_collections.ConfigDict:
  """The pair-making fields of :func:`kd_jax.methods.preference.pair_data`."""
  d = config.distillm2
  return ml_collections.ConfigDict(dict(pairs="teacher", k=1, temperature=d.temperature,
                                        teacher_weight=0.0, correct_chosen=True))


def _check(config) -> None:
  d = require_block(config, "distillm2", "distillm2_config")
  require_sft_start(config)
  lm.check_transfer_block(config, "method='distillm2'")
  for field in ("alpha_teacher", "alpha_student"):
    checks.in_unit_interval(f"distillm2.{field}", d[field], closed=False)
  checks.positive("distillm2.temperature", d.temperature)
  checks.positive("distillm2.learning_rate", d.learning_rate)
  if config.teacher_cache not in ("auto", "none"):
    raise ConfigError("teacher_cache", "method='distillm2' runs the teacher live on its pairs "
                      "(two rows per example): teacher_cache='auto' or 'none'")


METHODS = {
    "distillm2": Method(
        _contrastive_term, PROMPT_TASKS, check=_check,
        train_overrides=lambda c: {"learning_rate": c.distillm2.learning_rate},
        training_task=preference.pairs_task,
        student_data=lambda config, *rest: preference.pair_data(_pair_block(config), config,
                                                               *rest)),
}
