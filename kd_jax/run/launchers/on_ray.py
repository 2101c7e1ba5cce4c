"""``--launcher=ray``: every run a Ray task, on a local instance or a cluster.

The sweep's process is the Ray driver: it connects to ``--ray_address`` (else
``RAY_ADDRESS``, else it starts a local instance, stopped at the end), keeps at most
``max_parallel`` runs in flight, and records each as it finishes. Each task asks for the
run's ``cpus`` and ``gpus``; runs that share a GPU (a fraction) get
``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so that JAX does not claim the whole GPU in each.
A run whose worker dies (killed, out of memory, a lost node) is started again by Ray up to
``retries`` times and resumes from its checkpoint; one that raises is a failed run, not
retried. Workers are reused between runs (no fresh JAX import per run).

Every machine of the cluster needs kd_jax installed (as on the driver) and the sweep
directory on storage they all see. The driver's ``KD_JAX_*`` environment variables are
passed to the tasks.

Ray itself is an optional extra: ``pip install 'kd_jax[ray]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kd_jax.core.errors import ConfigError
from kd_jax.run.launchers.jobs import (Events, Job, RunFn, Settings, check_shared_storage,
                                       execute)


def ray_module():
  """``ray``, or a ConfigError saying how to install it."""
  try:
    import ray  # noqa: PLC0415  (an optional extra)
  except ImportError:
    raise ConfigError("--launcher", "--launcher=ray needs Ray: pip install 'kd_jax[ray]'"
                      ) from None
  return ray


def task_environment(gpus: float, environ=os.environ) -> dict[str, str]:
  """The environment variables every task gets: the driver's ``KD_JAX_*``, and no GPU
  preallocation when runs share a GPU."""
  env = {k: v for k, v in environ.items() if k.startswith("KD_JAX_")}
  if 0 < gpus < 1:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  return env


def launch(jobs: Sequence[Job], run_fn: RunFn, settings: Settings, events: Events,
           *, storage: dict[str, str | None] | None = None) -> bool:
  """Runs the jobs as Ray tasks; returns True once every one has finished.

  ``storage``: the flags' paths every worker must see; node-local ones are refused once
  the cluster turns out to have several machines, before anything is submitted
  (:func:`check_shared_storage`; relative ones were refused before connecting).
  """
  ray = ray_module()
  started_here = not ray.is_initialized()
  if started_here:
    address = settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
  try:
    machines = sum(1 for node in ray.nodes() if node.get("Alive"))
    check_shared_storage("ray", storage or {}, several_machines=machines > 1)
    env = task_environment(settings.gpus)
    remote = ray.remote(execute)
    options = dict(num_cpus=settings.cpus, num_gpus=settings.gpus, max_retries=settings.retries,
                   **({"runtime_env": {"env_vars": env}} if env else {}))
    limit = settings.max_parallel or max(
        1, int(ray.cluster_resources().get("CPU", 1) // max(settings.cpus, 1e-9)))
    pending, in_flight = list(jobs), {}
    while pending or in_flight:
      while pending and len(in_flight) < limit:
        job = pending.pop(0)
        in_flight[remote.options(name=job.name, **options).remote(job, run_fn)] = job
        events.started(job, "ray")
      done, _ = ray.wait(list(in_flight), num_returns=1)
      for ref in done:
        job = in_flight.pop(ref)
        try:
          outcome = ray.get(ref)
        except ray.exceptions.RayError as e:   # its worker died more often than retries
          outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        events.finished(job, outcome)
  finally:
    if started_here:
      ray.shutdown()
  return True
