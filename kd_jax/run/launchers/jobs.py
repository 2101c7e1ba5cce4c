"""What every launcher shares: a sweep's run as a :class:`Job`, its execution where it lands
(:func:`execute`), the launch settings, and the shared-storage check.

A job carries everything its run needs (the config, its own sub-workdir, the teacher
cache), so it runs the same in this process, in a Ray worker or in a SLURM task: it is an
ordinary run of :func:`kd_jax.run.pipeline.execute_run`, which resumes from the
checkpoints in its sub-workdir.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import traceback
from collections.abc import Callable
from typing import Protocol

import jax
import ml_collections

from kd_jax.core import compilation_cache, files
from kd_jax.core.errors import ConfigError

WORKER_FILE = "worker.json"      # where (host, pid) a job is running, written as it starts
OUTCOME_FILE = "outcome.json"    # how it ended, for a sweep that did not wait for it
# Directories that are local to one machine on every cluster we know of.
NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm", "/run/user")


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of a sweep: ``index`` into the sweep's runs, its ``name`` (``point/seedN``),
  its ``config``, its absolute sub-workdir ``run_dir``, the ``teacher_dir`` cache, the
  sweep's JAX ``compilation_cache_dir`` ('' none), which a worker turns on too, and where
  an earlier command of the sweep handed it out (``previous``: ``slurm:<job id>``, or '')."""
  index: int
  name: str
  config: ml_collections.ConfigDict
  run_dir: str
  teacher_dir: str | None = None
  compilation_cache_dir: str = ""
  previous: str = ""


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a launcher runs the jobs (``python -m kd_jax.sweep`` flags; DESIGN §10).

  Attributes:
    max_parallel: runs in flight at once (Ray), the job array's parallelism (SLURM);
      0: as many as the resources allow (Ray: the cluster's CPUs / ``cpus``), no limit
      (SLURM).
    cpus, gpus: per process of a run (``config.sweep.resources``); ``gpus`` may be a
      fraction on Ray (runs then share a GPU, with ``XLA_PYTHON_CLIENT_PREALLOCATE=false``).
    processes: JAX processes per run (Ray only: one task each, placed together).
    retries: Ray: how often a run whose worker died is started again (it resumes from
      its checkpoint).
    ray_address: the Ray cluster (None: ``RAY_ADDRESS``, else a local instance).
    slurm_partition, slurm_time_min: the array's partition (None: the site's default)
      and time limit per run, in minutes.
    slurm_cluster: ``slurm`` (sbatch), or ``local``/``debug``: submitit's executors that
      run the same array on this machine.
    wait: wait for the SLURM array (False: return once it is submitted).
    folder: where submitit keeps its scripts, pickles and logs.
  """
  max_parallel: int = 0
  cpus: float = 1.0
  gpus: float = 0.0
  processes: int = 1
  retries: int = 3
  ray_address: str | None = None
  slurm_partition: str | None = None
  slurm_time_min: int = 60
  slurm_cluster: str = "slurm"
  wait: bool = True
  folder: str = ""


class Events(Protocol):
  """The sweep's record, told what happens to each job (called in the sweep's process)."""

  def started(self, job: Job, where: str) -> None: ...

  def finished(self, job: Job, outcome: dict) -> None: ...


RunFn = Callable[..., dict]


def is_primary() -> bool:
  """Whether this process writes a sweep's and a run's files: the only one, or process 0
  of several."""
  return jax.process_index() == 0


def execute(job: Job, run_fn: RunFn) -> dict:
  """Runs ``job`` here (this process, a Ray worker or a SLURM task) and returns its outcome:
  ``status`` ``done`` or ``failed`` (with ``error`` and the ``traceback``'s tail),
  ``seconds`` and ``host``. A run that raises is a failed outcome, not an exception: one
  bad point must not cost the rest of the sweep (``KeyboardInterrupt`` still stops it).

  ``run_fn(config, workdir, *, teacher_dir)`` writes ``results.json`` or returns the dict,
  which is then written here.
  """
  compilation_cache.enable(job.compilation_cache_dir)   # (already on in the sweep's process)
  os.makedirs(job.run_dir, exist_ok=True)
  outcome_path = os.path.join(job.run_dir, OUTCOME_FILE)
  host = socket.gethostname()
  if is_primary():
    if os.path.exists(outcome_path):
      os.remove(outcome_path)
    files.write_json(os.path.join(job.run_dir, WORKER_FILE),
                     {"host": host, "pid": os.getpid(), "started": time.time()})
  start = time.time()
  try:
    results = run_fn(job.config, job.run_dir, teacher_dir=job.teacher_dir)
    results_path = os.path.join(job.run_dir, "results.json")
    if not os.path.exists(results_path) and is_primary():
      files.write_json(results_path, results, indent=1)
    outcome = {"status": "done"}
  except Exception as e:  # pylint: disable=broad-except
    outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}",
               "traceback": "".join(traceback.format_exc().splitlines(True)[-20:])}
  outcome.update(seconds=round(time.time() - start, 3), host=host)
  if is_primary():
    files.write_json(outcome_path, outcome, indent=1)
  return outcome


def read_outcome(run_dir: str) -> dict | None:
  """The outcome :func:`execute` left in ``run_dir``, or None."""
  return files.read_json(os.path.join(run_dir, OUTCOME_FILE))


def check_shared_storage(launcher: str, paths: dict[str, str | None], *, several_machines: bool
                         ) -> None:
  """The sweep directory (and the teacher cache) must be where every worker sees it.

  ``paths``: flag name → path (None: unset). A relative path is refused (each worker would
  resolve it against its own directory); with ``several_machines``, so is a path under a
  directory that is local to each machine (:data:`NODE_LOCAL`).

  Raises:
    ConfigError: naming the flag and why.
  """
  for flag, path in paths.items():
    if path is None:
      continue
    if not os.path.isabs(os.path.expanduser(path)):
      raise ConfigError(flag, f"{flag}={path} is relative, but --launcher={launcher} runs on "
                        "workers that resolve it from their own directory: give an absolute "
                        f"path on storage every worker sees (e.g. {flag}=$PWD/{path})")
    real = os.path.realpath(os.path.expanduser(path))
    local = next((d for d in NODE_LOCAL if real == d or real.startswith(d + "/")), None)
    if several_machines and local:
      raise ConfigError(flag, f"{flag}={path} is under {local}, which is local to each "
                        f"machine, but --launcher={launcher} runs on several machines: use "
                        "storage they all see (NFS, a shared home or scratch)")
