"""What every kd_jax command shares: its flags and the set-up of its process.

``kd_jax.main`` and ``kd_jax.sweep`` define the same ``--config``, ``--workdir``,
``--teacher_dir``, ``--progress``, ``--allow_version_change``, ``--compilation_cache_dir``
and multi-host flags
(:mod:`kd_jax.core.distributed`) by importing this module, and call
:func:`setup_process` before anything touches a JAX device: ``jax.distributed`` must
start first.
"""

from __future__ import annotations

import importlib.util
import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from kd_jax.config import cli
from kd_jax.core import distributed
from kd_jax.run.pipeline import DEFAULT_TEACHER_DIR

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment module: path/to/module.py[:arg].", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and logs.")
TEACHER_DIR = flags.DEFINE_string(
    "teacher_dir", DEFAULT_TEACHER_DIR, "Cache of trained teachers, shared by all workdirs.")
PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on the console.")
ALLOW_VERSION_CHANGE = flags.DEFINE_bool(
    "allow_version_change", False,
    "Resume a run whose workdir records other versions of jax, jaxlib, flax, optax, orbax or "
    "numpy (refused by default: its checkpoints would continue under other numerics).")
DEFAULT_COMPILATION_CACHE = os.path.join("~", ".cache", "kd_jax", "xla")
COMPILATION_CACHE = flags.DEFINE_string(
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
  enable_compilation_cache(COMPILATION_CACHE.value)
  distributed.initialize_from_flags()
