r"""Self-attention distillation for transformers: MiniLM's attention and value relations.

MiniLM (Wang et al. 2020) distils the teacher's last self-attention layer: its
attention distributions ``softmax(Q Kᵀ / √d)`` and its value relations
``softmax(V Vᵀ / √d)``, each compared row by row with KL(teacher ‖ student).
Both are *relations* between the tokens of a sequence, ``[T, T]`` whatever the
model's width, so a narrower student can learn them. To allow a different number
of heads, the vectors are split into ``num_relation_heads`` heads of their own
(MiniLMv2, Wang et al. 2021): the teacher's and the student's ``[T, D]`` queries,
keys or values are each cut into R slices of ``D / R``, and relation head r is
``softmax(A_r B_rᵀ / √(D / R))``. With R equal to both models' head count,
:func:`relation_loss` of (Q, K) is MiniLM's attention-distribution loss.

    ℓ = 1/(R·|queries|) Σ_r Σ_{i valid} KL( rel_t[r, i, :] ‖ rel_s[r, i, :] )

Padding is excluded on both sides: padded keys get no probability, padded query
rows do not count.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kd_jax.objectives.masked import masked_mean


def relations(a: jax.Array, b: jax.Array, num_heads: int, mask: jax.Array | None = None):
  """Log-relations ``log softmax(a_r b_rᵀ / √d_r)``: ``[B, R, T, T]`` float32.

  Args:
    a, b: ``[B, T, D]`` (e.g. queries and keys), D divisible by ``num_heads``.
    num_heads: R, the relation heads.
    mask: optional bool ``[B, T]``: the real tokens (keys elsewhere get no mass).

  Raises:
    ValueError: D not divisible by ``num_heads``.
  """
  batch, length, width = a.shape
  if width % num_heads:
    raise ValueError(f"relation heads: width {width} is not divisible by {num_heads} heads")
  split = lambda x: x.astype(jnp.float32).reshape(batch, length, num_heads,
                                                  width // num_heads).transpose(0, 2, 1, 3)
  scores = jnp.einsum("brid,brjd->brij", split(a), split(b)) / jnp.sqrt(width / num_heads)
  if mask is not None:
    # A finite floor, not -inf: masked keys get exactly 0 probability, and an all-padding
    # row (a padded example of a ragged batch) stays finite instead of NaN.
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  return jax.nn.log_softmax(scores, axis=-1)


def relation_loss(student_a, student_b, teacher_a, teacher_b, *, num_heads: int,
                  mask: jax.Array | None = None) -> jax.Array:
  """KL(teacher relations ‖ student relations), mean over relation heads and valid queries.

  Args:
    student_a, student_b: the student's ``[B, T, D_s]`` (e.g. its last layer's
      queries and keys for the attention distribution, values twice for the
      value relation).
    teacher_a, teacher_b: the teacher's ``[B, T, D_t]``; D_t may differ from D_s.
    num_heads: relation heads R (divides D_s and D_t).
    mask: optional bool ``[B, T]``.

  Returns:
    float32 scalar. The teacher is not differentiated.
  """
  log_s = relations(student_a, student_b, num_heads, mask)
  log_t = jax.lax.stop_gradient(relations(teacher_a, teacher_b, num_heads, mask))
  p = jnp.exp(log_t)
  kl = jnp.sum(p * (log_t - log_s), axis=-1)      # [B, R, T]; masked keys: p = 0 exactly
  if mask is None:
    return jnp.mean(kl)
  return masked_mean(kl, jnp.broadcast_to(mask[:, None, :], kl.shape))


def self_attention_loss(student_qkv, teacher_qkv, *, num_heads: int,
                        mask: jax.Array | None = None) -> jax.Array:
  """MiniLM's loss on one layer: attention relations (Q, K) plus value relations (V, V).

  Args:
    student_qkv, teacher_qkv: ``[B, T, 3·D]``, a layer's queries, keys and values
      concatenated on the last axis (``qkv_<i>`` of :class:`kd_jax.models.bert.SentenceBert`);
      the two widths D may differ.
    num_heads: relation heads R (divides both widths).
    mask: optional bool ``[B, T]``: the real tokens.

  Returns:
    float32 scalar: ``relation_loss(Q, K) + relation_loss(V, V)``.
  """
  s_q, s_k, s_v = jnp.split(student_qkv, 3, axis=-1)
  t_q, t_k, t_v = jnp.split(teacher_qkv, 3, axis=-1)
  return (relation_loss(s_q, s_k, t_q, t_k, num_heads=num_heads, mask=mask)
          + relation_loss(s_v, s_v, t_v, t_v, num_heads=num_heads, mask=mask))
