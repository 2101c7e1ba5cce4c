r"""Token-level KD through the output heads without ever holding ``[tokens, vocab]`` logits.

:func:`fused_linear_kd_loss` (``kd_jax.losses.fused_linear_kd_loss``, DESIGN §5.4)
equals

    kd_loss(student_hidden @ student_head, teacher_hidden @ teacher_head, labels, ...)

in value and in its gradients with respect to ``student_hidden`` and
``student_head``, but it walks the N rows in chunks of ``chunk_size``: each chunk's
logits ``[chunk_size, V]`` are made, scored and differentiated, and only the
gradients leave the chunk (``[chunk_size, H_s]`` rows of ∂/∂hidden, and a running
``[H_s, V]`` sum for ∂/∂head). The gradients are computed in the forward pass (a
``jax.custom_vjp`` whose backward pass only scales them by the incoming cotangent),
so the logits are made once, not again in a rematerialised backward pass — the
difference between this and a plain ``lax.scan`` with ``jax.checkpoint``, which
makes every chunk's logits twice.

The teacher gets no gradient (it is frozen), and neither do ``temperature`` and
``alpha`` (schedules are not differentiated). The loss is the mean over every
unmasked row of all N (DESIGN §5.3), whatever the chunking.

References: the same idea as Liger-Kernel's fused linear cross-entropy and its
fused-linear distillation losses (Hsu et al. 2024), written with ``lax.scan``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from kd_jax.objectives import divergences
from kd_jax.objectives import losses

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def fused_linear_kd_loss(student_hidden: ArrayLike, student_head: ArrayLike,
                         teacher_hidden: ArrayLike, teacher_head: ArrayLike,
                         labels: ArrayLike | None, *, divergence: str = "kl",
                         temperature: ArrayLike = 1.0, alpha: ArrayLike = 0.5,
                         mask: ArrayLike | None = None, chunk_size: int = 1024,
                         divergence_params: Mapping[str, Any] | None = None,
                         **div_params: Any) -> Array:
  r""":func:`kd_jax.losses.kd_loss` of the heads' logits, at most ``[chunk_size, V]`` at a time.

  .. math::
    \ell = \frac{1}{|M|}\sum_{i \in M} \alpha\,\mathrm{CE}(h_i W_s, y_i)
      + (1-\alpha)\,T^2\,D(h_i W_s, g_i W_t; T)

  Args:
    student_hidden: ``[N, H_s]``, the student's last hidden states (after its final norm).
    student_head: ``[H_s, V]``, the student's output projection.
    teacher_hidden: ``[N, H_t]``.
    teacher_head: ``[H_t, V]``.
    labels: int ``[N]``; may be ``None`` when ``alpha == 0``.
    divergence: a probability divergence of :data:`kd_jax.divergences.PROBABILITY_DIVERGENCES`.
    temperature, alpha, divergence_params, div_params: as in ``kd_loss``.
    mask: optional bool ``[N]``.
    chunk_size: rows per chunk; N need not be a multiple (the last chunk is padded
      with masked rows).

  Returns:
    float32 scalar: the mean over the unmasked rows.

  Raises:
    ValueError: a divergence that is not a probability divergence, mismatched
      shapes, or ``chunk_size`` < 1.
  """
  if divergence not in divergences.PROBABILITY_DIVERGENCES:
    raise ValueError(f"fused_linear_kd_loss: divergence {divergence!r} is not a probability "
                     f"divergence; valid: {', '.join(sorted(divergences.PROBABILITY_DIVERGENCES))}")
  if chunk_size < 1:
    raise ValueError(f"fused_linear_kd_loss: chunk_size must be >= 1, got {chunk_size}")
  student_hidden, student_head = jnp.asarray(student_hidden), jnp.asarray(student_head)
  teacher_hidden, teacher_head = jnp.asarray(teacher_hidden), jnp.asarray(teacher_head)
  n = student_hidden.shape[0]
  if (student_hidden.ndim != 2 or teacher_hidden.shape[0] != n
      or student_head.shape[0] != student_hidden.shape[1]
      or teacher_head.shape[0] != teacher_hidden.shape[1]
      or student_head.shape[1] != teacher_head.shape[1]):
    raise ValueError(
        "fused_linear_kd_loss: expected student_hidden [N, H_s], student_head [H_s, V], "
        f"teacher_hidden [N, H_t], teacher_head [H_t, V]; got {student_hidden.shape}, "
        f"{student_head.shape}, {teacher_hidden.shape}, {teacher_head.shape}")
  if labels is None:
    if not (isinstance(alpha, (int, float)) and alpha == 0):
      raise ValueError("labels may be None only when alpha == 0 (pure distillation)")
    labels = jnp.zeros((n,), jnp.int32)
  mask = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask).astype(bool)
  settings = (divergence, tuple(sorted({**(divergence_params or {}), **div_params}.items())),
              alpha if isinstance(alpha, (int, float)) else None, int(min(chunk_size, n) or 1))
  return _fused(settings, student_hidden, student_head, teacher_hidden, teacher_head,
                jnp.asarray(labels, jnp.int32), mask, jnp.asarray(temperature, jnp.float32),
                jnp.asarray(alpha, jnp.float32))


def _chunked(x: Array, chunk: int) -> Array:
  """``[N, ...]`` → ``[ceil(N / chunk), chunk, ...]``, zero-padded."""
  pad = -x.shape[0] % chunk
  x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
  return x.reshape(-1, chunk, *x.shape[1:])


def _loss_and_grads(settings, h_s, w_s, h_t, w_t, labels, mask, temperature, alpha):
  """The loss and its gradients w.r.t. ``h_s`` and ``w_s``, one chunk at a time."""
  divergence, params, static_alpha, chunk = settings
  count = jnp.maximum(jnp.sum(mask), 1).astype(jnp.float32)
  # A static α of 0 or 1 lets kd_per_position skip the unused term, as kd_loss does.
  weight = alpha if static_alpha is None else static_alpha

  def chunk_sum(h, w, g, y, m):
    per_row = losses.kd_per_position(h @ w, g @ jax.lax.stop_gradient(w_t), y,
                                     divergence=divergence, temperature=temperature,
                                     alpha=weight, mask=m, divergence_params=dict(params))
    return jnp.sum(jnp.where(m, per_row, 0.0)) / count

  def body(grad_w, xs):
    h, g, y, m = xs
    value, pullback = jax.vjp(lambda h, w: chunk_sum(h, w, g, y, m), h, w_s)
    grad_h, grad_w_chunk = pullback(jnp.ones_like(value))
    return grad_w + grad_w_chunk.astype(jnp.float32), (value, grad_h)

  xs = (_chunked(h_s, chunk), _chunked(h_t, chunk), _chunked(labels, chunk),
        _chunked(mask, chunk))
  grad_w, (values, grad_h) = jax.lax.scan(body, jnp.zeros(w_s.shape, jnp.float32), xs)
  grad_h = grad_h.reshape(-1, h_s.shape[1])[:h_s.shape[0]]
  return jnp.sum(values), (grad_h, grad_w.astype(w_s.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(settings, h_s, w_s, h_t, w_t, labels, mask, temperature, alpha):
  return _loss_and_grads(settings, h_s, w_s, h_t, w_t, labels, mask, temperature, alpha)[0]


def _fused_fwd(settings, h_s, w_s, h_t, w_t, labels, mask, temperature, alpha):
  loss, grads = _loss_and_grads(settings, h_s, w_s, h_t, w_t, labels, mask, temperature, alpha)
  return loss, grads


def _fused_bwd(settings, grads, cotangent):
  del settings
  grad_h, grad_w = grads
  # None: zero cotangents for the frozen teacher, the schedules' values and the integer
  # inputs (JAX fills them in; nothing of the teacher's shape is kept for the backward pass).
  return ((cotangent * grad_h).astype(grad_h.dtype), (cotangent * grad_w).astype(grad_w.dtype),
          None, None, None, None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
