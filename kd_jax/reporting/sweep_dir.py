"""A sweep's directory as the reports read it: its record (``sweep.json``) and each run's
``results.json``, read afresh (the source of truth, so a report can run while the sweep
is still going). Read by the sweep summary, ``llm_table`` and ``topk_fidelity``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import logging

from kd_jax.core import files
from kd_jax.core.errors import ConfigError

RECORD_FILE = "sweep.json"
RESULTS_FILE = "results.json"


@dataclasses.dataclass(frozen=True)
class SweepDir:
  """Attributes:
    record: the sweep record (base config, grid, points, runs with their status).
    by_point: ``{point slug: [results.json of each finished run, in seed order]}``.
    entries: ``[(run entry, its results or None)]``, in the record's order.
  """
  record: dict
  by_point: dict[str, list[dict]]
  entries: list[tuple[dict, dict | None]]


def read_results(path: str) -> dict | None:
  """A run's ``results.json``; None when it is absent or unreadable (the run is redone)."""
  try:
    return files.read_json(path)
  except json.JSONDecodeError:
    logging.warning("Ignoring unreadable %s; the run will be redone.", path)
    return None


def read(workdir: str) -> SweepDir:
  """The sweep in ``workdir``.

  Raises:
    ConfigError: ``workdir`` holds no ``sweep.json``.
  """
  record = files.read_json(os.path.join(workdir, RECORD_FILE))
  if record is None:
    raise ConfigError("workdir", f"--workdir={workdir} is not a kd_jax.sweep directory (no "
                      f"{RECORD_FILE})")
  entries = [(entry, read_results(os.path.join(workdir, entry["workdir"], RESULTS_FILE)))
             for entry in record["runs"]]
  by_point: dict[str, list[dict]] = {p["slug"]: [] for p in record["points"]}
  for entry, results in sorted(entries, key=lambda e: e[0]["seed"]):
    if results is not None:
      by_point[entry["point"]].append(results)
  return SweepDir(record, by_point, entries)
