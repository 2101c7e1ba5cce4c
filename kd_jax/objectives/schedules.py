"""Schedules for the distillation temperature and loss weights.

A schedule spec, as written in an experiment config, is either a plain number (a
constant) or a mapping / ``ml_collections.ConfigDict``::

    {"schedule": "constant" | "linear" | "cosine" | "exponential",
     "init": v0,              # value at step 0 (after the warm-up, if any)
     "end": v1,               # value reached at `steps`; default: init
     "steps": n,              # transition steps; required unless constant
     "warmup_steps": k,       # optional, default 0
     "warmup_init": w0}       # optional, default 0.0: value at step 0 of the warm-up

With a warm-up the value ramps linearly from ``warmup_init`` to ``init`` over the
first ``k`` steps and then follows the schedule, so ``end`` is reached at step
``k + n`` and held afterwards. A ``constant`` schedule uses ``init`` and ignores
``end`` and ``steps`` (so a sweep over ``init`` works whatever the base config
sets them to).

With t = min(step, n) (step counted after the warm-up):

| schedule | value |
|---|---|
| ``constant`` | v0 |
| ``linear`` | v0 + (v1 − v0)·t/n |
| ``cosine`` | v1 + (v0 − v1)·½(1 + cos(π t/n)) (increasing schedules and v0 = 0 allowed) |
| ``exponential`` | v0·(v1/v0)^(t/n); needs v0, v1 > 0 |

Every schedule moves monotonically between its endpoints, so range checks on
``init``, ``end`` and ``warmup_init`` cover every value it can take. The functions
are thin wrappers over optax's schedules, return float32 and are jittable with a
traced integer step.

Example::

    >>> from kd_jax.objectives import schedules
    >>> temperature = schedules.make(
    ...     {"schedule": "linear", "init": 1.0, "end": 4.0, "steps": 100},
    ...     field="temperature", positive=True)
    >>> float(temperature(50))
    2.5
"""

from collections.abc import Callable, Mapping
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "cosine", "exponential", "linear")
_KEYS = ("end", "init", "schedule", "steps", "warmup_init", "warmup_steps")

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def _as_dict(spec: Any, field: str) -> dict[str, Any]:
  """Normalises a spec to a dict; a bare number becomes a constant schedule."""
  if isinstance(spec, ml_collections.ConfigDict):
    spec = spec.to_dict()
  if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
    return {"schedule": "constant", "init": spec}
  if not isinstance(spec, Mapping):
    raise ValueError(
        f"{field} must be a number or a mapping with keys "
        f"{', '.join(_KEYS)}; got {spec!r}")
  # None means "not set" so that configs can list optional keys explicitly.
  return {k: v for k, v in spec.items() if v is not None}


def _check_number(value: Any, name: str) -> float:
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(value)):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  return value


def _check_count(value: Any, name: str, *, minimum: int) -> int:
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < minimum):
    kind = "a positive integer" if minimum > 0 else "a non-negative integer"
    raise ValueError(f"{name} must be {kind}, got {value!r}")
  return int(value)


def _check_range(value: float, name: str, *, positive: bool,
                 unit_interval: bool, hint: str = "") -> None:
  if positive and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}{hint}")
  if unit_interval and not 0 <= value <= 1:
    raise ValueError(f"{name} must be in [0, 1], got {value}{hint}")


def validate(spec: Any, *, field: str, positive: bool = False,
             unit_interval: bool = False) -> None:
  """Checks a schedule spec without building or compiling anything.

  Args:
    spec: a number or a mapping / ConfigDict (see the module docstring).
    field: the config field name used in error messages, e.g. ``"temperature"``.
    positive: every value must be > 0 (temperatures).
    unit_interval: every value must lie in [0, 1] (loss weights such as α).

  Raises:
    ValueError: naming the offending key as ``field.key`` (and the valid choices
      for unknown schedule names or keys).
  """
  _normalise(spec, field=field, positive=positive, unit_interval=unit_interval)


def _normalise(spec: Any, *, field: str, positive: bool,
               unit_interval: bool) -> dict[str, Any]:
  """Validates `spec` and returns it with every default filled in.

  A bare number is named by `field` itself in errors (``alpha must be in [0, 1]``),
  since that is what the user wrote, not ``alpha.init``.
  """
  bare = isinstance(spec, numbers.Real) and not isinstance(spec, bool)
  spec = _as_dict(spec, field)
  unknown = sorted(set(spec) - set(_KEYS))
  if unknown:
    raise ValueError(
        f"{field}: unknown key(s) {', '.join(map(repr, unknown))}; "
        f"valid: {', '.join(_KEYS)}")
  if "schedule" not in spec:
    raise ValueError(
        f"{field}.schedule is required; valid: {', '.join(SCHEDULES)}")
  kind = spec["schedule"]
  if kind not in SCHEDULES:
    raise ValueError(f"{field}.schedule: unknown schedule {kind!r}; "
                     f"valid: {', '.join(SCHEDULES)}")
  if "init" not in spec:
    raise ValueError(f"{field}.init is required")

  checks = dict(positive=positive, unit_interval=unit_interval)
  init_name = field if bare else f"{field}.init"
  init = _check_number(spec["init"], init_name)
  _check_range(init, init_name, **checks)
  end = _check_number(spec.get("end", init), f"{field}.end")
  _check_range(end, f"{field}.end", **checks)

  if "steps" in spec:
    steps = _check_count(spec["steps"], f"{field}.steps", minimum=1)
  elif kind != "constant":
    raise ValueError(
        f"{field}.steps is required for a {kind!r} schedule (a positive integer)")
  else:
    steps = None

  if kind == "exponential":
    for key, value in (("init", init), ("end", end)):
      if not value > 0:
        raise ValueError(f"{field}.{key} must be > 0 for an exponential "
                         f"schedule, got {value}")

  warmup_steps = _check_count(spec.get("warmup_steps", 0),
                              f"{field}.warmup_steps", minimum=0)
  warmup_init = _check_number(spec.get("warmup_init", 0.0),
                              f"{field}.warmup_init")
  if warmup_steps > 0 or "warmup_init" in spec:
    hint = ("" if "warmup_init" in spec else
            " (the default; set warmup_init explicitly)")
    _check_range(warmup_init, f"{field}.warmup_init", hint=hint, **checks)
  return dict(schedule=kind, init=init, end=end, steps=steps,
              warmup_steps=warmup_steps, warmup_init=warmup_init)


def make(spec: Any, *, field: str = "temperature", positive: bool = False,
         unit_interval: bool = False, constant_as_number: bool = False) -> Schedule:
  """Builds a jittable ``step -> float32 value`` function from a spec.

  Args:
    spec: a number (constant) or a mapping / ConfigDict, see the module docstring.
    field: config field name for error messages.
    positive: require every value to be > 0 (temperatures).
    unit_interval: require every value to lie in [0, 1] (loss weights).
    constant_as_number: a constant schedule without warm-up returns its value as
      a Python float, so that callers can branch on it at trace time (``kd_loss``
      skips a term whose static weight is 0).

  Returns:
    A function of an integer step (Python int or traced int scalar) returning a
    float32 scalar (a Python float for a constant with ``constant_as_number``).

  Raises:
    ValueError: if `spec` is invalid; see :func:`validate`.

  Example::

    >>> alpha = make({"schedule": "cosine", "init": 0.9, "end": 0.1,
    ...               "steps": 10}, field="alpha", unit_interval=True)
    >>> round(float(alpha(5)), 6)
    0.5
  """
  s = _normalise(spec, field=field, positive=positive,
                 unit_interval=unit_interval)
  init, end, steps = s["init"], s["end"], s["steps"]
  if constant_as_number and s["schedule"] == "constant" and not s["warmup_steps"]:
    return lambda step: float(init)
  if s["schedule"] == "constant":
    main = optax.constant_schedule(init)
  elif s["schedule"] == "linear":
    main = optax.linear_schedule(init, end, steps)
  elif s["schedule"] == "cosine":
    # optax's cosine decay scales init by alpha = end / init, which cannot express
    # init = 0 or an increasing schedule; use its unit 1 -> 0 curve as the weight.
    weight = optax.cosine_decay_schedule(1.0, steps, alpha=0.0)
    main = lambda step: end + (init - end) * weight(step)
  else:  # exponential; end_value clamps the value once `steps` have passed.
    main = optax.exponential_decay(init, steps, decay_rate=end / init,
                                   end_value=end)

  if s["warmup_steps"] > 0:
    warmup = optax.linear_schedule(s["warmup_init"], init, s["warmup_steps"])
    main = optax.join_schedules([warmup, main], [s["warmup_steps"]])

  def schedule(step: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(main(step), jnp.float32)

  return schedule
