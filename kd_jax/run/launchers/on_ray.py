"""``--launcher=ray``: every run a Ray task, on a local instance or a cluster.

The sweep's process is the Ray driver: it connects to ``--ray_address`` (else
``RAY_ADDRESS``, else it starts a local instance, stopped at the end), keeps at most
``max_parallel`` runs in flight, and records each as it finishes. Each task asks for the
run's ``cpus`` and ``gpus``; runs that share a GPU (a fraction) get
``XLA_PYTHON_CLIENT_PREALLOCATE=false``, so that JAX does not claim the whole GPU in each.
A run whose worker dies (killed, out of memory, a lost node) is started again by Ray up to
``retries`` times and resumes from its checkpoint; one that raises is a failed run, not
retried. Workers are reused between runs (no fresh JAX import per run).

A run of ``processes`` > 1 (``--processes_per_run``) is one Ray task per process, placed
together (a placement group); each starts ``jax.distributed`` with process 0's node as the
coordinator, in a fresh worker, and the run goes on as a multi-process run does anywhere
(DESIGN §10; docs/scale_out.md). Such a run is not retried piecemeal: if one process is
lost, the others are stopped and the run is recorded as failed; the sweep command run
again resumes it from its checkpoint.

Every machine of the cluster needs kd_jax installed (as on the driver) and the sweep
directory on storage they all see. The driver's ``KD_JAX_*`` environment variables are
passed to the tasks.

Ray itself is an optional extra: ``pip install 'kd_jax[ray]'``.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import time
from collections.abc import Sequence
from typing import Any

from kd_jax.core import distributed
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


def run_process(job: Job, run_fn: RunFn, coordinator: str, processes: int, index: int) -> dict:
  """Process ``index`` of a multi-process run, in a fresh worker: ``jax.distributed`` starts
  before anything touches a device, then the run goes as everywhere else (process 0
  writes its files)."""
  distributed.initialize(coordinator, processes, index)
  return execute(job, run_fn)


@dataclasses.dataclass
class _Running:
  """A run in flight: its tasks (one per process), those not yet returned, and the
  placement group that keeps a multi-process run's processes together."""
  job: Job
  refs: list
  waiting: set
  group: Any = None
  outcome: dict | None = None


def _coordinator(ray, group) -> str:
  """``host:port`` for process 0 of a multi-process run: the node of its first bundle, and
  a port free there (probed when that node is this one; otherwise a random high port)."""
  node_id = ray.util.placement_group_table(group)["bundles_to_node_id"][0]
  host = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
  if host == ray.util.get_node_ip_address():
    with socket.socket() as probe:
      probe.bind((host, 0))
      return f"{host}:{probe.getsockname()[1]}"
  return f"{host}:{random.randint(20000, 60000)}"


def _submit(ray, job: Job, run_fn: RunFn, settings: Settings, options: dict,
            remote) -> _Running:
  """Hands ``job`` to Ray: ``remote`` is :func:`execute` (one process) or
  :func:`run_process` (several), made remote once per sweep."""
  if settings.processes == 1:
    ref = remote.options(name=job.name, max_retries=settings.retries,
                         **options).remote(job, run_fn)
    return _Running(job, [ref], {ref})
  # Several processes: scheduled together, each in a worker of its own (a worker that has
  # run JAX cannot join a jax.distributed job); one lost process fails the run, which the
  # next sweep command resumes from its checkpoint.
  from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: PLC0415
  bundle = {"CPU": settings.cpus, **({"GPU": settings.gpus} if settings.gpus else {})}
  group = ray.util.placement_group([bundle] * settings.processes, strategy="PACK")
  ray.get(group.ready())
  coordinator = _coordinator(ray, group)
  env = options.get("runtime_env", {}).get("env_vars", {})
  refs = []
  for i in range(settings.processes):
    # A runtime environment of its own starts a worker of its own: a pooled worker that
    # has run JAX already could not start jax.distributed.
    fresh = {"env_vars": {**env, "KD_JAX_RUN_PROCESS": f"{job.name}#{i}@{time.time()}"}}
    refs.append(remote.options(
        name=f"{job.name}#{i}", max_retries=0, runtime_env=fresh,
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=i),
        **{k: v for k, v in options.items() if k != "runtime_env"}
    ).remote(job, run_fn, coordinator, settings.processes, i))
  return _Running(job, refs, set(refs), group)


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
    options = dict(num_cpus=settings.cpus, num_gpus=settings.gpus,
                   **({"runtime_env": {"env_vars": env}} if env else {}))
    # (a worker that ran a process of a multi-process run is not reused: max_calls=1)
    remote = (ray.remote(execute) if settings.processes == 1
              else ray.remote(max_calls=1)(run_process))
    per_run = max(settings.cpus, 1e-9) * settings.processes
    limit = settings.max_parallel or max(
        1, int(ray.cluster_resources().get("CPU", 1) // per_run))
    pending, by_ref = list(jobs), {}
    while pending or by_ref:
      while pending and len({id(r) for r in by_ref.values()}) < limit:
        running = _submit(ray, pending.pop(0), run_fn, settings, options, remote)
        by_ref.update({ref: running for ref in running.refs})
        events.started(running.job, "ray")
      done, _ = ray.wait(list(by_ref), num_returns=1)
      for ref in done:
        running = by_ref.pop(ref)
        running.waiting.discard(ref)
        try:
          outcome = ray.get(ref)
        except ray.exceptions.RayError as e:   # its worker died (more often than retries)
          outcome = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
        failed = outcome["status"] == "failed"
        if failed:                              # the other processes cannot go on alone
          for other in running.waiting:
            ray.cancel(other, force=True)
            by_ref.pop(other, None)
          running.waiting.clear()
        if failed or (ref is running.refs[0] and running.outcome is None):
          running.outcome = outcome             # (process 0's, unless one failed)
        if not running.waiting:
          if running.group is not None:
            ray.util.remove_placement_group(running.group)
          events.finished(running.job, running.outcome)
  finally:
    if started_here:
      ray.shutdown()
  return True
