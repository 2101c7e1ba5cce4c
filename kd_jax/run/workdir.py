"""A workdir belongs to one config (docs/results.md, "One workdir, one config").

The first run in a workdir records its config in ``WORKDIR/config.json``.
A later run or resume whose *result fields* differ is refused before anything
runs, with one message naming each differing field (recorded → now). Which
fields can change a result, and how two records compare, is
:mod:`kd_jax.config.records`'s.

Paths and progress bars are flags, not config fields, so they may differ too.
The record also holds the library versions that started the run
(:func:`kd_jax.core.fingerprint.versions`): an unfinished run is not resumed under
other versions unless told to (:func:`check_versions`), as its checkpoints would
continue under other numerics.
Checkpoints carry the same record (:func:`identity_record`) in their metadata,
and the teacher, baseline and teacher-output caches are keyed by everything
their contents depend on (:mod:`kd_jax.run.teachers`, :mod:`kd_jax.engine.teacher_cache`).
"""

from __future__ import annotations

import os

from kd_jax.config.records import as_dict, conflict_message, result_fields, same_results
from kd_jax.core import files
from kd_jax.core import fingerprint as source_code
from kd_jax.core.errors import WorkdirConflictError
from kd_jax.core.identity import identity_record

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"


def recorded_fields(workdir: str) -> dict | None:
  """The result fields recorded in ``workdir`` (its config.json, else an older results.json)."""
  record = files.read_json(os.path.join(workdir, CONFIG_FILE))
  if record is not None:
    return record["fields"]
  results = files.read_json(os.path.join(workdir, RESULTS_FILE))
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
  files.write_json(path, {**identity_record(result_fields(config)), "config": as_dict(config),
                          "versions": source_code.versions()}, sort_keys=True)


def check_versions(workdir: str, *, allow_change: bool = False) -> None:
  """Refuses to resume the run in ``workdir`` under other library versions than those that
  started it (a workdir recorded before versions were, or ``allow_change``, passes).

  Raises:
    WorkdirConflictError: naming each library whose version differs (recorded → now).
  """
  record = files.read_json(os.path.join(workdir, CONFIG_FILE)) or {}
  recorded, now = record.get("versions"), source_code.versions()
  if not recorded or allow_change:
    return
  changed = [f"{name}: {recorded.get(name)} → {now.get(name)}"
             for name in sorted(set(recorded) | set(now)) if recorded.get(name) != now.get(name)]
  if changed:
    raise WorkdirConflictError(
        f"--workdir={workdir}: its run was started with other library versions "
        f"({'; '.join(changed)}); resuming its checkpoints would continue under other "
        "numerics. Use a new --workdir, or pass --allow_version_change to resume anyway.")


def finished_results(workdir: str, config) -> dict | None:
  """The stored ``results.json`` of ``workdir`` when it finished with this config, else None.

  Raises:
    WorkdirConflictError: as :func:`check`.
  """
  check(workdir, config)
  return files.read_json(os.path.join(workdir, RESULTS_FILE))
