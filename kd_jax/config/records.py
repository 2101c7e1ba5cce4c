"""Comparing the records of two runs: which config fields can change a result.

A workdir (``kd_jax.run.workdir``), checkpoint, teacher or cache records the *result
fields* of the config that wrote it: the whole config less :data:`RESULT_NEUTRAL_FIELDS`,
which change how a run is executed or logged but not a single number it reports:

* ``experiment``   — a label;
* ``log_every_steps``, ``checkpoint.*`` — logging and checkpoint cadence (a
  resumed run is bit-identical to an uninterrupted one, tests/test_train.py);
* ``train.eval_batch_size``, ``teacher.train.eval_batch_size`` — evaluation is
  per example, so the batch it is split into changes nothing;
* ``mesh``         — how the same global batch is laid out over devices;
* ``sweep``        — the grid of the study a run belongs to, not the run.

A later run whose result fields differ is refused with one message naming each differing
field (:func:`conflict_message`); a field added to kd_jax after a record was written is no
difference while it holds its default (:func:`differences`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from kd_jax.config import schema

RESULT_NEUTRAL_FIELDS = ("experiment", "log_every_steps", "checkpoint", "mesh", "sweep",
                         "train.eval_batch_size", "teacher.train.eval_batch_size")
_ABSENT = "(absent)"


def as_dict(config) -> dict:
  if isinstance(config, Mapping) and not hasattr(config, "to_dict"):
    return copy.deepcopy(dict(config))
  # JSON round trip: tuples become lists, exactly as they are stored on disk.
  return json.loads(config.to_json_best_effort(sort_keys=True))


def without_fields(config, fields) -> dict:
  """A plain-dict copy of ``config`` (a ConfigDict or dict) less the dotted ``fields``."""
  d = json.loads(json.dumps(as_dict(config), sort_keys=True, default=str))
  for field in fields:
    *parents, name = field.split(".")
    node = d
    for parent in parents:
      node = node.get(parent) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.pop(name, None)
  return d


def result_fields(config) -> dict:
  """The fields of ``config`` that can change a result (see the module docstring)."""
  return without_fields(config, RESULT_NEUTRAL_FIELDS)


def _flatten(d, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _defaults() -> dict:
  """Every result field of the base config with its default, flattened (dotted names), and
  those of the blocks only some configs have (a method's: gkd, dpo, rl) at their defaults."""
  config = schema.base_config()
  for name, make in schema.METHOD_BLOCKS.items():
    config[name] = make()
  return _flatten(result_fields(config))


def differences(recorded: dict, current: dict) -> list[str]:
  """``"field: old → new"`` for every dotted field whose value differs, sorted.

  A field the record lacks but whose current value is its default is not a
  difference: it was added to kd_jax after the record was written, and its
  default reproduces what the run did before it existed (e.g. ``train.steps = 0``);
  likewise a method's block at its defaults added to a study's config (its finished
  points of other methods never read it).
  """
  old, new = _flatten(recorded), _flatten(current)
  defaults = _defaults() if set(new) - set(old) else {}
  lines = []
  for field in sorted(set(old) | set(new)):
    a, b = old.get(field, _ABSENT), new.get(field, _ABSENT)
    if a == _ABSENT and field in defaults and b == defaults[field]:
      continue
    if a != b:
      lines.append(f"{field}: {_show(a)} → {_show(b)}")
  return lines


def same_results(recorded: dict, current: dict) -> bool:
  """Whether two records' result fields describe the same run (see :func:`differences`)."""
  return recorded == current or not differences(recorded, current)


def _show(value) -> str:
  return value if value == _ABSENT else json.dumps(value)


def conflict_message(what: str, recorded: dict, current: dict, remedy: str) -> str:
  changed = differences(recorded, current)
  listing = "\n".join(f"  {line}" for line in changed) or "  (the recorded fields are unreadable)"
  return (f"{what}: written by a run of a different config; these fields differ "
          f"(recorded → now):\n{listing}\n{remedy}")
