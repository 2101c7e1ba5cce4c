r"""Runs one distillation experiment: teacher (trained once, cached), baseline, distilled student.

    python -m kd_jax.main --config=experiments/fashion_mnist/kd.py --workdir=runs/kd \
        [--config.divergence=js --config.temperature.init=8 ...] [--teacher_dir=DIR]

Writes ``WORKDIR/results.json`` (keys: docs/results.md), ``WORKDIR/config.json``
(the config the workdir belongs to), and per phase (``baseline/``, ``student/``)
orbax checkpoints, ``metrics.jsonl`` and TensorBoard events. Re-running with the
same workdir resumes from the latest checkpoints and skips finished phases; a
finished run prints its stored table. A different config in the same workdir is
refused (kd_jax/run/workdir.py): use a new workdir per config.

Mistakes (an invalid value, an unknown ``--config.*`` field, a missing dataset, a
refused workdir) print one line and exit with status 2.
"""

from __future__ import annotations

import os

import jax
from absl import app, flags

from kd_jax.config import cli
from kd_jax.reporting import report
from kd_jax.run import validation
from kd_jax.run import workdir as workdir_lib
from kd_jax.run.pipeline import execute_run, run_experiment
from kd_jax.run.process import (ALLOW_VERSION_CHANGE, CONFIG, PROGRESS, TEACHER_DIR, WORKDIR,
                                setup_process)

__all__ = ["execute_run", "run_experiment", "main", "setup_process"]


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Before anything touches a JAX device: jax.distributed must start first.
  setup_process()
  config = CONFIG.value
  validation.validate(config)
  workdir = os.path.abspath(os.path.expanduser(WORKDIR.value))
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
  results = execute_run(config, workdir, teacher_dir=TEACHER_DIR.value,
                        show_progress=PROGRESS.value,
                        allow_version_change=ALLOW_VERSION_CHANGE.value)
  if jax.process_index() == 0:
    print(report.summary_table(results))
    print(report.where_to_look(workdir, results))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main, "kd_jax.main")
