"""A workdir belongs to one config (docs/results.md, "One workdir, one config").

The first run in a workdir records its config in ``WORKDIR/config.json``.
A later run or resume whose *result fields* differ is refused before anything
runs, with one message naming each differing field (recorded → now). The
result fields are the whole config less :data:`RESULT_NEUTRAL_FIELDS`, which
change how a run is executed or logged but not a single number it reports:

* ``experiment``   — a label;
* ``log_every_steps``, ``checkpoint.*`` — logging and checkpoint cadence (a
  resumed run is bit-identical to an uninterrupted one, tests/test_train.py);
* ``train.eval_batch_size``, ``teacher.train.eval_batch_size`` — evaluation is
  per example, so the batch it is split into changes nothing;
* ``mesh``         — how the same global batch is laid out over devices;
* ``sweep``        — the grid of the study a run belongs to, not the run.

Paths and progress bars are flags, not config fields, so they may differ too.
Checkpoints carry the same record (:func:`identity_record`) in their metadata,
and the teacher, baseline and teacher-output caches are keyed by everything
their contents depend on (:mod:`kd_jax.teachers`, :mod:`kd_jax.teacher_cache`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from kd_jax.core.errors import WorkdirConflictError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
RESULT_NEUTRAL_FIELDS = ("experiment", "log_every_steps", "checkpoint", "mesh", "sweep",
                         "train.eval_batch_size", "teacher.train.eval_batch_size")
_ABSENT = "(absent)"


def _as_dict(config) -> dict:
  if isinstance(config, Mapping) and not hasattr(config, "to_dict"):
    return copy.deepcopy(dict(config))
  # JSON round trip: tuples become lists, exactly as they are stored on disk.
  return json.loads(config.to_json_best_effort(sort_keys=True))


def without_fields(config, fields) -> dict:
  """A plain-dict copy of ``config`` (a ConfigDict or dict) less the dotted ``fields``."""
  d = json.loads(json.dumps(_as_dict(config), sort_keys=True, default=str))
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


def digest(identity) -> str:
  """A 16-hex-digit hash of a JSON-able identity dict."""
  text = json.dumps(identity, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_record(identity: dict) -> dict:
  """``{"key": digest, "fields": identity}``: what a workdir or checkpoint records."""
  return {"key": digest(identity), "fields": identity}


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
  from kd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  for name, make in config_lib.METHOD_BLOCKS.items():
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


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def recorded_fields(workdir: str) -> dict | None:
  """The result fields recorded in ``workdir`` (its config.json, else an older results.json)."""
  record = _read_json(os.path.join(workdir, CONFIG_FILE))
  if record is not None:
    return record["fields"]
  results = _read_json(os.path.join(workdir, RESULTS_FILE))
  if results is not None and "config" in results:   # a workdir from before config.json
    return result_fields(results["config"])
  return None


def check(workdir: str, config) -> None:
  """Refuses ``config`` when ``workdir`` records a run whose result fields differ.

  Raises:
    WorkdirConflictError: naming each differing field (old → new) and asking for a new
      workdir.
  """
  current = result_fields(config)
  recorded = recorded_fields(workdir)
  if recorded is not None and not same_results(recorded, current):
    raise WorkdirConflictError(conflict_message(
        f"--workdir={workdir}", recorded, current,
        "Use a new --workdir for this config (the earlier run's results are kept), or "
        "delete the workdir to discard them."))


def record(workdir: str, config) -> None:
  """Writes ``workdir/config.json`` for ``config`` unless the workdir has one (call after
  :func:`check`: an existing record is never overwritten)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    return
  os.makedirs(workdir, exist_ok=True)
  current = result_fields(config)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump({**identity_record(current), "config": _as_dict(config)}, f, indent=2,
              sort_keys=True, default=str)
  os.replace(tmp, path)


def finished_results(workdir: str, config) -> dict | None:
  """The stored ``results.json`` of ``workdir`` when it finished with this config, else None.

  Raises:
    WorkdirConflictError: as :func:`check`.
  """
  check(workdir, config)
  return _read_json(os.path.join(workdir, RESULTS_FILE))
