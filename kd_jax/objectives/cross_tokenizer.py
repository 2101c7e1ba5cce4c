r"""Distillation between a teacher and a student with different tokenizers (DESIGN §9).

A teacher's next-token distribution ``p`` lives on its own vocabulary ``V_t``; the
student's ``q`` on ``V_s``. Two losses compare them without a shared vocabulary; the
positions they compare are chosen by the caller (the task's alignment:
:mod:`kd_jax.data.token_alignment`).

* :func:`uld_loss` — Universal Logit Distillation (Boizard et al. 2024): the two
  probability vectors sorted in decreasing order, the shorter padded with zeros, compared
  by their L1 distance (the Wasserstein-1 distance between the sorted distributions on a
  common index set). It ignores which token carries which probability: only the shape
  of the distribution is taught.
* :func:`aligned_kd_loss` — at positions where both tokenizations end at the same byte:
  where the next token is the same string on both sides, KL between the two
  distributions restricted to the vocabulary they share (``vocab_map[v] = u`` when
  teacher token ``v`` and student token ``u`` are the same byte string, −1 when no
  student token is), renormalised; elsewhere ULD (the "hybrid" form of TRL's GOLD
  trainer). With the same tokenizer on both sides (the identity map, every position
  exact) the loss is :func:`kd_jax.objectives.losses.kd_loss` with ``divergence="kl"``.

Both add the student's hard-label cross-entropy: ``α·CE + (1−α)·distill``, each term
the mean over its own positions: CE over ``mask`` (every target), the distillation term
over ``mask & aligned`` (the positions that have a teacher distribution to compare).

References:
  Boizard et al., *Towards Cross-Tokenizer Distillation: the Universal Logit
  Distillation Loss for LLMs*, 2024 (arXiv:2402.12030).
  Patiño et al., *Unlocking On-Policy Distillation for Any Model Family* (TRL's GOLD
  trainer), 2025.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from kd_jax.objectives import losses
from kd_jax.objectives.masked import at_least_float32, checked_mask, masked_mean

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AlignedTeacher:
  """A teacher's outputs moved onto the student's positions (a pytree).

  Attributes:
    logits: ``[B, T_s, V_t]``: at student position ``j``, the teacher's raw logits at
      the teacher position aligned with it (garbage where ``aligned`` is false).
    aligned: bool ``[B, T_s]``: whether position ``j`` has an aligned teacher position.
    exact: bool ``[B, T_s]``: whether the next token is the same byte string on both
      sides there (:func:`aligned_kd_loss`).
    vocab_map: int32 ``[V_t]``: the student id of each teacher token of the same byte
      string, −1 where there is none.
  """
  logits: Array
  aligned: Array
  exact: Array
  vocab_map: Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SortedTeacher:
  """The teacher's side of ULD, computed once (:func:`sorted_teacher`): at each student
  position its ``k`` largest probabilities at temperature T and the mass of the rest (a
  pytree; ``teacher[index]`` gathers rows, as from a cached split).

  Attributes:
    top: float32 ``[..., k]``, decreasing.
    tail: float32 ``[...]``: ``1 − Σ top`` (clipped at 0).
    aligned: bool ``[...]``: whether the position has an aligned teacher position.
  """
  top: Array
  tail: Array
  aligned: Array

  def __getitem__(self, index) -> SortedTeacher:
    return SortedTeacher(self.top[index], self.tail[index], self.aligned[index])


def uld_width(teacher_vocab: int, student_vocab: int, top_k: int = 0) -> int:
  """How many sorted probabilities of each side ULD compares: ``top_k`` when
  ``0 < top_k < m``, else ``m = min(teacher_vocab, student_vocab)`` (exact: the longer
  side's entries past its ``m`` largest meet the shorter's zero padding, so they count as
  its tail, :func:`_sorted_l1`)."""
  m = min(teacher_vocab, student_vocab)
  return top_k if 0 < top_k < m else m


def _top_and_tail(p: Array, k: int) -> tuple[Array, Array]:
  """``p``'s ``k`` largest entries, decreasing, and the sum of the rest (exactly 0 when ``k``
  is ``p``'s length: no rounding residue, so an exact distance reports no gap)."""
  top = jax.lax.top_k(p, k)[0]
  if k == p.shape[-1]:
    return top, jnp.zeros(p.shape[:-1], p.dtype)
  return top, jnp.maximum(jnp.sum(p, axis=-1) - jnp.sum(top, axis=-1), 0.0)


def _l1_of_sorted(p_top, p_tail, q_top, q_tail, with_bound: bool):
  """``Σ_i |p_top_i − q_top_i| + |p_tail − q_tail|``, and with ``with_bound`` the gap to
  the exact distance, ``2·min(p_tail, q_tail)`` (0 when one side has no tail: exact)."""
  value = jnp.sum(jnp.abs(p_top - q_top), axis=-1) + jnp.abs(p_tail - q_tail)
  if not with_bound:
    return value
  return value, jax.lax.stop_gradient(2.0 * jnp.minimum(p_tail, q_tail))


def sorted_teacher(teacher_logits: ArrayLike, aligned: ArrayLike, *, temperature: float,
                   width: int) -> SortedTeacher:
  """The teacher's ``width`` largest probabilities at ``temperature`` and its tail mass, per
  position: ``width = min(top_k, V_t)`` for ULD truncated at ``top_k``, ``V_t`` for exact
  ULD (:func:`uld_terms_from_sorted`)."""
  p = jax.nn.softmax(at_least_float32(teacher_logits) / temperature, axis=-1)
  return SortedTeacher(*_top_and_tail(jax.lax.stop_gradient(p), width),
                       jnp.asarray(aligned, bool))


def uld_terms_from_sorted(student_logits: ArrayLike, teacher: SortedTeacher, *,
                          temperature: ArrayLike = 1.0, with_bound: bool = False):
  """:func:`uld_terms` with the teacher's side precomputed by :func:`sorted_teacher` at the
  same temperature: ULD truncated at ``k = min(width, V_s)``, which is
  ``uld_width(V_t, V_s, top_k)`` for the widths :func:`sorted_teacher` names, so the value
  (and bound) is :func:`uld_terms`'s with that ``top_k``, up to rounding."""
  q = jax.nn.softmax(at_least_float32(student_logits) / temperature, axis=-1)
  width = teacher.top.shape[-1]
  k = min(width, q.shape[-1])
  # A student shorter than the teacher's kept width: the teacher's entries past k join its
  # tail, as they would meet the student's zero padding.
  p_tail = (teacher.tail if k == width
            else teacher.tail + jnp.sum(teacher.top[..., k:], axis=-1))
  return _l1_of_sorted(teacher.top[..., :k], p_tail, *_top_and_tail(q, k), with_bound)


def _sorted_l1(p: Array, q: Array, top_k: int = 0, with_bound: bool = False):
  """Σ_i |sort↓(p)_i − sort↓(q)_i| over the last axis, the shorter vector zero-padded.

  Computed without sorting the longer vector whole: with ``m`` the shorter length, the
  longer's entries past its ``m`` largest meet the padding zeros, so they add their sum
  (the longer's total less its top ``m``), exactly. Only the top ``m`` of the longer
  (``lax.top_k``) and the shorter's sort are needed, which on XLA:CPU is 10–40× cheaper
  than sorting a 8k–150k vocabulary per position.

  ``0 < top_k < m``: the truncated form ``Σ_{i<k} |p↓_i − q↓_i| + |tail_p − tail_q|``
  (each side's mass past its top k as one bucket), a lower bound of the exact value
  within ``2·min(tail_p, tail_q)``; ``with_bound`` also returns that gap bound (0 when
  exact).
  """
  k = uld_width(p.shape[-1], q.shape[-1], top_k)
  # k = m: the shorter side has no tail, and the exact value adds the longer's whole tail.
  return _l1_of_sorted(*_top_and_tail(p, k), *_top_and_tail(q, k), with_bound)


def combine(student_logits: Array, labels, alpha, distill: Array, distill_mask: Array,
            mask: Array) -> tuple[Array, dict]:
  """``α·CE(mask) + (1−α)·mean(distill over distill_mask)`` and its two parts
  (``{"ce", "distill"}``); a term of static weight 0 is neither computed nor returned."""
  loss, parts = 0.0, {}
  if not (isinstance(alpha, (int, float)) and alpha == 0):
    parts["ce"] = losses.cross_entropy(student_logits, labels, mask)
    loss = alpha * parts["ce"]
  if not (isinstance(alpha, (int, float)) and alpha == 1):
    parts["distill"] = masked_mean(distill, distill_mask)
    loss = loss + (1.0 - alpha) * parts["distill"]
  return loss, parts


def _masks(shape, mask, aligned):
  mask = jnp.ones(shape, bool) if mask is None else checked_mask(mask, shape)
  distill_mask = mask if aligned is None else mask & checked_mask(aligned, shape)
  return mask, distill_mask


def uld_terms(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
              temperature: ArrayLike = 1.0, top_k: int = 0, with_bound: bool = False):
  """The per-position ULD distance ``Σ_i |sort↓(p)_i − sort↓(q)_i|`` ``[...]`` (no mean);
  ``top_k`` > 0: its truncated form, and with ``with_bound`` also how far below the exact
  value it may lie, ``2·min(tail_p, tail_q)`` (:func:`_sorted_l1`)."""
  p = jax.nn.softmax(at_least_float32(teacher_logits) / temperature, axis=-1)
  q = jax.nn.softmax(at_least_float32(student_logits) / temperature, axis=-1)
  return _sorted_l1(jax.lax.stop_gradient(p), q, top_k, with_bound)


def uld_loss(student_logits: ArrayLike, teacher_logits: ArrayLike,
             labels: ArrayLike | None, *, alpha: ArrayLike = 0.5,
             temperature: ArrayLike = 1.0, mask: ArrayLike | None = None,
             aligned: ArrayLike | None = None, top_k: int = 0) -> Array:
  r"""Universal Logit Distillation (Boizard et al. 2024).

  .. math::
    \ell = \alpha\,\mathrm{CE}(z_s, y) + (1-\alpha)\,
           \sum_i \bigl|\mathrm{sort}_\downarrow(p)_i - \mathrm{sort}_\downarrow(q)_i\bigr|,
    \quad p = \mathrm{softmax}(z_t / T),\ q = \mathrm{softmax}(z_s / T)

  with the shorter of ``p``, ``q`` padded with zeros to the longer's length. The
  distance is not scaled by T² (the paper's form; it is bounded by 2 at every T). The
  teacher gets no gradient.

  Args:
    student_logits: ``[..., V_s]``.
    teacher_logits: ``[..., V_t]``, the same leading shape; ``V_t`` may differ from ``V_s``.
    labels: the student's integer targets ``[...]``; may be None when ``alpha == 0``.
    alpha: the CE weight in [0, 1] (a number or a traced scalar).
    temperature: T > 0 of both softmaxes.
    mask: optional boolean ``[...]``: the positions of the CE term (and of the ULD term).
    aligned: optional boolean ``[...]``: the ULD term is averaged over ``mask & aligned``
      only (positions without a teacher position count in the CE alone).
    top_k: 0 (exact), or compare each side's ``top_k`` largest probabilities and its
      remaining mass as one bucket: a lower bound within ``2·min(tail_p, tail_q)``
      (:func:`uld_terms`), for vocabularies where the exact form's ``lax.top_k`` of the
      shorter length is too slow.

  Returns:
    float32 scalar.
  """
  student_logits = jnp.asarray(student_logits)
  shape = student_logits.shape[:-1]
  mask, distill_mask = _masks(shape, mask, aligned)
  distill = uld_terms(student_logits, teacher_logits, temperature=temperature, top_k=top_k)
  return combine(student_logits, labels, alpha, distill, distill_mask, mask)[0]


def matched_kl_terms(student_logits: ArrayLike, teacher_logits: ArrayLike,
                     vocab_map: ArrayLike, *, temperature: ArrayLike = 1.0) -> Array:
  r"""``T²·KL(p̃ ‖ q̃)`` per position ``[...]``: both distributions restricted to the shared
  vocabulary (the teacher tokens with ``vocab_map[v] ≥ 0`` and their student tokens) and
  renormalised there. With the identity map it is ``T²·KL(p ‖ q)``.

  ``vocab_map`` must be injective (no student id twice: what
  :func:`kd_jax.data.token_alignment.vocabulary_map` builds); an entry at or past the
  student's logits width counts as unmatched. The sum runs over the student's vocabulary,
  through the inverse map: the teacher's log-probabilities are gathered onto the
  student's ids, so the student's gradient needs no scatter back from a ``[..., V_t]``
  gather.
  """
  vocab_map = jnp.asarray(vocab_map)
  width = jnp.shape(student_logits)[-1]
  # inverse[u] = the teacher id of student id u's byte string, −1 where none is.
  inverse = jnp.full((width,), -1, jnp.int32).at[
      jnp.where(vocab_map >= 0, vocab_map, width)].set(
          jnp.arange(vocab_map.shape[0], dtype=jnp.int32), mode="drop")
  matched = inverse >= 0
  teacher_log_p = jax.nn.log_softmax(at_least_float32(teacher_logits) / temperature, -1)
  log_p = jnp.where(matched, jnp.take(teacher_log_p, jnp.where(matched, inverse, 0), axis=-1),
                    -jnp.inf)
  log_p = jax.lax.stop_gradient(log_p - jax.nn.logsumexp(log_p, -1, keepdims=True))
  log_q = jnp.where(matched, jax.nn.log_softmax(at_least_float32(student_logits) / temperature,
                                                -1), -jnp.inf)
  log_q = log_q - jax.nn.logsumexp(log_q, -1, keepdims=True)
  p = jnp.exp(log_p)
  # Σ p (log p − log q) over the matched tokens; an entry with p = 0 adds 0 (and no NaN).
  safe = matched & (p > 0)
  kl = jnp.sum(jnp.where(safe, p * (jnp.where(safe, log_p, 0.0) - jnp.where(safe, log_q, 0.0)),
                         0.0), -1)
  return temperature ** 2 * kl


def _only_where(needed: Array, per_position, *arrays: Array, chunk_size: int = 8):
  """``per_position(*rows)`` (rows ``[R, C, V]`` → values ``[R, C]``, or a tuple of them) at
  the positions where ``needed`` ``[..., T]`` holds, 0 elsewhere, evaluated only on the
  columns of positions some row needs.

  Within each row the positions are ordered needed-first (a sort along ``T`` alone, so a
  batch sharded over devices stays where it is). ``lax.map`` walks the ordered positions
  in columns of ``chunk_size``, all rows at once: a column is gathered from ``arrays`` and
  evaluated only when a row needs it (``lax.cond``), so ``per_position`` runs on
  ⌈max needed per row / ``chunk_size``⌉ columns and no permuted copy of ``arrays`` is
  made. The values (and gradients) equal evaluating everywhere and masking.
  """
  *lead, length = needed.shape or (1,)
  rows = math.prod(lead)
  chunks = -(-length // chunk_size)
  need = jnp.pad(needed.reshape(rows, length), ((0, 0), (0, chunks * chunk_size - length)))
  order = jnp.argsort(~need, axis=-1, stable=True)  # needed first; the padding stays last
  flat = [a.reshape(rows, length, a.shape[-1]) for a in arrays]
  column_positions = order.reshape(rows, chunks, chunk_size).swapaxes(0, 1)
  column_needs = jnp.take_along_axis(need, order, axis=1).reshape(
      rows, chunks, chunk_size).swapaxes(0, 1)
  zeros = jax.tree.map(lambda out: jnp.zeros(out.shape, out.dtype), jax.eval_shape(
      per_position, *[jax.ShapeDtypeStruct((rows, chunk_size, a.shape[-1]), a.dtype)
                      for a in arrays]))

  def column(args):
    positions, column_need = args
    # A padding position (past T) is never needed; it reads position T − 1, masked below.
    at = jnp.minimum(positions, length - 1)[..., None]
    evaluate = lambda: per_position(*[jnp.take_along_axis(a, at, axis=1) for a in flat])
    return jax.lax.cond(column_need.any(), evaluate, lambda: zeros)

  values = jax.lax.map(column, (column_positions, column_needs))
  back = jnp.argsort(order, axis=-1)                # the inverse permutation of each row
  return jax.tree.map(lambda v: jnp.where(needed, jnp.take_along_axis(
      v.swapaxes(0, 1).reshape(rows, chunks * chunk_size), back, axis=1)[:, :length]
      .reshape(needed.shape), 0), values)


def aligned_kd_terms(student_logits: ArrayLike, teacher_logits: ArrayLike,
                     vocab_map: ArrayLike, exact: ArrayLike, *,
                     temperature: ArrayLike = 1.0, top_k: int = 0, with_bound: bool = False,
                     aligned: ArrayLike | None = None):
  """The per-position distillation term of :func:`aligned_kd_loss` ``[...]`` (no mean):
  :func:`matched_kl_terms` where ``exact``, :func:`uld_terms` (with ``top_k``) elsewhere;
  with ``with_bound`` also the truncated ULD's gap bound (0 where ``exact``).

  ULD is evaluated only at the positions that are not exact and, with ``aligned``, are
  aligned (elsewhere the term is 0), by :func:`_only_where`. ``exact`` and ``aligned``
  broadcast to the logits' leading shape.
  """
  student_logits = jnp.asarray(student_logits)
  teacher_logits = jnp.asarray(teacher_logits)
  shape = student_logits.shape[:-1]
  exact = jnp.broadcast_to(jnp.asarray(exact, bool), shape)
  needs_uld = ~exact if aligned is None else ~exact & jnp.asarray(aligned, bool)
  needs_uld = jnp.broadcast_to(needs_uld, shape)
  kl = matched_kl_terms(student_logits, teacher_logits, vocab_map, temperature=temperature)
  uld = _only_where(needs_uld, lambda s, t: uld_terms(
      s, t, temperature=temperature, top_k=top_k, with_bound=with_bound),
      student_logits, teacher_logits)
  if not with_bound:
    return jnp.where(exact, kl, uld)
  return jnp.where(exact, kl, uld[0]), jnp.where(exact, 0.0, uld[1])


def aligned_kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike,
                    labels: ArrayLike | None, vocab_map: ArrayLike, *,
                    exact: ArrayLike | None = None, alpha: ArrayLike = 0.5,
                    temperature: ArrayLike = 1.0, mask: ArrayLike | None = None,
                    aligned: ArrayLike | None = None, top_k: int = 0) -> Array:
  r"""Distillation at byte-aligned positions: KL on the shared vocabulary where the next
  token is the same string on both sides, ULD elsewhere; plus the student's CE.

  .. math::
    \ell = \alpha\,\mathrm{CE}(z_s, y) + (1-\alpha)\,
      \mathrm{mean}_{j\,\in\,\mathrm{aligned}}
      \begin{cases} T^2\,\mathrm{KL}(\tilde p_j \,\|\, \tilde q_j) & \text{exact}_j \\
                     \mathrm{ULD}(p_j, q_j) & \text{otherwise} \end{cases}

  ``p̃``, ``q̃``: the teacher's and student's distributions restricted to the shared
  vocabulary (``vocab_map``) and renormalised (:func:`matched_kl_terms`). A position is
  *exact* when both tokenizations' next token is the same byte string (a 1:1 span, whose
  probability both sides give directly); a span of several tokens on either side has no
  token-level counterpart, and only the shapes of the two distributions are compared
  there (ULD). With one tokenizer (the identity map, every position exact and aligned)
  this is ``kd_loss(..., divergence="kl")``.

  Args:
    student_logits: ``[..., V_s]``.
    teacher_logits: ``[..., V_t]``.
    labels: the student's targets ``[...]``; may be None when ``alpha == 0``.
    vocab_map: int ``[V_t]``: the student id of each teacher token's byte string, or −1.
    exact: optional boolean ``[...]`` (None: every position): where the matched KL applies.
    alpha, temperature, mask, aligned, top_k: as :func:`uld_loss`.

  Returns:
    float32 scalar.
  """
  student_logits = jnp.asarray(student_logits)
  shape = student_logits.shape[:-1]
  mask, distill_mask = _masks(shape, mask, aligned)
  exact = jnp.ones(shape, bool) if exact is None else checked_mask(exact, shape)
  distill = aligned_kd_terms(student_logits, teacher_logits, vocab_map, exact,
                             temperature=temperature, top_k=top_k, aligned=distill_mask)
  return combine(student_logits, labels, alpha, distill, distill_mask, mask)[0]
