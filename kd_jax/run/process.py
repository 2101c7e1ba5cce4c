"""What every kd_jax command shares: its flags and the set-up of its process.

``kd_jax.main`` and ``kd_jax.sweep`` define the same ``--config``, ``--workdir``,
``--teacher_dir``, ``--progress``, ``--allow_version_change``, ``--compilation_cache_dir``
and multi-host flags
(:mod:`kd_jax.core.distributed`) by importing this module, and call
:func:`setup_process` before anything touches a JAX device: ``jax.distributed`` must
start first.
"""

from __future__ import annotations

import os

from absl import flags
from ml_collections import config_flags

from kd_jax.config import cli
from kd_jax.core import compilation_cache, distributed
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
distributed.define_flags()


def setup_process() -> None:
  """What every kd_jax command does first: logging, the compilation cache, multi-host init."""
  cli.quiet_logging()
  compilation_cache.enable(COMPILATION_CACHE.value)
  distributed.initialize_from_flags()
