"""A sweep's directory as the reports read it: its record (``sweep.json``) and each run's
``results.json``, read afresh (the source of truth, so a report can run while the sweep
is still going). Read by the sweep summary, ``llm_table`` and ``topk_fidelity``.

A table compares runs of one code: runs whose ``results.json`` record different code
fingerprints (:mod:`kd_jax.core.fingerprint`), or none, are refused unless the reader is
told ``allow_mixed_code``.
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

  @property
  def finished(self) -> list[tuple[str, dict]]:
    """``[(run name, results)]`` of the finished runs, in the record's order."""
    return [(entry["name"], results) for entry, results in self.entries if results is not None]


def code_fingerprint(results: dict) -> str | None:
  """The code fingerprint a run's ``results.json`` records (None: recorded before there was one)."""
  return (results.get("code") or {}).get("fingerprint")


def by_code(named_results) -> dict[str | None, list[str]]:
  """``{fingerprint: [run names]}`` of ``[(name, results)]``, in order of appearance."""
  groups: dict[str | None, list[str]] = {}
  for name, results in named_results:
    groups.setdefault(code_fingerprint(results), []).append(name)
  return groups


def describe_code(groups: dict[str | None, list[str]]) -> str:
  """One phrase per fingerprint: ``fingerprint 1a2b… (3 runs: a, b, c)``."""
  def runs(names):
    shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
    return f"{len(names)} run{'s' if len(names) != 1 else ''}: {shown}"
  return "; ".join(f"{'no recorded fingerprint' if fp is None else 'fingerprint ' + fp} "
                   f"({runs(names)})" for fp, names in groups.items())


def read_results(path: str) -> dict | None:
  """A run's ``results.json``; None when it is absent or unreadable (the run is redone)."""
  try:
    return files.read_json(path)
  except json.JSONDecodeError:
    logging.warning("Ignoring unreadable %s; the run will be redone.", path)
    return None


def code_line(sweep: SweepDir) -> str:
  """The line a table states its code with: the commit and fingerprint of its runs."""
  groups = by_code(sweep.finished)
  if len(groups) > 1:
    return f"Code: runs of different code ({describe_code(groups)})."
  if not groups or None in groups:
    return "Code: not recorded by these runs."
  code = sweep.finished[0][1]["code"]
  dirty = " with uncommitted changes" if code.get("dirty") else ""
  return (f"Code: commit {code.get('commit') or 'unknown'}{dirty}, fingerprint "
          f"{code['fingerprint']} (kd_jax.core.fingerprint).")


def _timed_spans(sweep: SweepDir) -> list[tuple[float, float]]:
  """The finished runs' ``(started_at, finished_at)`` from ``sweep.json``, by start."""
  return sorted((entry["started_at"], entry["finished_at"]) for entry, results in sweep.entries
                if results is not None and "started_at" in entry and "finished_at" in entry)


def wall_seconds(sweep: SweepDir) -> float:
  """The sweep's wall time: the union of its finished runs' ``[started_at, finished_at]``.

  Runs side by side (``--max_parallel``, a cluster) count once, and the gaps between
  sittings not at all. A run resumed in a later sitting records the time of its resumption
  as ``started_at`` (kd_jax.sweep), so it counts from there: the union is then a lower bound.
  """
  total, covered_until = 0.0, float("-inf")
  for start, end in _timed_spans(sweep):   # each span adds only what reaches past the others
    if end > covered_until:
      total += end - max(start, covered_until)
      covered_until = end
  return total


def wall_line(sweep: SweepDir) -> str:
  """The line a table states its wall time with (:func:`wall_seconds`); empty when no
  finished run recorded when it started and ended."""
  seconds = wall_seconds(sweep)
  if not seconds:
    return ""
  shown = (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200
           else f"{seconds / 3600:.1f} h")
  timed = len(_timed_spans(sweep))
  untimed = len(sweep.finished) - timed
  return (f"Wall time: {shown} for the {timed} finished run{'s' if timed != 1 else ''} that "
          "recorded their times (the union of their start-to-finish intervals in sweep.json: "
          "runs side by side count once; a run resumed in a later sitting counts from its "
          f"resumption){f'; {untimed} more recorded none' if untimed else ''}.")


def footer(sweep: SweepDir) -> str:
  """What every table of a sweep ends with: its code (:func:`code_line`) and, where its runs
  recorded their times, its wall time (:func:`wall_line`), one per line."""
  return "".join(f"{line}\n" for line in (code_line(sweep), wall_line(sweep)) if line)


def read(workdir: str, *, allow_mixed_code: bool = False) -> SweepDir:
  """The sweep in ``workdir``.

  Raises:
    ConfigError: ``workdir`` holds no ``sweep.json``, or (unless ``allow_mixed_code``)
      its finished runs were computed by different code.
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
  sweep = SweepDir(record, by_point, entries)
  if not allow_mixed_code:
    refuse_mixed_code(sweep, f"--workdir={workdir}")
  return sweep


def refuse_mixed_code(sweep: SweepDir, where: str) -> None:
  """Raises ConfigError (naming ``--allow_mixed_code``) when ``sweep``'s finished runs
  record different code fingerprints; ``where`` names the sweep directory (or directories)."""
  groups = by_code(sweep.finished)
  if len(groups) > 1:
    raise ConfigError("allow_mixed_code", f"{where} mixes runs of different code: "
                      f"{describe_code(groups)}. Rerun them at one commit in a new --workdir, "
                      "or pass --allow_mixed_code to tabulate them anyway.")
