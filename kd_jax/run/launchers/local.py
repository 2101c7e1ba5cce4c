"""``--launcher=local``: every run in this process, one after another (the default)."""

from __future__ import annotations

from collections.abc import Sequence

from kd_jax.run.launchers.jobs import Events, Job, RunFn, Settings, execute


def launch(jobs: Sequence[Job], run_fn: RunFn, settings: Settings, events: Events,
           *, storage: dict[str, str | None] | None = None) -> bool:
  """Runs the jobs in order; returns True (all finished). ``settings`` and ``storage``
  are not used: this process sees what it writes."""
  del settings, storage
  for job in jobs:
    events.started(job, "local")
    events.finished(job, execute(job, run_fn))
  return True
