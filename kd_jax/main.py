r"""Runs one distillation experiment: teacher (trained once, cached), baseline, distilled student.

    python -m kd_jax.main --config=experiments/fashion_mnist/kd.py --workdir=runs/kd \
        [--config.divergence=js --config.temperature.init=8 ...] [--teacher_dir=DIR]

Writes ``WORKDIR/results.json`` (keys: docs/results.md), ``WORKDIR/config.json``
(the config the workdir belongs to), and per phase (``baseline/``, ``student/``)
orbax checkpoints, ``metrics.jsonl`` and TensorBoard events. Re-running with the
same workdir resumes from the latest checkpoints and skips finished phases; a
finished run prints its stored table. A different config in the same workdir is
refused (kd_jax/workdir.py): use a new workdir per config.

Mistakes (an invalid value, an unknown ``--config.*`` field, a missing dataset, a
refused workdir) print one line and exit with status 2.
"""

from __future__ import annotations

import importlib.util
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from kd_jax.config import cli
from kd_jax.core import distributed
from kd_jax.reporting import report
from kd_jax import config as config_lib
from kd_jax.run import workdir as workdir_lib
from kd_jax.run.pipeline import DEFAULT_TEACHER_DIR, execute_run, run_experiment

__all__ = ["execute_run", "run_experiment", "main"]


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment module: path/to/module.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and logs.")
_TEACHER_DIR = flags.DEFINE_string(
    "teacher_dir", DEFAULT_TEACHER_DIR, "Cache of trained teachers, shared by all workdirs.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on the console.")
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "kd_jax", "xla")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache_dir", DEFAULT_COMPILATION_CACHE,
    "JAX's persistent compilation cache, shared by all runs: a rerun, a resumed run and every "
    "sweep point after the first read their compiled programs back. '' turns it off; "
    "JAX_COMPILATION_CACHE_DIR, when set, takes precedence.")
COMPILATION_CACHE_MAX_BYTES = 2**30
distributed.define_flags()


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` ('' leaves it off).

  Every program is cached, not only those that took JAX's default 1 s to
  compile: most of a kd_jax run's start-up is many small compilations (the
  eager model initialisation's ops, the eval step); benchmarks/overhead.py
  measures start-up with an empty and a filled cache. The cache is capped at
  1 GiB (least recently used entries are evicted; the cap needs ``filelock``).
  A directory set through ``JAX_COMPILATION_CACHE_DIR`` is left as it is.
  """
  if not directory or jax.config.jax_compilation_cache_dir:
    return
  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  # JAX refuses to use the cache at all when a size cap is set without filelock
  # (a requirement of kd_jax); uncapped beats silently uncached.
  if importlib.util.find_spec("filelock") is not None:
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
  else:
    logging.warning("filelock is not installed: the compilation cache in %s is not size-capped",
                    directory)


def setup_process() -> None:
  """What every kd_jax command does first: logging, the compilation cache, multi-host init."""
  cli.quiet_logging()
  enable_compilation_cache(_COMPILATION_CACHE.value)
  distributed.initialize_from_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything touches a JAX device: jax.distributed must start first.
  setup_process()
  config = _CONFIG.value
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  finished = workdir_lib.finished_results(workdir, config)
  if finished is not None:     # answers without loading data, models or JAX programs
    if jax.process_index() == 0:
      print(f"{workdir} holds this config's finished run (finished "
            f"{finished.get('timing', {}).get('finished_at', 'earlier')}); nothing was run. "
            "Its results:")
      print(report.summary_table(finished, recorded=True))
      print(report.where_to_look(workdir, finished))
    return
  # Validated and checked against the workdir's record above: the pipeline does neither again.
  results = execute_run(config, workdir, teacher_dir=_TEACHER_DIR.value,
                        show_progress=_PROGRESS.value)
  if jax.process_index() == 0:
    print(report.summary_table(results))
    print(report.where_to_look(workdir, results))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main, "kd_jax.main")
