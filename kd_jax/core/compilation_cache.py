"""JAX's persistent compilation cache, as every kd_jax process turns it on (the commands,
and the workers of a Ray or SLURM sweep)."""

from __future__ import annotations

import importlib.util
import os

import jax
from absl import logging

COMPILATION_CACHE_MAX_BYTES = 2**30


def enable(directory: str) -> None:
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
