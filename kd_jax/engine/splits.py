"""The device-resident splits the engine trains on: one base with the teacher's cached
outputs (:mod:`kd_jax.engine.teacher_cache` fills them).

A task's split is a frozen dataclass of arrays indexed by example (its first field gives
the number of examples), registered as a pytree so it passes through ``jax.jit``::

    @device_split
    class TokenData(DeviceSplit):
      tokens: jax.Array        # [N, L]
      loss_mask: jax.Array     # [N, L - 1]

``teacher_logits`` / ``teacher_features`` (keyword-only, None unless cached) hold the
teacher's outputs for every example, aligned with the inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class DeviceSplit:
  """The base of every device-resident split (see the module docstring)."""
  teacher_logits: Any = dataclasses.field(default=None, kw_only=True)
  teacher_features: dict | None = dataclasses.field(default=None, kw_only=True)

  @property
  def size(self) -> int:
    """The number of examples: the leading dimension of the split's first field."""
    first = next(f for f in dataclasses.fields(self) if not f.kw_only)
    return int(jax.tree.leaves(getattr(self, first.name))[0].shape[0])


def device_split(cls: type) -> type:
  """Makes ``cls`` (a :class:`DeviceSplit` subclass) a frozen dataclass and a pytree whose
  every field is data."""
  cls = dataclasses.dataclass(frozen=True)(cls)
  jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in dataclasses.fields(cls)],
                                   meta_fields=[])
  return cls
