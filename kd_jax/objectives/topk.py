r"""Top-k teacher logits: the offline form of a language-model teacher (DESIGN §5.4).

A full teacher distribution costs ``V`` floats per token (32k–152k for real
vocabularies); the cache keeps, per token, the teacher's ``k`` largest **raw**
logits, their token ids and the logsumexp of all ``V`` raw logits
(:class:`TopKLogits`, built by :func:`from_logits`). Two ways to distil from it
(``topk.mode``):

* ``"renormalize"`` — both distributions restricted to the teacher's ``k`` ids:
  ``p̃ = softmax(t_topk / T)``, ``q̃ = softmax(s[ids] / T)`` and ``D(p̃, q̃)``, as
  Tunix, MaxText and ModelOpt do. The student's mass outside those ids is not
  penalised (a student may put most of its mass elsewhere and still score 0).
* ``"tail"`` — the student keeps its full vocabulary: both distributions become
  ``k + 1`` buckets, the ``k`` ids and one tail bucket holding the rest of the mass
  (DistillKit, TRL's server trainer). The teacher's buckets come from the stored
  logsumexp: ``p_i = exp(t_i − lse)``, ``p_tail = 1 − Σ p_i``, exact at T = 1. At
  T ≠ 1 the teacher's tempered tail is unknown (it needs the missing logits): the
  teacher's k + 1 bucket distribution at T = 1 is tempered as a whole
  (``softmax(log p / T)``), an approximation that treats the tail as one token;
  the student's buckets are exact at every T.

Either way the divergence is one of :data:`kd_jax.divergences.PROBABILITY_DIVERGENCES`
on the bucket distributions, scaled by T² (as ``kd_loss``); with ``k = V`` both
modes equal the full-logit loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.objectives import divergences
from kd_jax.objectives import losses

MODES = ("renormalize", "tail")


@dataclasses.dataclass(frozen=True)
class TopKLogits:
  """``logits`` float32 ``[..., k]`` (descending), ``ids`` int32 ``[..., k]``, ``lse`` ``[...]``."""
  logits: jax.Array
  ids: jax.Array
  lse: jax.Array

  @property
  def k(self) -> int:
    return int(self.ids.shape[-1])

  def bytes_per_position(self) -> int:
    return sum(x.dtype.itemsize * (x.shape[-1] if x.ndim == self.lse.ndim + 1 else 1)
               for x in (self.logits, self.ids, self.lse))

  def __getitem__(self, index) -> TopKLogits:
    """The rows ``index`` of every field (a batch gathered from a cached split)."""
    return TopKLogits(self.logits[index], self.ids[index], self.lse[index])


jax.tree_util.register_dataclass(TopKLogits, data_fields=["logits", "ids", "lse"],
                                 meta_fields=[])


def from_logits(logits: jax.Array, k: int) -> TopKLogits:
  """The top-k form of raw teacher logits ``[..., V]`` (ties broken by lower id)."""
  logits = logits.astype(jnp.float32)
  values, ids = jax.lax.top_k(logits, k)
  return TopKLogits(values, ids.astype(jnp.int32), jax.nn.logsumexp(logits, axis=-1))


# NumPy, not jnp: importing kd_jax must not start a JAX backend (jax.distributed first).
_LOG_TINY = float(np.log(np.finfo(np.float32).tiny))     # ≈ −87.3


def _tail_log_probs(log_probs_at_ids: jax.Array) -> jax.Array:
  """``log(1 − Σ p_i)`` from the k log-probabilities.

  A tail below the float32 rounding error of the sum (k·eps) cannot be told from
  an empty one: it is set to log(tiny), as an empty tail is, so that tempering
  (T > 1) does not inflate rounding noise into mass, and the divergences stay finite.
  """
  covered = jnp.sum(jnp.exp(log_probs_at_ids), axis=-1)
  tail = 1.0 - covered
  noise = log_probs_at_ids.shape[-1] * jnp.finfo(jnp.float32).eps
  return jnp.where(tail > noise, jnp.log(jnp.maximum(tail, noise)), _LOG_TINY)


def bucket_log_probs(student_logits: jax.Array, teacher: TopKLogits, mode: str,
                     temperature) -> tuple[jax.Array, jax.Array]:
  """``(student, teacher)`` log-probabilities over the buckets the ``mode`` compares.

  ``renormalize``: ``[..., k]``; ``tail``: ``[..., k + 1]`` (the ids, then the tail).
  """
  if mode not in MODES:
    raise ValueError(f"topk mode must be one of {', '.join(MODES)}, got {mode!r}")
  s = student_logits.astype(jnp.float32) / temperature
  s_at_ids = jnp.take_along_axis(s, teacher.ids, axis=-1)
  if mode == "renormalize":
    return (jax.nn.log_softmax(s_at_ids, axis=-1),
            jax.nn.log_softmax(teacher.logits / temperature, axis=-1))
  # Student: exact buckets of softmax(s / T); its tail is the logsumexp of the other ids.
  s_lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
  kept = jnp.zeros(s.shape, bool)
  kept = jnp.put_along_axis(kept, teacher.ids, True, axis=-1, inplace=False)
  s_tail = jax.nn.logsumexp(jnp.where(kept, -jnp.inf, s), axis=-1, keepdims=True) - s_lse
  # An empty tail (k = V) is floored like the teacher's, so that the two match exactly.
  student = jnp.concatenate([s_at_ids - s_lse, jnp.maximum(s_tail, _LOG_TINY)], axis=-1)
  # Teacher: exact buckets at T = 1 from the stored logsumexp, then tempered as a whole.
  t_at_ids = teacher.logits - teacher.lse[..., None]
  t_tail = _tail_log_probs(t_at_ids)[..., None]
  teacher_buckets = jax.nn.log_softmax(jnp.concatenate([t_at_ids, t_tail], axis=-1) / temperature,
                                       axis=-1)
  return student, teacher_buckets


def topk_kd_loss(student_logits: jax.Array, teacher: TopKLogits, *, mode: str,
                 divergence: str = "kl", temperature=1.0, mask=None,
                 divergence_params: Mapping[str, Any] | None = None) -> jax.Array:
  """T²·D between the teacher's cached top-k and the student, mean over the unmasked positions.

  Args:
    student_logits: ``[..., V]``.
    teacher: the cached :class:`TopKLogits` of the same positions.
    mode: ``"renormalize"`` or ``"tail"`` (module docstring).
    divergence: a probability divergence of :mod:`kd_jax.divergences`.
    temperature: T > 0 (number or traced scalar).
    mask: optional bool ``[...]``.
    divergence_params: e.g. ``{"beta": 0.5}`` for ``js``.

  Returns:
    float32 scalar (the distillation term of ``kd_loss`` with ``alpha=0``).
  """
  if divergence not in divergences.PROBABILITY_DIVERGENCES:
    raise ValueError(f"top-k distillation needs a probability divergence; got {divergence!r}, "
                     f"valid: {', '.join(sorted(divergences.PROBABILITY_DIVERGENCES))}")
  student, teacher_buckets = bucket_log_probs(student_logits, teacher, mode, temperature)
  # Log-probabilities are logits of the same distributions: the divergence at T = 1.
  return jnp.square(temperature) * losses.kd_loss(
      student, teacher_buckets, None, divergence=divergence, temperature=1.0, alpha=0.0,
      mask=mask, divergence_params=divergence_params)
