"""``--launcher=slurm``: the sweep's runs as one SLURM job array, through submitit.

One array task per run, each asking for the run's ``cpus`` (``--cpus-per-task``) and
``gpus`` (``--gpus-per-node``), ``slurm_time_min`` minutes and ``slurm_partition``; the
array's parallelism is ``max_parallel`` (``--array=0-N%P``). The sweep command then waits
for the array and records each run as it finishes, or with ``wait=False`` returns at once:
``python -m kd_jax.sweep --summarize_only --workdir=...`` later tabulates what finished.
Running the sweep command again submits the runs that are not done, except those whose
task of an earlier array is still pending or running (``sacct``).
submitit keeps its scripts and logs in ``<workdir>/slurm``.

``slurm_cluster="local"`` (or ``"debug"``) runs the same array on this machine with
submitit's local (in-process) executor: a way to try a sweep's SLURM path without SLURM.

submitit is an optional extra: ``pip install 'kd_jax[slurm]'``.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence

from absl import logging

from kd_jax.core.errors import ConfigError
from kd_jax.run.launchers.jobs import Events, Job, RunFn, Settings, execute

CLUSTERS = ("slurm", "local", "debug")
# sacct states of a task that has not ended: its run must not be submitted a second time.
NOT_ENDED = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
             "SUSPENDED")


def _submitit():
  try:
    import submitit  # noqa: PLC0415  (an optional extra)
  except ImportError:
    raise ConfigError("--launcher", "--launcher=slurm needs submitit: pip install "
                      "'kd_jax[slurm]'") from None
  return submitit


def check(settings: Settings) -> None:
  """What can be checked before anything is written: the cluster choice, ``sbatch`` for a
  real one, submitit itself and whole GPUs.

  Raises:
    ConfigError: naming the flag.
  """
  if settings.slurm_cluster not in CLUSTERS:
    raise ConfigError("--slurm_cluster", f"--slurm_cluster={settings.slurm_cluster!r}: valid "
                      f"choices: {', '.join(CLUSTERS)}")
  if settings.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
    raise ConfigError("--launcher", "--launcher=slurm submits with sbatch, which is not on "
                      "PATH here (run the sweep on a SLURM login node, or try the array on "
                      "this machine with --slurm_cluster=local)")
  _submitit()
  if settings.gpus != int(settings.gpus):
    raise ConfigError("--gpus_per_run", f"SLURM gives whole GPUs: gpus per run {settings.gpus} "
                      "must be an integer (fractions are for --launcher=ray)")


def executor(settings: Settings, num_jobs: int):
  """The submitit executor of the array, its resources set (:func:`check` first)."""
  check(settings)
  ex = _submitit().AutoExecutor(folder=settings.folder, cluster=settings.slurm_cluster)
  gpus = settings.gpus
  ex.update_parameters(name="kd_jax.sweep", timeout_min=settings.slurm_time_min,
                       cpus_per_task=max(1, int(round(settings.cpus))), tasks_per_node=1,
                       nodes=1, **({"gpus_per_node": int(gpus)} if gpus else {}))
  if settings.slurm_cluster == "slurm":
    ex.update_parameters(slurm_array_parallelism=settings.max_parallel or num_jobs,
                         **({"slurm_partition": settings.slurm_partition}
                            if settings.slurm_partition else {}))
  return ex


def _still_in_the_queue(job: Job, settings: Settings) -> bool:
  """Whether an earlier command's array task for ``job`` is still pending or running (asked
  of ``sacct``): then it is left alone, not submitted again into the same directory."""
  if settings.slurm_cluster != "slurm" or not job.previous.startswith("slurm:"):
    return False
  job_id = job.previous.split(":", 1)[1]
  state = _submitit().SlurmJob(folder=settings.folder, job_id=job_id).state
  if state.split()[0] in NOT_ENDED:
    logging.warning("%s is still %s as SLURM task %s: not submitted again", job.name, state,
                    job_id)
    return True
  return False


def launch(jobs: Sequence[Job], run_fn: RunFn, settings: Settings, events: Events,
           *, storage: dict[str, str | None] | None = None) -> bool:
  """Submits the jobs as one array; returns whether they all finished (False: not waited
  for). ``storage`` was checked by :func:`kd_jax.run.launchers.check`."""
  del storage
  jobs = [job for job in jobs if not _still_in_the_queue(job, settings)]
  if not jobs:
    return True
  ex = executor(settings, len(jobs))
  submitted = ex.map_array(execute, list(jobs), [run_fn] * len(jobs))
  by_id = {}
  for job, task in zip(jobs, submitted):
    by_id[task.job_id] = job
    events.started(job, f"slurm:{task.job_id}")
  if not settings.wait:
    return False
  submitit = _submitit()
  for task in submitit.helpers.as_completed(submitted):
    try:
      outcome = task.result()
    except Exception as e:  # pylint: disable=broad-except  (the task died: time, memory, node)
      outcome = {"status": "failed", "error": f"{type(e).__name__}: {str(e)[-500:]}"}
    events.finished(by_id[task.job_id], outcome)
  return True
