r"""Patience curves: what each student gains with a longer schedule (issue 27).

    python -m kd_jax.patience_table --workdir=runs/function_matching
    python -m kd_jax.patience_table --workdir=runs/fm_1x --workdir=runs/fm_4x --workdir=runs/fm_16x

Reads one or more ``kd_jax.sweep`` directories whose points are named
``<family>-<N>x`` (experiments/fashion_mnist/function_matching.py: ``kd-fixed-4x``,
``kd-consistent-16x``, ``scratch-1x``, …; a budget's runs may be their own sweep) and
writes ``patience_table.md`` and ``patience.png`` into the first: per family and budget
(the runs' ``train.epochs``), the student's test accuracy, mean ± the half-width of the
95% Student-t interval over seeds; for a distilled family, its paired difference to the
*reference* family (the student alone, ``method='none'``) at the same epochs and seeds,
and the gap it recovers,

.. math::
  \mathrm{gap} = \frac{\overline{d}}{a_T - \overline{a}_{\mathrm{alone}}},

with :math:`\overline d` the mean paired difference, :math:`a_T` the teacher's accuracy
(one teacher for every run) and :math:`\overline a_{\mathrm{alone}}` the reference's mean
over the paired seeds; its interval is the paired difference's, scaled by the same
denominator (the teacher is one fixed model; the denominator's own seed noise is not
carried). Then, said plainly, whether each distilled family reaches the field's target at
its longest budget (Beyer et al. 2022: at least half the gap recovered, and above the
student alone with a paired interval that excludes 0).

The plot: test accuracy against epochs (log axis) for every family, the teacher dashed;
and the gap recovered against epochs for the distilled ones, the 50% target dotted.

Only the runs' ``results.json`` are read.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kd_jax.core.errors import ConfigError
from kd_jax.reporting import report, stats, sweep_dir

TABLE_FILE = "patience_table.md"
PLOT_FILE = "patience.png"
METRIC = "test_accuracy"
TARGET_GAP = 0.5          # Beyer et al. 2022's bar: half the teacher–student gap
_BUDGET = re.compile(r"^(?P<family>.+)-(?P<budget>\d+)x$")


def family_of(point: str) -> str:
  """``"kd-consistent-16x"`` → ``"kd-consistent"``.

  Raises:
    ConfigError: the point is not named ``<family>-<N>x``.
  """
  match = _BUDGET.match(point)
  if match is None:
    raise ConfigError(None, f"point {point!r} is not named <family>-<N>x (e.g. kd-fixed-4x), "
                      "so its family and budget are unknown")
  return match["family"]


def read(workdirs: Sequence[str], *, allow_mixed_code: bool = False) -> sweep_dir.SweepDir:
  """The finished runs of several sweep directories as one (the first one's record).

  Raises:
    ConfigError: a point name in two of them, or (unless ``allow_mixed_code``) runs of
      different code across them.
  """
  sweeps = [sweep_dir.read(w, allow_mixed_code=allow_mixed_code) for w in workdirs]
  by_point: dict[str, list[dict]] = {}
  for workdir, sweep in zip(workdirs, sweeps):
    for point, results in sweep.by_point.items():
      if point in by_point:
        raise ConfigError("workdir", f"point {point!r} is in more than one of "
                          f"{', '.join(workdirs)}; which runs does it mean?")
      by_point[point] = results
  merged = sweep_dir.SweepDir(sweeps[0].record, by_point,
                              [entry for sweep in sweeps for entry in sweep.entries])
  if not allow_mixed_code:
    sweep_dir.refuse_mixed_code(merged, f"--workdir={','.join(workdirs)}")
  return merged


def _teacher(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> float:
  """The test accuracy of the one teacher that taught the distilled runs: the gap's top.

  A student trained alone reads no teacher, so the teacher its ``results.json`` names (the
  one cached where it ran) is not compared: runs of the student alone from another machine,
  whose teacher was trained afresh there, pair with the distilled runs all the same.
  """
  every = [r for results in runs.values() for r in results]
  taught = [r for r in every if report.student_method(r) != "none"] or every
  values = {r["teacher"][METRIC] for r in taught}
  if len(values) != 1:
    raise ConfigError(None, f"the runs were taught by teachers of different test accuracy "
                      f"({sorted(values)}): a gap recovered needs one teacher")
  return values.pop()


def _reference_family(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                      reference: str | None) -> str:
  families = {family_of(point) for point in runs}
  if reference is not None:
    if reference not in families:
      raise ConfigError("reference", f"--reference={reference}: no such family; valid: "
                        f"{', '.join(sorted(families))}")
    return reference
  alone = sorted({family_of(p) for p, results in runs.items()
                  if report.student_method(results[0]) == "none"})
  if len(alone) != 1:
    raise ConfigError("reference", f"{'no family' if not alone else 'families ' + ', '.join(alone)}"
                      " trained the student alone (method='none'); name the reference with "
                      f"--reference (valid: {', '.join(sorted(families))})")
  return alone[0]


def _epochs(point: str, results: Sequence[Mapping[str, Any]]) -> float:
  epochs = {r["config"]["train"]["epochs"] for r in results}
  if len(epochs) != 1:
    raise ConfigError(None, f"point {point!r}: its runs trained {sorted(epochs)} epochs")
  return float(epochs.pop())


def rows(runs: Mapping[str, Sequence[Mapping[str, Any]]], reference: str | None = None
         ) -> tuple[list[dict], float, str]:
  """``(rows, teacher accuracy, reference family)``; a row per point with finished runs:
  ``family``, ``epochs``, ``accuracy`` (:class:`~kd_jax.reporting.stats.Interval`),
  ``late_change`` (the plateau check: the accuracy's change over the last 20% of the steps,
  mean over seeds; None without the evaluations), and for
  a distilled family ``difference`` (paired with the reference at the same epochs) and
  ``gap`` (the gap recovered, an Interval; None without a reference to pair with)."""
  runs = {point: results for point, results in runs.items() if results}
  if not runs:
    raise ConfigError(None, "no finished runs yet")
  teacher = _teacher(runs)
  reference = _reference_family(runs, reference)
  table = [{"point": point, "family": family_of(point), "epochs": _epochs(point, results),
            "accuracy": stats.mean_ci(r["student"][METRIC] for r in results),
            "late_change": stats.mean_late_change(results, METRIC),
            "runs": results, "difference": None, "gap": None}
           for point, results in runs.items()]
  alone = {row["epochs"]: row["runs"] for row in table if row["family"] == reference}
  for row in table:
    if row["family"] == reference or row["epochs"] not in alone:
      continue
    mine, theirs = stats.paired_by_seed(row["runs"], alone[row["epochs"]],
                                        lambda r: r["student"][METRIC])
    if not mine:
      continue
    difference = stats.paired_difference(mine, theirs)
    scale = teacher - float(np.mean(theirs))
    row["difference"] = difference
    if scale > 0:     # else the student alone reaches the teacher: no gap to recover
      row["gap"] = stats.Interval(difference.mean / scale, difference.std / scale,
                                  difference.half_width / scale, difference.n)
  table.sort(key=lambda row: (row["family"] != reference, row["family"], row["epochs"]))
  return table, teacher, reference


def _pm(interval: stats.Interval | None, sign: bool = False) -> str:
  return "–" if interval is None else stats.format_interval(interval, sign=sign)


def _verdicts(table: Sequence[dict], reference: str) -> list[str]:
  lines = []
  for family in sorted({row["family"] for row in table} - {reference}):
    paired = [row for row in table if row["family"] == family and row["gap"] is not None]
    if not paired:
      lines.append(f"- `{family}`: no budget has `{reference}` runs of the same seeds below "
                   "the teacher to compare with.")
      continue
    last = max(paired, key=lambda row: row["epochs"])
    above = last["difference"].low > 0
    met = above and last["gap"].mean >= TARGET_GAP
    lines.append(
        f"- `{family}` at its longest compared budget ({last['epochs']:g} epochs): "
        f"{last['gap'].mean:.1%} of the gap recovered (interval "
        f"{stats.format_interval(last['gap'], digits=1)}), {_pm(last['difference'], True)} "
        f"points against `{reference}` ({last['difference'].n} paired seeds): the target "
        f"(≥ {TARGET_GAP:.0%} of the gap on the mean, and a paired interval above 0) is "
        f"{'met' if met else 'not met'}.")
  return lines


def markdown(table: Sequence[dict], teacher: float, reference: str,
             experiment: str | None) -> str:
  seeds = sorted({r["config"]["seed"] for row in table for r in row["runs"]})
  lines = [f"# {experiment or 'sweep'}: patience (test accuracy against epochs)", "",
           f"Teacher: {teacher:.2%}. Reference: `{reference}` (the student alone).", "",
           "| family | epochs | test accuracy % | change, last 20% (pp) "
           "| Δ vs alone (pp, paired) | gap recovered % | n |", "|---|---|---|---|---|---|---|"]
  for row in table:
    gap = row["gap"]
    gap_text = "–" if gap is None else stats.format_interval(gap, digits=1)
    late = "–" if row["late_change"] is None else f"{100 * row['late_change']:+.2f}"
    lines.append(f"| `{row['family']}` | {row['epochs']:g} | {_pm(row['accuracy'])} | {late} | "
                 f"{_pm(row['difference'], sign=True)} | {gap_text} | {row['accuracy'].n} |")
  lines += ["", f"Seeds {', '.join(map(str, seeds))}; mean ± half-width of the 95% Student-t "
            "interval over seeds. Δ: the point minus the student alone at the same epochs, "
            "per seed. Gap recovered: Δ / (teacher − the student alone's mean), its interval "
            "Δ's scaled alike. Change, last 20%: the final test accuracy minus the first "
            "evaluation's in the last 20% of the steps, mean over seeds (a plateau is near 0; "
            "kd_jax/reporting/patience.py).", ""]
  return "\n".join(lines + _verdicts(table, reference)) + "\n"


def plot(table: Sequence[dict], teacher: float, reference: str, path: str, title: str) -> None:
  """Test accuracy and gap recovered against epochs (log₂ axis), one line per family."""
  from kd_jax.reporting import plots  # matplotlib is slow to import
  fig, (left, right) = plots.plt.subplots(1, 2, figsize=(11, 4.2), dpi=130)
  colors = {}
  for family in sorted({row["family"] for row in table}, key=lambda f: (f != reference, f)):
    members = [row for row in table if row["family"] == family]
    line = _curve(left, members, "accuracy", 100.0, family)
    colors[family] = line.get_color()
    with_gap = [row for row in members if row["gap"] is not None]
    if with_gap:
      _curve(right, with_gap, "gap", 100.0, family, color=colors[family])
  left.axhline(100 * teacher, color="black", linestyle="--", label=f"teacher {teacher:.2%}")
  right.axhline(100 * TARGET_GAP, color="black", linestyle=":", label="target (50%)")
  budgets = sorted({row["epochs"] for row in table})
  for ax, label in ((left, "test accuracy %"), (right, f"gap recovered % (vs {reference})")):
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [f"{epochs:g}" for epochs in budgets])
    ax.set_xlabel("epochs")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  seeds = max(row["accuracy"].n for row in table)
  fig.suptitle(f"{title}: mean ± 95% t-interval over up to {seeds} seeds", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plots.plt.close(fig)


def _curve(ax, members: Sequence[dict], key: str, scale: float, label: str, color=None):
  x = [row["epochs"] for row in members]
  mean = np.array([row[key].mean for row in members]) * scale
  half = np.array([0.0 if math.isnan(row[key].half_width) else row[key].half_width
                   for row in members]) * scale
  (line,) = ax.plot(x, mean, marker="o", label=label, color=color)
  ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
  return line


def write(workdirs: str | Sequence[str], *, allow_mixed_code: bool = False,
          reference: str | None = None) -> str:
  """Writes ``patience_table.md`` and ``patience.png`` into the first of ``workdirs``;
  returns the markdown.

  Raises:
    ConfigError: no finished run, a point not named ``<family>-<N>x``, teachers that differ,
      no single family trained alone (name one: ``reference``), or (unless
      ``allow_mixed_code``) runs of different code.
  """
  workdirs = [workdirs] if isinstance(workdirs, str) else list(workdirs)
  sweep = read(workdirs, allow_mixed_code=allow_mixed_code)
  table, teacher, reference = rows(sweep.by_point, reference)
  experiment = sweep.record.get("experiment")
  text = markdown(table, teacher, reference, experiment)
  text += "\n" + sweep_dir.footer(sweep)
  plot(table, teacher, reference, os.path.join(workdirs[0], PLOT_FILE), experiment or "sweep")
  text += f"\n![{PLOT_FILE}]({PLOT_FILE})\n"
  with open(os.path.join(workdirs[0], TABLE_FILE), "w") as f:
    f.write(text)
  return text
