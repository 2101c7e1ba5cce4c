"""Checks of config values that every plug-in uses: each raises ``ConfigError`` naming the
dotted field and what it accepts (pure Python: nothing is traced or compiled).

>>> choice("optimizer", "adam", ("sgd", "adam"))
>>> positive("train.epochs", 0)
Traceback (most recent call last):
...
kd_jax.core.errors.ConfigError: train.epochs must be a positive number, got 0
"""

from __future__ import annotations

from kd_jax.core.errors import ConfigError


def choice(field: str, value, choices) -> None:
  """``value`` must be one of ``choices``."""
  if value not in choices:
    raise ConfigError(field, f"{field}: unknown value {value!r}; valid choices: "
                      f"{', '.join(map(str, choices))}")


def positive(field: str, value, *, integer: bool = False) -> None:
  """``value`` must be a number (an int with ``integer``) > 0; booleans are refused."""
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    raise ConfigError(field, f"{field} must be a positive {'int' if integer else 'number'}, "
                      f"got {value!r}")


def nonnegative(field: str, value) -> None:
  """``value`` must be >= 0."""
  if value < 0:
    raise ConfigError(field, f"{field} must be >= 0, got {value}")


def int_at_least(field: str, value, minimum: int = 0) -> None:
  """``value`` must be an int >= ``minimum``; booleans are refused."""
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(field, f"{field} must be an int >= {minimum}, got {value!r}")


def ints_at_least(prefix: str, node, fields, minimum: int = 0) -> None:
  """Each of ``node``'s ``fields`` (named ``prefix.field``) must be an int >= ``minimum``."""
  for field in fields:
    int_at_least(f"{prefix}.{field}", node[field], minimum)


def in_unit_interval(field: str, value, *, closed: bool = True) -> None:
  """``value`` must be in [0, 1] (``closed``) or [0, 1)."""
  if not (0 <= value <= 1 if closed else 0 <= value < 1):
    raise ConfigError(field, f"{field} must be in [0, {'1]' if closed else '1)'}, got {value}")
