"""Means and sums over masked positions: the one reduction every objective and metric uses.

A ``mask`` has the leading shape of the per-position values (``[B]`` for one value per
example, ``[B, T]`` for tokens). Masked-out entries go through ``jnp.where``, so garbage
there (padding, -inf) cannot leak into the value or the gradient, and an all-false mask
gives 0, not 0/0.
"""

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def at_least_float32(x: ArrayLike) -> Array:
  """Upcasts to at least float32 (bf16 in, float32 out; float64 stays float64)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def checked_mask(mask: ArrayLike, shape: tuple) -> Array:
  """``mask`` as booleans; raises ``ValueError`` unless its shape is a prefix of ``shape``."""
  mask = jnp.asarray(mask).astype(bool)
  if mask.shape != shape[:mask.ndim]:
    raise ValueError(f"mask shape {mask.shape} must be a leading prefix of the "
                     f"per-position shape {shape}")
  return mask


def masked_sum(values: ArrayLike, mask: ArrayLike, axis=None) -> Array:
  """Σ of ``values`` where ``mask`` (same shape, or a leading prefix) is true, over ``axis``.

  Example:
    >>> float(masked_sum(jnp.array([1.0, jnp.nan, 3.0]), jnp.array([True, False, True])))
    4.0
  """
  values = jnp.asarray(values)
  mask = checked_mask(mask, values.shape)
  expanded = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
  return jnp.sum(jnp.where(expanded, values, 0.0), axis=axis)


def masked_mean(values: ArrayLike, mask: ArrayLike | None) -> Array:
  """The mean of ``values`` over the entries where ``mask`` (a leading-shape prefix) is set.

  Each mask entry covers ``values.size / mask.size`` trailing values; ``mask=None`` is
  the plain mean.

  Example:
    >>> float(masked_mean(jnp.array([[1.0, 2.0], [9.0, 9.0]]), jnp.array([True, False])))
    1.5
    >>> float(masked_mean(jnp.ones(3), jnp.zeros(3, bool)))
    0.0
  """
  values = jnp.asarray(values)
  if mask is None:
    return jnp.mean(values)
  total = masked_sum(values, mask)
  count = jnp.sum(jnp.asarray(mask).astype(bool)) * (values.size // max(jnp.size(mask), 1))
  return total / jnp.maximum(count, 1).astype(jnp.float32)
