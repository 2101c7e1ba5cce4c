r"""Runs one distillation experiment: teacher (trained once, cached), baseline, distilled student.

    python -m kd_jax.main --config=experiments/fashion_mnist/kd.py --workdir=runs/kd \
        [--config.divergence=js --config.temperature.init=8 ...] [--teacher_dir=DIR]

Writes ``WORKDIR/results.json`` (keys in DESIGN.md §2.4), and per phase
(``baseline/``, ``student/``) orbax checkpoints, ``metrics.jsonl`` and
TensorBoard events. Re-running with the same workdir resumes from the latest
checkpoints and skips finished phases.
"""

from __future__ import annotations

import importlib.util
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from kd_jax import config as config_lib
from kd_jax import distributed
from kd_jax.experiment import DEFAULT_TEACHER_DIR, run_experiment

__all__ = ["run_experiment", "main"]


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


def quiet_logging() -> None:
  """WARNING and above unless --verbosity is given: orbax and TFDS log every save and
  read at INFO, which buries the progress bar. ``--verbosity=0`` brings them back."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in ``directory`` ('' leaves it off).

  Every program is cached, not only those that took JAX's default 1 s to
  compile: most of a kd_jax run's start-up is many small compilations (the
  eager model initialisation's ops, the eval step). Measured on a 2-core CPU
  (benchmarks/overhead.py, ``cold_start_seconds`` / ``warm_start_seconds``,
  7 runs): a fresh process reaches its first KD step in 6.1–8.6 s with an
  empty cache and 2.6–3.5 s with a filled one. The cache is capped at 1 GiB
  (least recently used entries are evicted; the cap needs ``filelock``). A directory set through ``JAX_COMPILATION_CACHE_DIR``
  is left as it is.
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
  quiet_logging()
  enable_compilation_cache(_COMPILATION_CACHE.value)
  distributed.initialize_from_flags()


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  setup_process()
  config = _CONFIG.value
  config_lib.validate(config)
  results = run_experiment(config, _WORKDIR.value, teacher_dir=_TEACHER_DIR.value,
                           show_progress=_PROGRESS.value)
  if jax.process_index() == 0:
    print(summary_table(results))


def summary_table(results: dict) -> str:
  """The console table: params, test accuracy, agreement with the teacher, KD gain."""
  rows = [("teacher", results["teacher"])]
  if "baseline" in results:
    rows.append(("student (from scratch)", results["baseline"]))
  rows.append((f"student ({results['config']['method']})", results["student"]))
  lines = [f"{'model':<26}{'params':>10}{'test acc':>10}{'best acc':>10}{'agree':>8}{'ECE':>7}",
           "-" * 71]
  for label, r in rows:
    agree = f"{r['agreement']:.3f}" if "agreement" in r else "-"
    best = f"{r['best_test_accuracy']:.2%}" if "best_test_accuracy" in r else "-"
    lines.append(f"{label:<26}{r['params']:>10,}{r['test_accuracy']:>10.2%}{best:>10}"
                 f"{agree:>8}{r['ece']:>7.3f}")
  if "baseline" in results:
    gain = results["student"]["test_accuracy"] - results["baseline"]["test_accuracy"]
    lines.append(f"KD gain (final-step accuracy, student − from scratch): {gain * 100:+.2f} points")
  timing = results["timing"]
  lines.append(f"student training: {timing['train_seconds']:.1f} s, "
               f"{timing['steps_per_second']:.1f} steps/s; whole run {timing['total_seconds']:.1f} s")
  return "\n".join(lines)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
