r"""The step-distillation table of a diffusion sweep (issue 24).

    python -m kd_jax.diffusion_table --workdir=runs/diffusion_table

Reads a finished (or running) ``kd_jax.sweep`` directory of diffusion runs
(experiments/diffusion/table.py) and writes ``diffusion_table.md`` next to its
``sweep.json``: the teacher's DDIM at each step count it was reported at, and each
point's student at each of its step counts, with FD-FMNIST, precision, recall,
coverage (KL of the class histogram to uniform) and ms per image, mean ± the half-width
of the 95% Student-t interval over seeds (the teacher: one report per seed, all of the
same cached teacher on the same noise, read from its cached report: no spread); then the
issue's targets, checked on the means: the best
4-step student's FD within 1.5× the teacher's at its most steps, the best 1-step
student's within 3× that and at most a quarter of the teacher's own 1-step FD.

Only the runs' ``results.json`` are read (``results[phase]["steps_<n>"]``).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kd_jax.reporting import stats, sweep_dir

TABLE_FILE = "diffusion_table.md"
COLUMNS = (("fd", "FD-FMNIST", 2), ("precision", "precision", 3), ("recall", "recall", 3),
           ("coverage_kl", "coverage KL", 3), ("ms_per_image", "ms / image", 2))
STUDENT_STEPS = (4, 2, 1)


def step_counts(report: Mapping[str, Any]) -> list[int]:
  """The step counts a phase's report holds (``steps_<n>`` keys), most first."""
  return sorted((int(m.group(1)) for k in report
                 if (m := re.fullmatch(r"steps_(\d+)", k))), reverse=True)


def _cell(values: Sequence[float], digits: int) -> str:
  if not values:
    return "–"
  interval = stats.mean_ci(values)
  half = "" if math.isnan(interval.half_width) else f" ± {interval.half_width:.{digits}f}"
  return f"{interval.mean:.{digits}f}{half}"


def _row(label: str, steps: int, reports: Sequence[Mapping[str, Any]]) -> str:
  entries = [r[f"steps_{steps}"] for r in reports if f"steps_{steps}" in r]
  cells = [_cell([e[key] for e in entries if key in e], digits) for key, _, digits in COLUMNS]
  return f"| {label} | {steps} | " + " | ".join(cells) + f" | {len(entries)} |"


def mean_fd(reports: Sequence[Mapping[str, Any]], steps: int) -> float | None:
  values = [r[f"steps_{steps}"]["fd"] for r in reports if "fd" in r.get(f"steps_{steps}", {})]
  return sum(values) / len(values) if values else None


def targets(teacher: Sequence[Mapping[str, Any]],
            students: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
  """The issue's targets on the mean FDs, said plainly (which point reaches which)."""
  counts = step_counts(teacher[0]) if teacher else []
  if not counts:
    return ["- Targets: no teacher report to compare with."]
  best_t, t_one = mean_fd(teacher, counts[0]), mean_fd(teacher, 1)
  lines = []
  for steps, factor in ((4, 1.5), (1, 3.0)):
    fds = {name: mean_fd(runs, steps) for name, runs in students.items()}
    fds = {n: v for n, v in fds.items() if v is not None}
    if not fds or best_t is None:
      lines.append(f"- {steps}-step target: no {steps}-step students to compare.")
      continue
    best = min(fds, key=fds.get)
    bound = factor * best_t
    met = fds[best] <= bound
    extra = ""
    if steps == 1 and t_one is not None:
      met = met and fds[best] <= t_one / 4
      extra = f" and ≤ ¼ of the teacher's own 1-step FD ({t_one / 4:.2f})"
    reached = [n for n, v in fds.items() if v <= bound and (steps != 1 or t_one is None
                                                            or v <= t_one / 4)]
    lines.append(f"- {steps}-step target (FD ≤ {factor}× the teacher's {counts[0]}-step FD "
                 f"{best_t:.2f} = {bound:.2f}{extra}): best `{best}` {fds[best]:.2f} — "
                 f"{'met' if met else 'not met'}; reached by "
                 f"{', '.join(f'`{n}`' for n in reached) or 'none'}.")
  return lines


def table(sweep: sweep_dir.SweepDir) -> str:
  runs = {point: results for point, results in sweep.by_point.items() if results}
  if not runs:
    return "No finished runs yet.\n"
  # One teacher report per seed (every point of a seed evaluated the same teacher).
  teacher = list({r["config"]["seed"]: r["teacher"]
                  for results in runs.values() for r in results}.values())
  students = {point: [r["student"] for r in results] for point, results in runs.items()}
  header = ("| model | steps | " + " | ".join(title for _, title, _ in COLUMNS) + " | n |\n"
            "|---|---|" + "---|" * len(COLUMNS) + "---|")
  lines = [header]
  lines += [_row("teacher (DDIM)", n, teacher) for n in step_counts(teacher[0])]
  for point, reports in students.items():
    counts = [n for n in step_counts(reports[0]) if n in STUDENT_STEPS]
    lines += [_row(f"`{point}`", n, reports) for n in counts]
  seeds = sorted({r["config"]["seed"] for results in runs.values() for r in results})
  lines += ["", f"Seeds {', '.join(map(str, seeds))}; values are mean ± the half-width of the "
            "95% Student-t interval over seeds. FD-FMNIST: Fréchet distance to the test images "
            "in the cached classifier's features (kd_jax/tasks/diffusion_quality.py); "
            "precision and recall: k = 3 manifolds; coverage KL: KL(class histogram ‖ "
            "uniform), 0 is every class equally; ms / image: DDIM at batch 64.", ""]
  lines += targets(teacher, students)
  return "\n".join(lines) + "\n"


def write(workdir: str, *, allow_mixed_code: bool = False) -> str:
  """Writes ``diffusion_table.md`` in the sweep ``workdir`` and returns its text."""
  text = table(sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code))
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(text)
  return text
