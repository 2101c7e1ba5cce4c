"""Where a sweep's runs execute (DESIGN §10): ``python -m kd_jax.sweep --launcher=...``.

* ``local`` (the default): in the sweep's process, one after another.
* ``ray``: Ray tasks on a local instance or a cluster (:mod:`.on_ray`).
* ``slurm``: one SLURM job array through submitit (:mod:`.on_slurm`).

Whatever the launcher, every point × seed is an ordinary run in its own sub-workdir
(:func:`kd_jax.run.launchers.jobs.execute`): finished runs are skipped, interrupted ones
resume from their checkpoints, a failing one is recorded and the others go on, and the
summary is written by the same code. Ray and SLURM need the sweep directory (and the
teacher cache) on storage every worker sees.
"""

from __future__ import annotations

from kd_jax.core.errors import ConfigError
from kd_jax.run.launchers import local, on_ray, on_slurm
from kd_jax.run.launchers.jobs import (Events, Job, Settings, check_shared_storage,  # noqa: F401
                                       execute, is_primary, read_outcome)

LAUNCHERS = {"local": local.launch, "ray": on_ray.launch, "slurm": on_slurm.launch}


def check(launcher: str, settings: Settings, storage: dict[str, str | None]) -> None:
  """What a launcher needs, checked before the sweep writes anything: its library, and
  ``storage`` (flag → path) that its workers can see (a Ray cluster's size is only known
  once connected: :mod:`.on_ray` checks node-local paths then).

  Raises:
    ConfigError: naming the flag and the valid choices.
  """
  if launcher not in LAUNCHERS:
    raise ConfigError("--launcher", f"--launcher={launcher!r}: valid choices: "
                      f"{', '.join(LAUNCHERS)}")
  if settings.processes > 1 and launcher != "ray":
    raise ConfigError("--processes_per_run", f"--launcher={launcher} runs each point as one "
                      "process; several processes per run need --launcher=ray (a single run: "
                      "srun python -m kd_jax.main, docs/scale_out.md)")
  if launcher == "local":
    return
  several = launcher == "slurm" and settings.slurm_cluster == "slurm"
  check_shared_storage(launcher, storage, several_machines=several)
  if launcher == "slurm":
    on_slurm.check(settings)
  else:
    on_ray.ray_module()
