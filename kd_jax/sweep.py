r"""Ablation sweeps: a grid of config overrides × seeds, resumable, with summaries.

Command line::

    python -m kd_jax.sweep --config=experiments/fashion_mnist/kd.py --workdir=DIR \
        --grid divergence=kl,js,cosine --grid temperature.init=1,4,8 --seeds 3

Every point of the cartesian product of the ``--grid`` flags, for every seed
``config.seed + i`` (i < ``--seeds``), is an ordinary `kd_jax.main.run_experiment` run
in its own workdir ``DIR/runs/<point slug>/seed<seed>``, e.g.
``DIR/runs/divergence=js,temperature.init=4/seed1``. The teacher is cached by its
config in ``--teacher_dir``, so it trains once for the whole sweep.

``DIR/sweep.json`` records the base config, the grid, the points and every run's
status: ``pending``, ``running`` (started and not finished: an interrupted run looks
like this), ``done`` or ``failed`` (with the error and the traceback's tail); where it ran
(``where``: ``local``, ``ray``, ``slurm:<job id>``), the host, and when the sweep started
and saw it finish (``started_at``, ``finished_at``, seconds since the epoch; ``seconds``:
the run itself). A run is
done when its ``results.json`` exists. Re-running the same command skips done runs,
resumes unfinished ones from their checkpoints and retries failed ones; a run that
raises is recorded and the sweep goes on. At the end it writes ``DIR/summary.csv``,
``DIR/summary.md`` and PNG plots (`write_summary`); ``--summarize_only`` redoes just
that, e.g. while a sweep is still running.

A study whose rows are not a product lists named points instead (`parse_points`)::

    python -m kd_jax.sweep --config=experiments/arithmetic/token_kd.py --workdir=DIR \
        --point "sft: method=none" --point "kd-js: divergence=js" --seeds 3

Each runs in ``DIR/runs/<name>/seed<seed>``, and the summary has one ``name``
column; ``--grid`` flags given as well multiply every named point.

Where the runs execute is ``--launcher`` (DESIGN §10, :mod:`kd_jax.run.launchers`):
``local`` (this process, one after another; the default), ``ray`` (Ray tasks, at most
``--max_parallel`` in flight, each with ``sweep.resources`` CPUs and GPUs; a run whose
worker dies is retried and resumes) or ``slurm`` (one submitit job array; ``--no_wait``
returns once it is submitted)::

    python -m kd_jax.sweep --config=... --workdir=$PWD/runs/x --launcher=ray --max_parallel=4
    python -m kd_jax.sweep --config=... --workdir=/shared/runs/x --launcher=slurm \
        --slurm_partition=gpu --slurm_time=120 --gpus_per_run=1 --no_wait

Every run is the same ordinary run whatever the launcher, so skipping, resuming, failure
records and the summary do not change; ray and slurm need ``--workdir`` (and
``--teacher_dir``) as absolute paths on storage every worker sees.

Grid values are typed like the field they override (`parse_grid`). A schedule field
(a group with an ``init`` key, like ``temperature``) also takes a bare number:
``--grid temperature=1,4`` means a constant schedule, i.e. it sets
``temperature.schedule='constant'`` and ``temperature.init``; other keys of the group
(a warm-up, say) are kept.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging

from kd_jax.run import launchers, pipeline, validation
from kd_jax.config import cli
from kd_jax.core import files
from kd_jax.core import fingerprint as source_code
from kd_jax.reporting import stats, sweep_dir
from kd_jax.config import records
from kd_jax.run import workdir as workdir_lib
from kd_jax.core.errors import ConfigError, WorkdirConflictError
# The grid's public names, used by the sweep's callers and tests as sweep.<name>.
from kd_jax.run.grid import (NamedPoint, Point, apply_point, combine, parse_grid,  # noqa: F401
                         parse_points, slugify)

RunFn = Callable[..., dict]


# --------------------------------------------------------------------------- runs


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the sweep: a grid point at one seed."""
  slug: str
  point: Point
  seed: int
  config: ml_collections.ConfigDict
  workdir: str  # relative to the sweep's workdir

  @property
  def name(self) -> str:
    return f"{self.slug}/seed{self.seed}"


def plan_runs(config: ml_collections.ConfigDict, points: Sequence[Point],
              num_seeds: int | None = None, names: Sequence[str | None] | None = None
              ) -> list[Run]:
  """Every point × seed, seed-major: a partial sweep has every point at n = 1 first.

  Seeds are ``config.seed + i`` for ``i < num_seeds``; ``num_seeds=None`` means one
  seed and allows ``seed`` as a grid key instead. ``names`` (from `combine`) name
  the points' directories instead of their `slugify` slugs.
  """
  if num_seeds is not None:
    if num_seeds < 1:
      raise ConfigError(None, f"--seeds must be >= 1, got {num_seeds}.")
    if any("seed" in point for point in points):
      raise ConfigError(None, "--grid seed=... and --seeds both set the seed; use one of them.")
    if "seed" not in config:
      raise ConfigError(None, "--seeds needs a `seed` field in the config.")
  names = names or [None] * len(points)
  slugs = [name or slugify(point) for name, point in zip(names, points)]
  if len(set(slugs)) != len(slugs):
    raise ConfigError(None, f"two grid points share a directory name: {slugs}.")
  runs = []
  for i in range(num_seeds or 1):
    for slug, point in zip(slugs, points):
      run_config = apply_point(config, point)
      if num_seeds is not None:
        run_config.seed = config.seed + i
      seed = run_config.get("seed", 0)
      runs.append(Run(slug, point, seed, run_config,
                      os.path.join("runs", slug, f"seed{seed}")))
  return runs


def _default_run_fn() -> RunFn:
  return pipeline.run_experiment


def _config_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _write_json(path: str, data: dict) -> None:
  """Atomic write, so a kill never leaves a truncated sweep.json behind (process 0 only)."""
  if launchers.is_primary():
    files.write_json(path, data, indent=1)


def _unique(values: Iterable[Any]) -> list[Any]:
  """Distinct values in first-seen order (grid values may be unhashable lists)."""
  out = []
  for value in values:
    if value not in out:
      out.append(value)
  return out


def _eta(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_sweep(config: ml_collections.ConfigDict, workdir: str,
              points: Sequence[Point] = ({},), *, num_seeds: int | None = None,
              names: Sequence[str | None] | None = None,
              teacher_dir: str | None = None, run_fn: RunFn | None = None,
              allow_mixed_code: bool = False, metric: str | None = None,
              launcher: str = "local", settings: launchers.Settings | None = None) -> dict:
  """Runs every point × seed (skipping finished runs), then writes the summary.

  Args:
    config: the base config.
    workdir: the sweep directory (created if needed).
    points: from `parse_grid` (or the overrides of `combine`'s named points).
    num_seeds: seeds per point (see `plan_runs`).
    names: the points' names (`combine`); the summary then has one ``name`` column
      instead of one per grid key.
    teacher_dir: passed to ``run_fn``; None lets it use its default cache.
    run_fn: ``run_fn(config, workdir, *, teacher_dir=...) -> results dict``; it must
      resume from checkpoints in ``workdir`` and write ``workdir/results.json`` (if it
      only returns the dict, the sweep writes it). Default:
      `kd_jax.main.run_experiment`.
    allow_mixed_code: keep finished runs computed by other code (another code
      fingerprint, :mod:`kd_jax.core.fingerprint`) and tabulate them with the new ones.
    metric: what the summary ranks by (`write_summary`); None: the runs' headline.
    launcher: where the runs execute (:data:`kd_jax.run.launchers.LAUNCHERS`: ``local``,
      ``ray``, ``slurm``); ``run_fn`` must then be picklable.
    settings: the launcher's (:class:`kd_jax.run.launchers.Settings`).

  Returns:
    The sweep record, as written to ``workdir/sweep.json`` (without the summary when a
    SLURM array was submitted without waiting for it).

  Raises:
    ConfigError: bad grid/seeds.
    WorkdirConflictError: ``workdir`` holds a sweep of another base config, or a
      run directory holds results of another config (they would silently mix
      with these; use a new workdir), or (unless ``allow_mixed_code``) finished
      results of other code; all before anything runs.
  """
  runs = plan_runs(config, points, num_seeds, names)
  settings = settings or launchers.Settings()
  storage = {"--workdir": workdir, "--teacher_dir": teacher_dir}
  launchers.check(launcher, settings, storage)     # before anything is written
  os.makedirs(workdir, exist_ok=True)
  record_path = os.path.join(workdir, "sweep.json")
  old = sweep_dir.read_results(record_path) or {}
  if old and not records.same_results(records.result_fields(old["config"]),
                                          records.result_fields(config)):
    raise WorkdirConflictError(records.conflict_message(
        f"--workdir={workdir} (a sweep)", records.result_fields(old["config"]),
        records.result_fields(config),
        "Use a new --workdir for this sweep (the earlier sweep's results are kept)."))
  old_runs = {r["name"]: r for r in old.get("runs", [])}
  slugs = _unique(r.slug for r in runs)
  named = names is not None and any(names)
  planned = [dict(slug=slug, values=p, **({"name": slug} if named else {}))
             for slug, p in zip(slugs, points)]
  record = {
      "experiment": config.get("experiment"),
      "config": _config_json(config),
      "grid": _grid(planned, named),
      "seeds": _unique(r.seed for r in runs),
      "points": planned,
      "runs": [],
      # What the summary ranks by, so that --summarize_only ranks the same way.
      **({"metric": metric} if metric else {}),
  }
  for run in runs:
    entry = dict(old_runs.get(run.name, {}), name=run.name, point=run.slug,
                 seed=run.seed, workdir=run.workdir)
    # A run's workdir belongs to its config: stale results of another config are refused.
    workdir_lib.check(os.path.join(workdir, run.workdir), run.config)
    record["runs"].append(_refreshed(workdir, entry))
  _keep_earlier_points(record, old, workdir)
  if not allow_mixed_code:
    _check_finished_runs_share_this_code(workdir, record["runs"])
  record["code"] = source_code.record()
  _write_json(record_path, record)

  run_fn = run_fn or _default_run_fn()
  # This invocation's runs (the first len(runs) entries; earlier points' are only kept).
  todo = [i for i, e in enumerate(record["runs"][:len(runs)]) if e["status"] != "done"]
  logging.info("Sweep %s: %d runs, %d already done.", workdir, len(runs),
               len(runs) - len(todo))
  # Workers turn on this process's compilation cache too (JAX reads it when they compile).
  cache = jax.config.jax_compilation_cache_dir or ""
  jobs = [launchers.Job(i, runs[i].name, runs[i].config,
                        os.path.abspath(os.path.join(workdir, runs[i].workdir)), teacher_dir,
                        cache, record["runs"][i].get("where", "")
                        if record["runs"][i]["status"] == "running" else "") for i in todo]
  progress = _Progress(record, record_path, parallel=launcher != "local", planned=len(runs))
  all_finished = launchers.LAUNCHERS[launcher](jobs, run_fn, settings, progress,
                                               storage=storage)
  if not all_finished:
    print(f"[sweep] {len(jobs)} runs submitted ({launcher}); when they are done: python -m "
          f"kd_jax.sweep --summarize_only --workdir={workdir}", flush=True)
    return record
  changed = source_code.changed_since_import()
  if changed:   # the runs used the code loaded at the start; a later process would not
    record["code"]["changed_since_import"] = changed
    _write_json(record_path, record)
    print(f"note: {len(changed)} source file(s) changed while this sweep ran "
          f"({', '.join(changed[:3])}{', …' if len(changed) > 3 else ''}); every run used "
          f"the code loaded at its start (fingerprint {record['code']['fingerprint']}).",
          flush=True)
  if launchers.is_primary():
    write_summary(workdir, allow_mixed_code=allow_mixed_code, metric=metric)
    print(finished_message(workdir, record), flush=True)
  return record


def _refreshed(workdir: str, entry: dict) -> dict:
  """A run's record entry with its status as its run directory says (``results.json``)."""
  if os.path.exists(os.path.join(workdir, entry["workdir"], "results.json")):
    entry["status"] = "done"
    entry.pop("error", None)
    entry.pop("traceback", None)
  elif entry.get("status") == "done":     # its results were deleted since: run it again
    entry["status"] = "pending"
  entry.setdefault("status", "pending")
  return entry


def _keep_earlier_points(record: dict, old: dict, workdir: str) -> None:
  """Adds to ``record`` the points (and their runs) of the workdir's earlier sweep record
  that this invocation does not plan and that have runs finished or under way, when both
  vary the same keys (named points, or one grid's fields): a workdir's sweep grows, so a
  table over it covers every point run there, e.g. a table computed part by part
  (experiments/reasoning/r1_table.py's ``PARTS``). The base configs are already known to
  agree; the kept runs' code is checked with this invocation's (``allow_mixed_code``). Of
  another kind of sweep, the record is replaced. One invocation per workdir at a time:
  each rewrites the record."""
  if not old or set(old.get("grid", {})) != set(record["grid"]):
    return
  # A point is its name, or its values (a grid's slug follows the order of the flags).
  named = "name" in record["grid"]
  same = (lambda p: p["slug"]) if named else (lambda p: json.dumps(p["values"], sort_keys=True))
  planned = {same(p) for p in record["points"]}
  earlier = {p["slug"]: p for p in old.get("points", []) if same(p) not in planned}
  runs = [_refreshed(workdir, dict(e)) for e in old.get("runs", []) if e["point"] in earlier]
  # Points with runs finished, or in flight (also submitted to SLURM: "running" with its
  # task in "where"); one whose run directories were all deleted leaves the record.
  kept = {e["point"] for e in runs if e["status"] in ("done", "running")}
  if not kept:
    return
  record["points"] = [p for p in earlier.values() if p["slug"] in kept] + record["points"]
  record["runs"] += [e for e in runs if e["point"] in kept]
  record["seeds"] = _unique(e["seed"] for e in record["runs"])
  record["grid"] = _grid(record["points"], named)


def _grid(points: Sequence[dict], named: bool) -> dict:
  """A record's ``grid``: its points' names, or each field the points set, with its values
  in first-seen order."""
  if named:
    return {"name": [p["slug"] for p in points]}
  keys = list(points[0]["values"]) if points else []
  return {k: _unique(p["values"][k] for p in points) for k in keys}


class _Progress:
  """Keeps ``sweep.json`` and the console up to date as the launcher's runs start and end."""

  def __init__(self, record: dict, record_path: str, *, parallel: bool, planned: int):
    self.record, self.record_path, self.parallel = record, record_path, parallel
    self.planned = planned      # this invocation's runs: the record's first entries
    self.elapsed: list[float] = []

  def _counts(self) -> str:
    runs = self.record["runs"]
    done = sum(e["status"] == "done" for e in runs)
    failed = sum(e["status"] == "failed" for e in runs)
    return f"{done}/{len(runs)} done, {failed} failed"

  def started(self, job, where: str) -> None:
    entry = self.record["runs"][job.index]
    entry.pop("error", None)
    entry.pop("traceback", None)
    entry.update(status="running", where=where, started_at=round(time.time(), 3))
    entry.pop("finished_at", None)
    _write_json(self.record_path, self.record)
    if not self.parallel:
      # The first run also trains the teacher and compiles: leave it out once others exist.
      typical = self.elapsed[1:] or self.elapsed
      remaining = sum(e["status"] != "done" for e in self.record["runs"][:self.planned])
      eta = _eta(sum(typical) / len(typical) * remaining) if typical else "?"
      print(f"[sweep {self._counts()}, ETA {eta}] running {job.name}", flush=True)

  def finished(self, job, outcome: dict) -> None:
    entry = self.record["runs"][job.index]
    entry.update(outcome, finished_at=round(time.time(), 3))   # (started() cleared errors)
    if entry["status"] != "done":
      logging.error("Run %s failed: %s", job.name, entry.get("error"))
    if "seconds" in outcome:
      self.elapsed.append(outcome["seconds"])
    _write_json(self.record_path, self.record)
    if self.parallel:
      print(f"[sweep {self._counts()}] {job.name} {entry['status']}", flush=True)


def _check_finished_runs_share_this_code(workdir: str, entries: Sequence[dict]) -> None:
  """Refuses finished runs whose results were computed by other code than this process's."""
  finished = [(e["name"], sweep_dir.read_results(os.path.join(workdir, e["workdir"],
                                                              "results.json")))
              for e in entries if e["status"] == "done"]
  groups = sweep_dir.by_code((name, r) for name, r in finished if r is not None)
  groups.pop(source_code.fingerprint(), None)
  if groups:
    raise WorkdirConflictError(
        f"--workdir={workdir}: finished runs were computed by other code than this "
        f"(fingerprint {source_code.fingerprint()}): {sweep_dir.describe_code(groups)}. Use a "
        "new --workdir (the old results are kept), or pass --allow_mixed_code to keep them "
        "and tabulate them with the new runs.")


def finished_message(workdir: str, record: dict) -> str:
  """What a sweep prints at the end (also when every run was already done): the counts,
  summary.md's table and the paths of the summary files."""
  done = sum(e["status"] == "done" for e in record["runs"])
  failed = sum(e["status"] == "failed" for e in record["runs"])
  with open(os.path.join(workdir, "summary.md")) as f:
    table = [line.rstrip() for line in f if line.startswith("|")]
  return "\n".join([
      f"[sweep {done}/{len(record['runs'])} done, {failed} failed] {workdir}",
      *table,
      f"summary: {os.path.join(workdir, 'summary.md')} (sorted by the final headline metric; "
      f"95% intervals over seeds), {os.path.join(workdir, 'summary.csv')}, plots *.png"])


# --------------------------------------------------------------------------- summary

def write_summary(workdir: str, *, allow_mixed_code: bool = False,
                  metric: str | None = None) -> list[dict]:
  """Writes summary.csv, summary.md and the PNG plots (95% t-intervals) for a sweep.

  Reads every run's ``results.json`` afresh (the source of truth), so it can run
  while the sweep is still going. Plots: see `kd_jax.reporting.plots.write_plots`.
  ``metric`` (a `kd_jax.reporting.catalog.METRICS_BY_HEADLINE` key, e.g.
  ``bits_per_byte`` for students of different tokenizers) replaces the runs' headline
  as what the summary ranks by; None: the sweep's own (``sweep.json``), else the headline.

  Returns:
    The rows, one per point: ``{"point", "slug", **stats.aggregate_point(...),
    "runs_failed", "runs_pending"}``.
  """
  from kd_jax.reporting import plots  # matplotlib is slow to import; only needed here.

  sweep = sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code)
  record, by_point = sweep.record, sweep.by_point
  failed = {slug: 0 for slug in by_point}
  planned = {slug: 0 for slug in by_point}
  status_counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
  failures, all_results = [], []
  for entry, results in sweep.entries:
    if results is None and entry["status"] == "running":
      # A run the sweep did not wait for (a SLURM array) says how it ended in its directory.
      ended = launchers.read_outcome(os.path.join(workdir, entry["workdir"]))
      if ended is not None and ended["status"] == "failed":
        entry = {**entry, **ended}
    status = "done" if results is not None else entry["status"]
    status_counts[status] = status_counts.get(status, 0) + 1
    planned[entry["point"]] += 1
    if results is not None:
      all_results.append(results)
    elif status == "failed":
      failed[entry["point"]] += 1
      failures.append(f"`{entry['name']}`: {entry.get('error', '?')}")
  headline = (check_metric(metric) or record.get("metric")
              or stats.headline_of(all_results))
  rows = [{"point": {"name": p["name"]} if "name" in p else p["values"], "slug": p["slug"],
           **stats.aggregate_point(by_point[p["slug"]], headline=headline),
           "runs_failed": failed[p["slug"]],
           "runs_pending": planned[p["slug"]] - len(by_point[p["slug"]]) - failed[p["slug"]]}
          for p in record["points"]]
  keys = list(record["grid"])
  with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, stats.csv_columns(keys, headline), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
      writer.writerow({**row, "point": row["slug"],
                       **{k: stats.format_value(v) for k, v in row["point"].items()}})

  baseline = stats.baseline_over_seeds(all_results, headline=headline)
  teachers = sorted({r["teacher"][headline] for r in all_results
                     if (r.get("teacher") or {}).get(headline) is not None})
  written = plots.write_plots(rows, workdir, grid=record["grid"], config=record["config"],
                              baseline=baseline,
                              teacher=sum(teachers) / len(teachers) if teachers else None)
  text = stats.markdown_summary(
      rows, keys=keys, experiment=record.get("experiment"), grid=record["grid"],
      seeds=record["seeds"], status_counts=status_counts, teacher_accuracies=teachers,
      baseline=baseline, failures=failures, plots=written, headline=headline)
  text += "\n" + sweep_dir.footer(sweep)
  with open(os.path.join(workdir, "summary.md"), "w") as f:
    f.write(text)
  return rows


# --------------------------------------------------------------------------- CLI


def _define_flags() -> None:
  """The sweep's own flags; --config, --workdir, --teacher_dir, --progress: kd_jax.run.process's."""
  flags.DEFINE_multi_string("grid", [], "key=v1,v2,... (repeatable; nested keys with "
                            "dots); the sweep runs the cartesian product.")
  flags.DEFINE_multi_string("point", [], "'name: key=value; key=value' (repeatable): named "
                            "points instead of (or times) the --grid product.")
  flags.DEFINE_integer("seeds", None, "Seeds per point: config.seed + 0 .. N-1.")
  flags.DEFINE_bool("summarize_only", False, "Only (re)write the summary and plots.")
  flags.DEFINE_bool("allow_mixed_code", False, "Keep and tabulate finished runs computed by "
                    "other code (another code fingerprint) next to new ones.")
  flags.DEFINE_string("metric", None, "Rank the summary by this metric instead of the runs' "
                      "headline (e.g. bits_per_byte); default: the experiment module's "
                      "sweep.metric, else the headline.")
  flags.DEFINE_enum("launcher", "local", list(launchers.LAUNCHERS),
                    "Where the runs execute: local (this process, one after another), ray "
                    "(Ray tasks) or slurm (a submitit job array). ray and slurm need --workdir "
                    "(and --teacher_dir) as absolute paths on storage every worker sees.")
  flags.DEFINE_integer("max_parallel", 0, "Runs at once (ray: in flight; slurm: the array's "
                       "parallelism); 0: as many as the resources allow.")
  flags.DEFINE_float("cpus_per_run", None, "CPUs per run (default config.sweep.resources.cpus, "
                     "else 1).")
  flags.DEFINE_float("gpus_per_run", None, "GPUs per run (default config.sweep.resources.gpus, "
                     "else 0); a fraction shares a GPU between runs on Ray.")
  flags.DEFINE_integer("processes_per_run", None, "JAX processes per run (--launcher=ray: "
                       "one task each, placed together; default config.sweep.resources."
                       "processes, else 1).")
  flags.DEFINE_string("ray_address", None, "The Ray cluster (default RAY_ADDRESS, else a "
                      "local instance).")
  flags.DEFINE_string("slurm_partition", None, "The SLURM partition (default: the site's).")
  flags.DEFINE_integer("slurm_time", 60, "The SLURM time limit per run, in minutes.")
  flags.DEFINE_enum("slurm_cluster", "slurm", list(launchers.on_slurm.CLUSTERS),
                    "slurm: sbatch; local/debug: submitit runs the same array on this machine.")
  flags.DEFINE_bool("no_wait", False, "--launcher=slurm: return once the array is submitted "
                    "(then --summarize_only when it is done).")


def launch_settings(config: ml_collections.ConfigDict, workdir: str, flag_values
                    ) -> launchers.Settings:
  """The launcher's settings from the flags, per-run resources defaulting to the
  experiment module's ``sweep.resources`` (``cpus``, ``gpus``).

  Raises:
    ConfigError: non-positive CPUs, negative GPUs, parallelism or time limit, or
      ``--no_wait`` without ``--launcher=slurm``.
  """
  resources = dict((config.get("sweep") or {}).get("resources") or {})
  unknown = sorted(set(resources) - {"cpus", "gpus", "processes"})
  if unknown:
    raise ConfigError("sweep.resources", f"sweep.resources: unknown keys {unknown}; valid "
                      "keys: cpus, gpus, processes")
  f = flag_values
  cpus = f.cpus_per_run if f.cpus_per_run is not None else resources.get("cpus", 1.0)
  gpus = f.gpus_per_run if f.gpus_per_run is not None else resources.get("gpus", 0.0)
  processes = (f.processes_per_run if f.processes_per_run is not None
               else resources.get("processes", 1))
  if processes < 1:
    raise ConfigError("--processes_per_run", f"processes per run must be >= 1, got {processes}")
  if cpus <= 0 or gpus < 0:
    raise ConfigError("--cpus_per_run", f"CPUs per run must be > 0 and GPUs >= 0; got "
                      f"cpus={cpus}, gpus={gpus}")
  if f.max_parallel < 0 or f.slurm_time <= 0:
    raise ConfigError("--max_parallel", f"--max_parallel must be >= 0 and --slurm_time > 0; got "
                      f"{f.max_parallel} and {f.slurm_time}")
  if f.no_wait and f.launcher != "slurm":
    raise ConfigError("--no_wait", "--no_wait returns once a SLURM array is submitted: it needs "
                      "--launcher=slurm")
  return launchers.Settings(
      max_parallel=f.max_parallel, cpus=float(cpus), gpus=float(gpus), processes=int(processes),
      ray_address=f.ray_address, slurm_partition=f.slurm_partition,
      slurm_time_min=f.slurm_time, slurm_cluster=f.slurm_cluster, wait=not f.no_wait,
      folder=os.path.join(os.path.abspath(os.path.expanduser(workdir)), "slurm"))


def check_metric(metric: str | None) -> str | None:
  """``metric`` if the summary can rank by it (None passes).

  Raises:
    ConfigError: naming ``--metric`` and the valid choices.
  """
  if metric is not None and metric not in stats.METRICS_BY_HEADLINE:
    raise ConfigError("--metric", f"--metric={metric!r}: valid choices: "
                      f"{', '.join(stats.METRICS_BY_HEADLINE)}")
  return metric


def default_grid(config: ml_collections.ConfigDict, grid: Sequence[str], points: Sequence[str],
                 seeds: int | None) -> tuple[list[str], list[str], int | None]:
  """The experiment module's own sweep (``config.sweep.grid`` / ``.points`` / ``.seeds``)
  unless flags say otherwise.

  An experiment module that *is* a study (e.g. temperature_sweep.py, r1_table.py)
  carries its grid or points, so ``python -m kd_jax.sweep --config=that.py
  --workdir=DIR`` reproduces it. Flags replace the module's grid and points together.
  """
  own = config.get("sweep")
  if own is None or grid or points:
    return list(grid), list(points), seeds if seeds is not None else (own or {}).get("seeds")
  return (list(own.get("grid", ())), list(own.get("points", ())),
          seeds if seeds is not None else own.get("seeds"))


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # The command's flags (shared with kd_jax.main): defined by the command, not on import.
  from kd_jax.run import process  # noqa: PLC0415
  FLAGS = flags.FLAGS
  check_metric(FLAGS.metric)
  if FLAGS.summarize_only:
    cli.quiet_logging()
    write_summary(FLAGS.workdir, allow_mixed_code=FLAGS.allow_mixed_code, metric=FLAGS.metric)
    return
  if FLAGS.config is None:
    raise app.UsageError("--config is required (unless --summarize_only).")
  metric = check_metric(FLAGS.metric or (FLAGS.config.get("sweep") or {}).get("metric"))
  settings = launch_settings(FLAGS.config, FLAGS.workdir, FLAGS)
  # Several hosts run the same sweep in lockstep, every run on all their devices. (With
  # ray or slurm this process only schedules; the runs start their own processes.)
  process.setup_process()
  grid, point_specs, seeds = default_grid(FLAGS.config, FLAGS.grid, FLAGS.point, FLAGS.seeds)
  names, points = zip(*combine(parse_points(point_specs, FLAGS.config),
                               parse_grid(grid, FLAGS.config)))
  for run in plan_runs(FLAGS.config, points, seeds, names):
    try:  # Every point's values are checked before anything trains.
      validation.validate(run.config)
    except ValueError as e:
      raise ConfigError(None, f"grid point {run.slug}: {e}") from None
  # Each point was validated above and run_sweep checks its workdir: the runs do neither again.
  # (Progress bars only where a terminal shows them: not in Ray or SLURM workers' logs.)
  run_fn = functools.partial(pipeline.execute_run,
                             show_progress=FLAGS.progress and FLAGS.launcher == "local",
                             allow_version_change=FLAGS.allow_version_change)
  run_sweep(FLAGS.config, FLAGS.workdir, points, num_seeds=seeds, names=names,
            teacher_dir=FLAGS.teacher_dir, run_fn=run_fn,
            allow_mixed_code=FLAGS.allow_mixed_code, metric=metric,
            launcher=FLAGS.launcher, settings=settings)


if __name__ == "__main__":
  from kd_jax.run import process as _shared_flags  # noqa: F401  --config, --workdir, ...
  _define_flags()
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, "kd_jax.sweep")
