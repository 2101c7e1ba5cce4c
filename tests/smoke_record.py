r"""Records (or compares) the numbers of every experiment module's ``:smoke`` run.

    python tests/smoke_record.py --out=tests/fixtures/smoke_record.json
    python tests/smoke_record.py --compare=tests/fixtures/smoke_record.json

A refactoring that is "a move, not a rewrite" must leave every result as it was. This
script runs each experiment module's ``:smoke`` config through the command line
(``kd_jax.main``, or ``kd_jax.sweep`` for a module that carries its own sweep) in a fresh
teacher cache, reads every ``results.json`` it wrote and keeps the numbers, strings and
flags that a run computes, less what depends on the clock, the machine or the paths
(:data:`VOLATILE`). ``--compare`` runs the same and lists every value that differs from
the record; it exits with status 1 when any does. Run both on the same machine: XLA's
CPU programs are deterministic there, not across CPUs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Keys whose values depend on the clock, the machine, the paths or the code's commit.
VOLATILE = re.compile(r"(seconds|per_second|latency|speedup|finished_at|^logs$|^source$|"
                      r"^git_commit$|^code$|^cached$|^ran_now$|^versions$|^teacher_cached$|"
                      r"^platform$|^workdir$|^path$|^directory$|^ms_per_image$)")
EXTRA_SPECS = ("experiments/arithmetic/rl.py:minillm_smoke",)


def specs() -> list[str]:
  """Every experiment module's ``:smoke`` config, plus :data:`EXTRA_SPECS`."""
  modules = sorted(p for p in glob.glob(os.path.join(ROOT, "experiments", "*", "*.py"))
                   if not p.endswith("__init__.py"))
  return [f"{os.path.relpath(p, ROOT)}:smoke" for p in modules] + list(EXTRA_SPECS)


def _is_sweep(spec: str) -> bool:
  with open(os.path.join(ROOT, spec.partition(":")[0])) as f:
    return "kd_jax.sweep" in f.read().split('"""')[1]


def stable(value):
  """``value`` without the keys of :data:`VOLATILE` (recursively)."""
  if isinstance(value, dict):
    return {k: stable(v) for k, v in value.items() if not VOLATILE.search(str(k))}
  if isinstance(value, list):
    return [stable(v) for v in value]
  return value


def run(spec: str, scratch: str, teacher_dir: str) -> dict:
  """``{relative results path: stable results}`` of one module's smoke run."""
  name = spec.replace("/", "_").replace(":", "_").removesuffix(".py")
  workdir = os.path.join(scratch, name)
  module = "kd_jax.sweep" if _is_sweep(spec) else "kd_jax.main"
  env = dict(os.environ, KD_JAX_DATA_SOURCE="idx", JAX_PLATFORMS="cpu")
  command = [sys.executable, "-m", module, f"--config={spec}", f"--workdir={workdir}",
             f"--teacher_dir={teacher_dir}", "--noprogress",
             f"--compilation_cache_dir={os.path.join(scratch, 'xla')}"]
  began = time.perf_counter()
  out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
  print(f"{spec}: {module}, {time.perf_counter() - began:.0f} s, exit {out.returncode}",
        flush=True)
  if out.returncode:
    return {"error": out.stderr[-2000:]}
  found = {}
  for path in sorted(glob.glob(os.path.join(workdir, "**", "results.json"), recursive=True)):
    with open(path) as f:
      found[os.path.relpath(path, workdir)] = stable(json.load(f))
  return found


def differences(old, new, where: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    lines = []
    for key in sorted(set(old) | set(new)):
      if key not in old or key not in new:
        lines.append(f"{where}/{key}: only in the {'record' if key in old else 'new run'}")
      else:
        lines += differences(old[key], new[key], f"{where}/{key}")
    return lines
  if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
    return [line for i, (a, b) in enumerate(zip(old, new))
            for line in differences(a, b, f"{where}[{i}]")]
  return [] if old == new else [f"{where}: {json.dumps(old)} → {json.dumps(new)}"]


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="write the record here")
  parser.add_argument("--compare", help="compare with this record")
  parser.add_argument("--only", nargs="*", help="these specs only")
  args = parser.parse_args()
  record = {}
  with tempfile.TemporaryDirectory(prefix="kd_jax_smoke_") as scratch:
    teacher_dir = os.path.join(scratch, "cache", "teachers")
    for spec in args.only or specs():
      record[spec] = run(spec, scratch, teacher_dir)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(record, f, indent=1, sort_keys=True)
  if args.compare:
    with open(args.compare) as f:
      old = json.load(f)
    if args.only:
      old = {k: v for k, v in old.items() if k in args.only}
    changed = differences(old, record)
    print("\n".join(changed) or f"identical: {len(record)} modules, "
          f"{sum(len(v) for v in record.values())} results.json")
    return 1 if changed else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
