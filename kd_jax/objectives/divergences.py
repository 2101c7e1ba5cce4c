"""Divergences between student and teacher outputs.

Every divergence has the signature::

    fn(student_logits, teacher_logits, *, temperature=1.0, **params) -> jax.Array

and reduces the last axis: inputs of shape ``[..., V]`` give one float32 value per
position, shape ``[...]`` (float64 when the inputs are float64). With
``p = softmax(teacher_logits / T)`` and ``q = softmax(student_logits / T)``:

=====================  =====================================================  ==============
name                   value                                                  params
=====================  =====================================================  ==============
``kl``                 KL(p‖q) = Σ p (log p − log q)
``reverse_kl``         KL(q‖p)
``js``                 β·KL(p‖m) + (1−β)·KL(q‖m), m = β·p + (1−β)·q           ``beta=0.5``
``skew_kl``            KL(p ‖ α·p + (1−α)·q)                                  ``alpha=0.1``
``skew_reverse_kl``    KL(q ‖ α·q + (1−α)·p)                                  ``alpha=0.1``
``tvd``                ½ Σ |p − q|
``cosine``             1 − cos(student, teacher) on the raw vectors
``mse``                mean over the last axis of (student − teacher)²
=====================  =====================================================  ==============

Numerics. Probabilities are only ever handled as log-probabilities
(``jax.nn.log_softmax``); mixtures are formed with ``logaddexp`` (the two-term
logsumexp), never as ``log(softmax + eps)``. Inputs are upcast to at least
float32 before anything else, so bf16 logits are safe. Vocabulary entries that
are ``-inf`` in *both* inputs (a masked vocabulary) contribute exactly nothing:
the value equals the divergence over the remaining entries and the gradient is
finite (zero on the masked entries). Values and gradients stay finite for
logits of magnitude 1e4.

Parameters that are Python numbers are checked eagerly (``ValueError`` naming the
parameter); traced values are accepted unchecked so that schedules can drive
them under ``jax.jit``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import jax
import jax.numpy as jnp

ArrayLike = jax.typing.ArrayLike
Divergence = Callable[..., jax.Array]


def _is_python_number(value) -> bool:
  # numbers.Real covers Python and NumPy scalars; jax arrays (possibly traced)
  # are deliberately left unchecked.
  return isinstance(value, numbers.Real)


def _check_temperature(temperature) -> None:
  if _is_python_number(temperature) and not (
      0 < temperature and math.isfinite(temperature)):
    raise ValueError(
        f"temperature must be a positive finite number, got {temperature!r}.")


def _check_unit_interval(name: str, value, *, include_one: bool) -> None:
  if not _is_python_number(value):
    return
  valid = 0 <= value <= 1 if include_one else 0 <= value < 1
  if not valid:
    interval = "[0, 1]" if include_one else "[0, 1)"
    raise ValueError(f"{name} must be in {interval}, got {value!r}.")


def _upcast(student_logits: ArrayLike, teacher_logits: ArrayLike):
  """Returns both inputs in a common floating dtype of at least float32."""
  student = jnp.asarray(student_logits)
  teacher = jnp.asarray(teacher_logits)
  if student.shape != teacher.shape:
    raise ValueError(
        "student_logits and teacher_logits must have the same shape, got "
        f"{student.shape} and {teacher.shape}.")
  dtype = jnp.promote_types(jnp.result_type(student, teacher), jnp.float32)
  return student.astype(dtype), teacher.astype(dtype)


def _log_probs(student_logits, teacher_logits, temperature):
  """Returns (log q, log p) at the given temperature."""
  _check_temperature(temperature)
  student, teacher = _upcast(student_logits, teacher_logits)
  temperature = jnp.asarray(temperature, student.dtype)
  return (jax.nn.log_softmax(student / temperature, axis=-1),
          jax.nn.log_softmax(teacher / temperature, axis=-1))


def _kl_from_log_probs(log_a: jax.Array, log_b: jax.Array) -> jax.Array:
  """KL(a‖b) = Σ a (log a − log b) over the last axis, from log-probabilities.

  Terms with a = 0 (log a = −inf) are exactly 0. Both logs are replaced by 0
  there *before* the product (the double-where trick), so neither the value nor
  the gradient ever sees ``0 · (−inf − −inf)``.
  """
  support = log_a > -jnp.inf
  safe_log_a = jnp.where(support, log_a, 0.0)
  safe_log_b = jnp.where(support, log_b, 0.0)
  # Off the support both safe logs are 0, so the term below is exactly 0 there.
  return jnp.sum(jnp.exp(safe_log_a) * (safe_log_a - safe_log_b), axis=-1)


def _log_mixture(log_a: jax.Array, log_b: jax.Array, weight) -> jax.Array:
  """log(w·a + (1−w)·b), computed with logaddexp.

  A Python weight of exactly 0 or 1 returns the endpoint itself, so no log(0)
  is formed; a traced endpoint gives a −inf log-weight, which logaddexp turns
  into an exact zero contribution with zero gradient. Entries where both a and
  b are 0 get log-mixture 0 instead of −inf: callers only read the mixture
  where a > 0, and this keeps the gradient free of ``−inf − (−inf)``.
  """
  if _is_python_number(weight):
    if weight == 0:
      return log_b
    if weight == 1:
      return log_a
    log_w, log_1mw = math.log(weight), math.log1p(-weight)
  else:
    weight = jnp.asarray(weight, log_a.dtype)
    log_w, log_1mw = jnp.log(weight), jnp.log1p(-weight)
  both_zero = (log_a == -jnp.inf) & (log_b == -jnp.inf)
  log_a = jnp.where(both_zero, 0.0, log_a)
  log_b = jnp.where(both_zero, 0.0, log_b)
  return jnp.logaddexp(log_w + log_a, log_1mw + log_b)


def _shared_mask_safe(student_logits, teacher_logits):
  """Raw vectors with shared −inf entries zeroed, and the validity mask."""
  student, teacher = _upcast(student_logits, teacher_logits)
  valid = ~((student == -jnp.inf) & (teacher == -jnp.inf))
  return (jnp.where(valid, student, 0.0), jnp.where(valid, teacher, 0.0), valid)


def kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
       temperature: float | jax.Array = 1.0) -> jax.Array:
  r"""Forward KL divergence from the teacher, KL(p‖q).

  .. math::
    \mathrm{KL}(p\|q) = \sum_v p_v (\log p_v - \log q_v),\quad
    p = \mathrm{softmax}(t / T),\ q = \mathrm{softmax}(s / T).

  The classic distillation target (Hinton et al., 2015, "Distilling the
  Knowledge in a Neural Network", https://arxiv.org/abs/1503.02531). Mode
  covering: the student is pushed to put mass wherever the teacher does.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0, a number or a scalar array.

  Returns:
    ``[...]`` float32 (float64 for float64 inputs) divergences, ≥ 0.

  Example:
    >>> import math, jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> bool(jnp.isclose(kl(q, p), 0.5 * math.log(4 / 3)))
    True
  """
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  return _kl_from_log_probs(log_p, log_q)


def reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
               temperature: float | jax.Array = 1.0) -> jax.Array:
  r"""Reverse KL divergence from the teacher, KL(q‖p).

  .. math::
    \mathrm{KL}(q\|p) = \sum_v q_v (\log q_v - \log p_v).

  Mode seeking; used for on-policy and sequence-level distillation of language
  models (Gu et al., 2024, "MiniLLM", https://arxiv.org/abs/2306.08543;
  Agarwal et al., 2024, "On-Policy Distillation of Language Models" (GKD),
  https://arxiv.org/abs/2306.13649).

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0.

  Returns:
    ``[...]`` float32 divergences, ≥ 0.

  Example:
    >>> import math, jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    >>> bool(jnp.isclose(reverse_kl(q, p), expected))
    True
  """
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  return _kl_from_log_probs(log_q, log_p)


def js(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
       temperature: float | jax.Array = 1.0,
       beta: float | jax.Array = 0.5) -> jax.Array:
  r"""Generalised Jensen–Shannon divergence with mixture weight β.

  .. math::
    \mathrm{JS}_\beta(p, q) = \beta\,\mathrm{KL}(p\|m) + (1-\beta)\,\mathrm{KL}(q\|m),
    \quad m = \beta p + (1-\beta) q,

  with the endpoints defined as in GKD (Agarwal et al., 2024, "On-Policy
  Distillation of Language Models", https://arxiv.org/abs/2306.13649) and TRL:
  β = 0 gives KL(p‖q) and β = 1 gives KL(q‖p) exactly (the formula itself
  tends to 0 there). β = ½ is the symmetric JS divergence, bounded by ln 2.
  A traced β selects the endpoint values with ``jnp.where``.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0.
    beta: teacher weight in the mixture, in [0, 1].

  Returns:
    ``[...]`` float32 divergences, ≥ 0.

  Example:
    >>> import math, jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> m = (3 / 8, 5 / 8)  # (p + q) / 2
    >>> kl_pm = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    >>> kl_qm = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    >>> bool(jnp.isclose(js(q, p), 0.5 * kl_pm + 0.5 * kl_qm))
    True
  """
  _check_unit_interval("beta", beta, include_one=True)
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  static_beta = _is_python_number(beta)
  if static_beta and beta == 0:
    return _kl_from_log_probs(log_p, log_q)
  if static_beta and beta == 1:
    return _kl_from_log_probs(log_q, log_p)
  log_m = _log_mixture(log_p, log_q, beta)
  weight = jnp.asarray(beta, log_p.dtype)
  value = (weight * _kl_from_log_probs(log_p, log_m)
           + (1 - weight) * _kl_from_log_probs(log_q, log_m))
  if static_beta:
    return value
  # A traced β may sit exactly on an endpoint, where the convention (forward or
  # reverse KL) differs from the formula's limit of 0.
  return jnp.where(
      weight == 0, _kl_from_log_probs(log_p, log_q),
      jnp.where(weight == 1, _kl_from_log_probs(log_q, log_p), value))


def skew_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
            temperature: float | jax.Array = 1.0,
            alpha: float | jax.Array = 0.1) -> jax.Array:
  r"""Skew KL divergence, KL(p ‖ α·p + (1−α)·q).

  .. math::
    \mathrm{SKL}_\alpha(p, q) = \mathrm{KL}(p \,\|\, \alpha p + (1-\alpha) q).

  Mixing a little of the teacher into the student distribution bounds the
  log-ratio by −log α and stabilises the gradient (Ko et al., 2024, "DistiLLM:
  Towards Streamlined Distillation for Large Language Models",
  https://arxiv.org/abs/2402.03898). α = 0 is ``kl``.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0.
    alpha: skew, in [0, 1).

  Returns:
    ``[...]`` float32 divergences, ≥ 0.

  Example:
    >>> import math, jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> m = (0.275, 0.725)  # 0.1 p + 0.9 q
    >>> expected = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    >>> bool(jnp.isclose(skew_kl(q, p, alpha=0.1), expected))
    True
  """
  _check_unit_interval("alpha", alpha, include_one=False)
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  return _kl_from_log_probs(log_p, _log_mixture(log_p, log_q, alpha))


def skew_reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
                    temperature: float | jax.Array = 1.0,
                    alpha: float | jax.Array = 0.1) -> jax.Array:
  r"""Skew reverse KL divergence, KL(q ‖ α·q + (1−α)·p).

  .. math::
    \mathrm{SRKL}_\alpha(p, q) = \mathrm{KL}(q \,\|\, \alpha q + (1-\alpha) p).

  The reverse-KL counterpart of ``skew_kl`` (Ko et al., 2024, "DistiLLM",
  https://arxiv.org/abs/2402.03898). α = 0 is ``reverse_kl``.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0.
    alpha: skew, in [0, 1).

  Returns:
    ``[...]`` float32 divergences, ≥ 0.

  Example:
    >>> import math, jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> m = (0.475, 0.525)  # 0.1 q + 0.9 p
    >>> expected = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    >>> bool(jnp.isclose(skew_reverse_kl(q, p, alpha=0.1), expected))
    True
  """
  _check_unit_interval("alpha", alpha, include_one=False)
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  return _kl_from_log_probs(log_q, _log_mixture(log_q, log_p, alpha))


def tvd(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
        temperature: float | jax.Array = 1.0) -> jax.Array:
  r"""Total variation distance, ½ Σ |p − q|.

  .. math::
    \mathrm{TVD}(p, q) = \tfrac{1}{2} \sum_v |p_v - q_v| \in [0, 1].

  A bounded, symmetric alternative to KL studied for sequence distillation by
  Wen et al., 2023, "f-Divergence Minimization for Sequence-Level Knowledge
  Distillation", https://arxiv.org/abs/2307.15190.

  Args:
    student_logits: ``[..., V]`` student logits.
    teacher_logits: ``[..., V]`` teacher logits.
    temperature: softmax temperature T > 0.

  Returns:
    ``[...]`` float32 distances in [0, 1].

  Example:
    >>> import jax.numpy as jnp
    >>> p = jnp.log(jnp.array([0.5, 0.5])); q = jnp.log(jnp.array([0.25, 0.75]))
    >>> bool(jnp.isclose(tvd(q, p), 0.25))
    True
  """
  log_q, log_p = _log_probs(student_logits, teacher_logits, temperature)
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)


def cosine(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
           temperature: float | jax.Array = 1.0,
           epsilon: float = 1e-8) -> jax.Array:
  r"""Cosine distance of the raw vectors, 1 − cos(s, t).

  .. math::
    1 - \frac{\langle s, t \rangle}{\max(\|s\|, \epsilon)\,\max(\|t\|, \epsilon)}
    \in [0, 2].

  Used for logit and embedding matching, e.g. DistilBERT's cosine embedding
  loss (Sanh et al., 2019, https://arxiv.org/abs/1910.01108). ``temperature``
  is accepted for a uniform signature and has no effect (cosine is
  scale-invariant). Norms are clamped at ``epsilon`` so zero vectors give a
  finite value and gradient.

  Args:
    student_logits: ``[..., D]`` student vectors.
    teacher_logits: ``[..., D]`` teacher vectors.
    temperature: ignored; still checked to be > 0.
    epsilon: lower bound on each norm.

  Returns:
    ``[...]`` float32 distances in [0, 2].

  Example:
    >>> import math, jax.numpy as jnp
    >>> d = cosine(jnp.array([1.0, 0.0]), jnp.array([1.0, 1.0]))
    >>> bool(jnp.isclose(d, 1 - 1 / math.sqrt(2)))
    True
  """
  _check_temperature(temperature)
  student, teacher, _ = _shared_mask_safe(student_logits, teacher_logits)

  def safe_norm(x):
    # Clamping the squared norm (not the norm) keeps sqrt's gradient finite at 0.
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1), epsilon**2))

  dot = jnp.sum(student * teacher, axis=-1)
  return 1.0 - dot / (safe_norm(student) * safe_norm(teacher))


def mse(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
        temperature: float | jax.Array = 1.0) -> jax.Array:
  r"""Mean squared error of the raw vectors, mean over the last axis.

  .. math::
    \mathrm{MSE}(s, t) = \frac{1}{V} \sum_v (s_v - t_v)^2.

  Logit matching (Ba & Caruana, 2014, "Do Deep Nets Really Need to be Deep?",
  https://arxiv.org/abs/1312.6184); for zero-mean logits, T²·KL has the same
  gradient in the high-temperature limit (Hinton et al., 2015). ``temperature``
  has no effect. Entries that are −inf in
  both inputs are left out of the mean (V counts the remaining entries).

  Args:
    student_logits: ``[..., V]`` student values.
    teacher_logits: ``[..., V]`` teacher values.
    temperature: ignored; still checked to be > 0.

  Returns:
    ``[...]`` float32 mean squared differences.

  Example:
    >>> import jax.numpy as jnp
    >>> d = mse(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 0.0, 0.0]))
    >>> bool(jnp.isclose(d, 13 / 3))
    True
  """
  _check_temperature(temperature)
  student, teacher, valid = _shared_mask_safe(student_logits, teacher_logits)
  count = jnp.maximum(jnp.sum(valid, axis=-1), 1).astype(student.dtype)
  return jnp.sum(jnp.square(student - teacher), axis=-1) / count


_REGISTRY: dict[str, Divergence] = {
    "kl": kl,
    "reverse_kl": reverse_kl,
    "js": js,
    "skew_kl": skew_kl,
    "skew_reverse_kl": skew_reverse_kl,
    "tvd": tvd,
    "cosine": cosine,
    "mse": mse,
}

NAMES: tuple[str, ...] = tuple(_REGISTRY)

# Divergences between softmax distributions; the KD loss scales these by T².
PROBABILITY_DIVERGENCES: frozenset[str] = frozenset(
    {"kl", "reverse_kl", "js", "skew_kl", "skew_reverse_kl", "tvd"})


def get(name: str) -> Divergence:
  """Returns the divergence registered under ``name``.

  Raises:
    ValueError: if ``name`` is unknown; the message lists the valid names.

  Example:
    >>> get("js") is js
    True
  """
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(
        f"Unknown divergence {name!r}; valid names: {', '.join(NAMES)}."
    ) from None
