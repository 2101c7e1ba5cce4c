"""Logit distillation built on :mod:`kd_jax.objectives.divergences`: CE, Hinton KD, DKD.

The feature and relational losses are in :mod:`kd_jax.objectives.features`, the
large-vocabulary form in :mod:`kd_jax.objectives.fused_linear`; ``kd_jax.losses``
gathers all of them under one name.

Every loss returns a float32 scalar: the mean over the positions where the optional
boolean ``mask`` is true. ``mask`` has the leading shape of the per-position values:
``[B]`` for classification logits ``[B, C]`` or feature batches, ``[B, T]`` for
sequence logits ``[B, T, V]``. A fully masked batch gives 0 with finite (zero)
gradients, so a padded last batch needs no special case. For the batch-relational
losses (RKD, SP, PKT) the mask selects the rows that take part in the relations.

Inputs may be bfloat16; computation is in float32 (float64 stays float64). The
losses do not stop gradients: the train step differentiates only the student.
"""

import numbers
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from kd_jax.objectives import divergences
from kd_jax.objectives.masked import at_least_float32 as _f32
from kd_jax.objectives.masked import checked_mask as _checked_mask
from kd_jax.objectives.masked import masked_mean as _masked_mean

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _valid_labels(labels: ArrayLike, mask: ArrayLike | None) -> Array:
  """Integer labels with the masked-out entries set to 0.

  Padding labels (e.g. -100) would index outside the classes: the gathered
  log-probability is NaN, and ``jnp.where`` hides that in the value but not
  in every backward pass. A valid class id there keeps everything finite.
  """
  labels = jnp.asarray(labels)
  if mask is None:
    return labels
  mask = _checked_mask(mask, labels.shape)
  mask = mask.reshape(mask.shape + (1,) * (labels.ndim - mask.ndim))
  return jnp.where(mask, labels, 0)


class MixedLabels(NamedTuple):
  """The labels of a batch whose inputs were mixed (mixup, cutmix): example i is
  ``weight[i]`` of an image of class ``first[i]`` and ``1 − weight[i]`` of one of class
  ``second[i]``. Its cross-entropy is that of the mixed one-hot target,
  ``w·CE(z, first) + (1 − w)·CE(z, second)`` (CE is linear in the target)."""
  first: ArrayLike
  second: ArrayLike
  weight: ArrayLike

  def dominant(self):
    """The class with the larger share of each example (what accuracy compares with)."""
    return jnp.where(jnp.asarray(self.weight) >= 0.5, self.first, self.second)


def cross_entropy(logits: ArrayLike, labels: ArrayLike | MixedLabels,
                  mask: ArrayLike | None = None) -> Array:
  """Mean softmax cross-entropy with integer ``labels`` over the positions where ``mask`` is true.

  Args:
    logits: ``[..., C]``, any float dtype (computed in float32).
    labels: integer class ids ``[...]``; values under the mask may be anything
      (e.g. -100 padding) without producing a NaN. Or :class:`MixedLabels`.
    mask: optional boolean ``[...]`` (or a leading prefix of it).

  Returns:
    float32 scalar.

  Example:
    >>> round(float(cross_entropy(jnp.zeros((2, 4)), jnp.array([1, -100]),
    ...                           mask=jnp.array([True, False]))), 4)  # log 4
    1.3863
  """
  if isinstance(labels, MixedLabels):
    per_example = lambda y: optax.softmax_cross_entropy_with_integer_labels(
        _f32(logits), _valid_labels(y, mask))
    w = _f32(labels.weight)
    return _masked_mean(w * per_example(labels.first) + (1 - w) * per_example(labels.second),
                        mask)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      _f32(logits), _valid_labels(labels, mask))
  return _masked_mean(ce, mask)


def _require(value: Any, name: str, ok, bound: str) -> None:
  """Checks Python numbers with `ok`; traced values (from schedules) pass through."""
  if isinstance(value, numbers.Real) and not ok(value):
    raise ValueError(f"{name} must be {bound}, got {value}")


def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike,
            labels: ArrayLike | None, *, divergence: str = "kl",
            temperature: ArrayLike = 1.0, alpha: ArrayLike = 0.5,
            mask: ArrayLike | None = None,
            divergence_params: Mapping[str, Any] | None = None, **div_params: Any) -> Array:
  r"""Hinton et al. logit distillation: hard-label CE plus a softened divergence.

  .. math::
    \ell = \alpha\,\mathrm{CE}(z_s, y) + (1-\alpha)\,s(T)\,D(z_s, z_t; T),
    \qquad s(T) = T^2 \text{ for probability divergences, else } 1

  CE is the softmax cross-entropy of the student logits at T = 1. The T² factor
  keeps the soft-target gradients at the same scale as T changes (Hinton's
  ∂(T²·KL)/∂z_s = T·(q − p)); it applies to ``kl, reverse_kl, js, skew_kl,
  skew_reverse_kl, tvd`` and not to ``cosine`` / ``mse``, which ignore T.

  Args:
    student_logits: ``[..., C]``.
    teacher_logits: ``[..., C]``, same shape.
    labels: integer class ids ``[...]``; may be ``None`` when ``alpha == 0``
      (a Python number), i.e. pure distillation on unlabelled data.
    divergence: a name from :data:`kd_jax.divergences.NAMES`.
    temperature: T > 0; a Python number or a traced scalar from a schedule.
    alpha: weight of the cross-entropy, in [0, 1]; number or traced scalar.
      α = 1 is plain cross-entropy, α = 0 pure distillation.
    mask: optional boolean ``[...]`` (or a leading prefix of it).
    divergence_params: divergence parameters as a mapping. Needed for the skew
      divergences' ``alpha``, whose name is taken by the CE weight here:
      ``kd_loss(..., alpha=0.5, divergence="skew_kl", divergence_params={"alpha": 0.1})``.
    **div_params: divergence parameters by keyword, e.g. ``beta=0.5`` for ``js``.

  Returns:
    float32 scalar, the mean over the unmasked positions.

  References:
    Hinton, Vinyals & Dean, *Distilling the Knowledge in a Neural Network*, 2015.

  Example:
    >>> s = jnp.array([[2.0, 0.0, -1.0]]); t = jnp.array([[3.0, 1.0, -2.0]])
    >>> round(float(kd_loss(s, t, jnp.array([0]), temperature=4.0, alpha=0.5)), 4)
    0.2288
  """
  _require(temperature, "temperature", lambda v: v > 0, "> 0")
  _require(alpha, "alpha", lambda v: 0 <= v <= 1, "in [0, 1]")
  per_position = kd_per_position(student_logits, teacher_logits, labels, divergence=divergence,
                                 temperature=temperature, alpha=alpha, mask=mask,
                                 divergence_params={**(divergence_params or {}), **div_params})
  return _masked_mean(per_position, mask)


def kd_per_position(student_logits: ArrayLike, teacher_logits: ArrayLike,
                    labels: ArrayLike | None, *, divergence: str, temperature: ArrayLike,
                    alpha: ArrayLike, mask: ArrayLike | None = None,
                    divergence_params: Mapping[str, Any] | None = None) -> Array:
  """:func:`kd_loss` before the mean: α·CE + (1−α)·s(T)·D at every position, ``[...]``.

  Arguments as in :func:`kd_loss` (unchecked); ``mask`` only keeps masked labels valid.
  """
  div_params = dict(divergence_params or {})
  div_fn = divergences.get(divergence)
  static_alpha = alpha if isinstance(alpha, numbers.Real) else None
  if labels is None and static_alpha != 0:
    raise ValueError("labels may be None only when alpha == 0 (pure distillation)")

  per_position = 0.0
  # Static α of exactly 0 or 1 skips the unused term (and its compute) entirely.
  if static_alpha != 0:
    ce = optax.softmax_cross_entropy_with_integer_labels(
        _f32(student_logits), _valid_labels(labels, mask))
    per_position = alpha * ce
  if static_alpha != 1:
    d = div_fn(student_logits, teacher_logits, temperature=temperature,
               **div_params)
    if divergence in divergences.PROBABILITY_DIVERGENCES:
      d = jnp.square(temperature) * d
    per_position = per_position + (1.0 - alpha) * d
  return jnp.asarray(per_position)


def dkd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike,
             labels: ArrayLike, *, alpha: ArrayLike = 1.0, beta: ArrayLike = 8.0,
             temperature: ArrayLike = 4.0, mask: ArrayLike | None = None) -> Array:
  r"""Decoupled knowledge distillation (DKD).

  With p = softmax(z_t / T), q = softmax(z_s / T) and target class y:

  .. math::
    \mathrm{TCKD} &= \mathrm{KL}\big([p_y, 1-p_y]\,\|\,[q_y, 1-q_y]\big) \\
    \mathrm{NCKD} &= \mathrm{KL}(\hat p\,\|\,\hat q), \quad
        \hat p_i = p_i / (1 - p_y),\ i \ne y \\
    \ell &= T^2(\alpha\,\mathrm{TCKD} + \beta\,\mathrm{NCKD})

  so that KL(p‖q) = TCKD + (1 − p_y)·NCKD (the paper's decomposition). Every
  quantity is computed in log space (log 1−p_y = logsumexp of the non-target
  logits − logsumexp of all), so it stays finite for confident teachers.

  Args:
    student_logits: ``[..., C]`` with C ≥ 2.
    teacher_logits: ``[..., C]``.
    labels: integer target classes ``[...]``.
    alpha: TCKD weight (≥ 0). beta: NCKD weight (≥ 0). temperature: T > 0;
      each a Python number or a traced scalar.
    mask: optional boolean ``[...]`` (or a leading prefix).

  Returns:
    float32 scalar, the mean over the unmasked positions.

  References:
    Zhao, Cui, Song, Qiu & Liang, *Decoupled Knowledge Distillation*, CVPR 2022.

  Example:
    >>> s = jnp.array([[2.0, 0.0, -1.0]]); t = jnp.array([[3.0, 1.0, -2.0]])
    >>> round(float(dkd_loss(s, t, jnp.array([0]), alpha=1.0, beta=8.0, temperature=4.0)), 4)
    3.7396
  """
  _require(temperature, "temperature", lambda v: v > 0, "> 0")
  _require(alpha, "alpha", lambda v: v >= 0, ">= 0")
  _require(beta, "beta", lambda v: v >= 0, ">= 0")
  kl = divergences.get("kl")
  zs = _f32(student_logits) / temperature
  zt = _f32(teacher_logits) / temperature
  is_target = jax.nn.one_hot(_valid_labels(labels, mask), zs.shape[-1], dtype=bool)

  def binary_log_probs(z):
    # [log p_y, log(1 − p_y)]: a normalised log-distribution, so it serves as logits.
    lse = jax.nn.logsumexp(z, axis=-1)
    log_target = jnp.sum(jnp.where(is_target, z, 0.0), axis=-1) - lse
    log_rest = jax.nn.logsumexp(jnp.where(is_target, -jnp.inf, z), axis=-1) - lse
    return jnp.stack([log_target, log_rest], axis=-1)

  tckd = kl(binary_log_probs(zs), binary_log_probs(zt))
  # Masking the target with -inf on both sides leaves the renormalised non-target
  # distributions; the divergences are exact and finite for shared -inf entries.
  nckd = kl(jnp.where(is_target, -jnp.inf, zs), jnp.where(is_target, -jnp.inf, zt))
  per_position = jnp.square(temperature) * (alpha * tckd + beta * nckd)
  return _masked_mean(per_position, mask)
