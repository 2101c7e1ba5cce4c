"""DistiLLM-2's contrastive distillation loss (Ko et al. 2025, "DistiLLM-2: A Contrastive
Approach Boosts the Distillation of LLMs", https://arxiv.org/abs/2503.07067).

On a teacher-written response ``y_T`` the student is pulled up with the skew KL; on a
response ``y_S`` the (starting) student wrote itself it is pushed towards the teacher with
the skew reverse KL, which lowers the likelihood of what the teacher would not write::

    L = mean_{t ∈ y_T} SKL_α₁(p_T ‖ q)  +  mean_{t ∈ y_S} SRKL_α₂(q ‖ p_T)

    SKL_α(p ‖ q)  = KL(p ‖ α·p + (1−α)·q)        SRKL_α(q ‖ p) = KL(q ‖ α·q + (1−α)·p)

(:func:`kd_jax.objectives.divergences.skew_kl`, ``skew_reverse_kl``). The released
``distillm_v2`` loss with its adaptive α and gradual β switched off is this sum with
α₁ = α₂ = 0.1; it averages each response's tokens and then the pairs, where this
averages over all tokens of each side (the library's per-token convention).
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from kd_jax.objectives import divergences
from kd_jax.objectives.masked import masked_mean


def distillm2_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, teacher_mask: ArrayLike,
                   student_mask: ArrayLike, *, alpha_teacher: float = 0.1,
                   alpha_student: float = 0.1) -> tuple[jax.Array, dict]:
  """The contrastive loss above on one batch of both kinds of response.

  Args:
    student_logits, teacher_logits: ``[B, T, V]`` logits of the same rows.
    teacher_mask: ``[B, T]`` the positions of teacher-written responses (the SKL term).
    student_mask: ``[B, T]`` the positions of student-written responses (the SRKL term).
    alpha_teacher, alpha_student: the skews α₁ and α₂, in [0, 1).

  Returns:
    ``(loss, metrics)``: the scalar loss, and its two terms (``teacher_skew_kl``,
    ``student_skew_reverse_kl``).
  """
  pulled = masked_mean(divergences.skew_kl(student_logits, teacher_logits, alpha=alpha_teacher),
                       teacher_mask)
  pushed = masked_mean(divergences.skew_reverse_kl(student_logits, teacher_logits,
                                                   alpha=alpha_student), student_mask)
  return pulled + pushed, {"teacher_skew_kl": pulled, "student_skew_reverse_kl": pushed}
