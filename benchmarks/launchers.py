r"""What a sweep launcher costs: the 4-run smoke sweep with the local launcher and with Ray.

    python benchmarks/launchers.py [--max_parallel 2] [--compilation_cache]

The sweep is experiments/fashion_mnist/kd.py:smoke over ``temperature.init=1,4`` × 2 seeds.
Its teacher is trained once beforehand and copied into a fresh cache for each launcher
(each then trains its own baselines, as a fresh sweep would). Measured:

* ``sweep_seconds`` — wall time of ``sweep.run_sweep`` with ``--launcher=local`` (one run
  after another in this process) and with ``--launcher=ray`` at ``--max_parallel`` runs in
  flight on a local Ray instance (its start-up, ``ray_start_seconds``, is not included).
* ``overhead_seconds_per_run`` — per run, the time between the sweep handing it out and
  seeing it finish, less the run's own time inside its worker (``sweep.json``'s
  ``started_at``, ``finished_at`` and ``seconds``): scheduling, the worker's start
  (a first wave of Ray workers imports JAX and kd_jax) and the result's return. Target
  for Ray: ≤ 2 s per run.

Writes ``benchmarks/results/launchers.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("KD_JAX_DATA_SOURCE", "idx")

from benchmarks import common  # noqa: E402
from kd_jax import sweep  # noqa: E402
from kd_jax.config import cli  # noqa: E402
from kd_jax.core import compilation_cache  # noqa: E402
from kd_jax.run import launchers, pipeline  # noqa: E402

CONFIG = os.path.join(ROOT, "experiments", "fashion_mnist", "kd.py:smoke")
GRID = ["temperature.init=1,4"]
SEEDS = 2
OVERHEAD_TARGET_SECONDS = 2.0


def _sweep(config, root: str, teachers: str, launcher: str, settings) -> dict:
  """One timed sweep in ``root`` with a copy of the warmed teacher cache."""
  teacher_dir = os.path.join(root, "teachers")
  shutil.copytree(teachers, teacher_dir)
  workdir = os.path.join(root, "sweep")
  run_fn = functools.partial(pipeline.execute_run, show_progress=False)
  began = time.perf_counter()
  sweep.run_sweep(config, workdir, sweep.parse_grid(GRID, config), num_seeds=SEEDS,
                  teacher_dir=teacher_dir, run_fn=run_fn, launcher=launcher, settings=settings)
  wall = time.perf_counter() - began
  with open(os.path.join(workdir, "sweep.json")) as f:
    runs = json.load(f)["runs"]
  overheads = [r["finished_at"] - r["started_at"] - r["seconds"] for r in runs]
  return {"sweep_seconds": wall, "run_seconds": [r["seconds"] for r in runs],
          "overhead_seconds_per_run": overheads,
          "overhead_seconds_median": statistics.median(overheads),
          "statuses": [r["status"] for r in runs]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--max_parallel", type=int, default=2)
  parser.add_argument("--compilation_cache", action="store_true")
  args = parser.parse_args()
  import ray  # noqa: PLC0415
  config = cli.load_config_file(CONFIG)
  scratch = tempfile.mkdtemp(prefix="kd_jax_launchers_")
  if args.compilation_cache:
    compilation_cache.enable(os.path.join(scratch, "xla"))
  try:
    teachers = os.path.join(scratch, "warm", "teachers")
    print("training the smoke teacher once ...", flush=True)
    warm = cli.load_config_file(CONFIG)
    warm.baseline = False
    pipeline.execute_run(warm, os.path.join(scratch, "warm", "run"), teacher_dir=teachers,
                         show_progress=False)
    results = {"local": _sweep(config, os.path.join(scratch, "local"), teachers, "local",
                               launchers.Settings())}
    began = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    ray_start = time.perf_counter() - began
    try:
      results["ray"] = _sweep(config, os.path.join(scratch, "ray"), teachers, "ray",
                              launchers.Settings(max_parallel=args.max_parallel))
    finally:
      ray.shutdown()
    results["ray"]["ray_start_seconds"] = ray_start
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  ray_overhead = max(results["ray"]["overhead_seconds_per_run"])
  rows = []
  for name, r in results.items():
    rows += [(f"{name}: sweep wall (s)", r["sweep_seconds"]),
             (f"{name}: run seconds (median)", statistics.median(r["run_seconds"])),
             (f"{name}: overhead per run (median s)", r["overhead_seconds_median"]),
             (f"{name}: overhead per run (max s)", max(r["overhead_seconds_per_run"]))]
  rows.append(("ray: start of the local instance (s)", results["ray"]["ray_start_seconds"]))
  rows.append(("ray: worst run's overhead", ray_overhead,
               common.target(ray_overhead, OVERHEAD_TARGET_SECONDS)))
  common.print_table(f"4-run smoke sweep, local vs Ray ({args.max_parallel} in flight)", rows)
  path = common.write_results("launchers", {"max_parallel": args.max_parallel, "grid": GRID,
                                            "seeds": SEEDS, "config": CONFIG,
                                            "compilation_cache": args.compilation_cache,
                                            **results},
                              tag="cached" if args.compilation_cache else "")
  print(f"\nwrote {path}")


if __name__ == "__main__":
  main()
