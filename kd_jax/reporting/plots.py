"""Sweep plots (matplotlib, Agg backend: PNG files, no display needed).

Both functions take the summary rows that `kd_jax.sweep.write_summary` builds:
``{"point": {grid key: value}, "headline": "test_accuracy", "test_accuracy_mean",
"test_accuracy_ci95_low", "test_accuracy_ci95_high", "test_accuracy_n", ...}`` (or the
columns of another headline metric, e.g. ``exact_match``) with fractions;
plots show percentages. Shaded bands and error bars are the 95% Student t intervals
over seeds (`kd_jax.reporting.stats.mean_ci`); a point with one seed has none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: sweeps run on headless machines.
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib import ticker  # noqa: E402

from kd_jax.reporting.catalog import DISPLAY  # noqa: E402
from kd_jax.reporting.stats import Interval, format_value, sort_rows  # noqa: E402

TEMPERATURE_KEYS = ("temperature", "temperature.init")


def _acc(row) -> str:
  """The row's headline metric (a fraction: accuracy or exact match)."""
  return row.get("headline", "test_accuracy")


def _scale(row) -> float:
  return DISPLAY[_acc(row)][0]


def _unit(row) -> str:
  return DISPLAY[_acc(row)][1]


def _percent(row: Mapping[str, Any]) -> tuple[float, float, float]:
  """(mean, low, high) of the final headline metric as shown (fractions in %, nll in nats);
  low = high = mean without a CI."""
  scale = _scale(row)
  mean = row[f"{_acc(row)}_mean"] * scale
  low, high = row[f"{_acc(row)}_ci95_low"] * scale, row[f"{_acc(row)}_ci95_high"] * scale
  return (mean, mean, mean) if math.isnan(low) else (mean, low, high)


def _label(point: Mapping[str, Any], keys: Sequence[str]) -> str:
  return ", ".join(f"{k}={format_value(point[k])}" for k in keys) or "base config"


def _references(ax, baseline: Interval | None, teacher: float | None,
                vertical: bool = False, scale: float = 100.0, unit: str = "%") -> None:
  """The teacher (dotted) and the from-scratch baseline (dashed, shaded CI), with legend labels."""
  line, span = (ax.axvline, ax.axvspan) if vertical else (ax.axhline, ax.axhspan)
  if teacher is not None:
    line(teacher * scale, color="tab:green", linestyle=":", linewidth=1.5,
         label=f"teacher: {teacher * scale:.2f} {unit}")
  if baseline is None:
    return
  mean = baseline.mean * scale
  half = 0.0 if math.isnan(baseline.half_width) else baseline.half_width * scale
  label = (f"baseline, no teacher: {mean:.2f}"
           + (f" ± {half:.2f}" if half else "") + f" {unit} (n={baseline.n})")
  line(mean, color="black", linestyle="--", linewidth=1.2, label=label)
  if half:
    span(mean - half, mean + half, color="black", alpha=0.1, linewidth=0,
         label="baseline 95% CI")


def _seeds_note(rows: Sequence[Mapping[str, Any]], what: str) -> str:
  """How many seeds each point averages, and what the ``what`` (bands, bars) show."""
  ns = sorted({int(r[f"{_acc(r)}_n"]) for r in rows if r[f"{_acc(r)}_n"]})
  if ns in ([], [1]):
    return "one seed per point: no confidence interval"
  return f"mean over n={'/'.join(map(str, ns))} seeds; {what}: 95% t-interval"


def plot_accuracy_vs_temperature(
    rows: Sequence[Mapping[str, Any]], path: str, *, temperature_key: str | None = None,
    baseline: Interval | None = None, teacher: float | None = None,
    title: str | None = None) -> None:
  """The final headline metric vs distillation temperature, one line per other setting.

  x: temperature on a log2 axis; y: the final headline metric (%); one line (with its 95%
  CI band) per combination of the other grid keys, e.g. per divergence; the
  from-scratch baseline as a dashed horizontal line with its band and the
  teacher as a dotted one, all in the legend.

  Args:
    rows: summary rows (see the module docstring).
    path: the PNG to write.
    temperature_key: the grid key holding T; default the first of ``temperature``,
      ``temperature.init`` found in the rows' points.
    baseline: the baseline's accuracy interval (fractions), or None.
    teacher: the teacher's final headline metric (fraction), or None.
    title: the first title line, e.g. the experiment name.
  """
  keys = list(rows[0]["point"])
  temperature_key = temperature_key or next(k for k in keys if k in TEMPERATURE_KEYS)
  others = [k for k in keys if k != temperature_key]
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row["point"][k] for k in others), []).append(row)

  fig, ax = plt.subplots(figsize=(7.5, 5), dpi=130)
  temperatures = sorted({float(r["point"][temperature_key]) for r in rows})
  for group, members in groups.items():
    members = sorted(members, key=lambda r: float(r["point"][temperature_key]))
    x = [float(r["point"][temperature_key]) for r in members]
    mean, low, high = zip(*(_percent(r) for r in members))
    name = ", ".join(map(format_value, group)) if len(others) == 1 else _label(
        dict(zip(others, group)), others)
    (line,) = ax.plot(x, mean, marker="o", linewidth=1.8, label=name)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.18, linewidth=0)
  _references(ax, baseline, teacher, scale=_scale(rows[0]), unit=_unit(rows[0]))

  ax.set_xscale("log", base=2)
  ax.xaxis.set_major_locator(ticker.FixedLocator(temperatures))
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_locator(ticker.NullLocator())
  ax.set_xlabel(f"distillation temperature T  ({temperature_key}, log₂ scale)")
  ax.set_ylabel(f"student final {_acc(rows[0]).replace('_', ' ')} ({_unit(rows[0])})")
  ax.set_title(f"{title or 'sweep'}\nstudent accuracy vs temperature "
               f"({_seeds_note(rows, 'bands')})", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(title=" / ".join(others) if len(others) == 1 else None, fontsize=8,
            title_fontsize=8, loc="best")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def plot_methods_bar(rows: Sequence[Mapping[str, Any]], path: str, *,
                     baseline: Interval | None = None, teacher: float | None = None,
                     title: str | None = None) -> None:
  """Horizontal bars of the final headline metric per grid point, with 95% CI error bars.

  One bar per row, in the given order from the top (pass rows sorted best first), each
  labelled with its grid values and its ``mean ± CI``; the baseline is a dashed
  vertical line with its band. The accuracy axis is zoomed to the data (it does not
  start at 0) so that differences of a few tenths of a point stay visible.

  Args:
    rows: summary rows (see the module docstring); rows without results are skipped.
    path: the PNG to write.
    baseline: the baseline's accuracy interval (fractions), or None.
    teacher: the teacher's final headline metric (fraction), or None.
    title: the first title line, e.g. the experiment name.
  """
  rows = [r for r in rows if r[f"{_acc(r)}_n"]]
  keys = list(rows[0]["point"]) if rows else []
  fig, ax = plt.subplots(figsize=(8, 1.6 + 0.42 * max(len(rows), 1)), dpi=130)
  y = list(range(len(rows)))[::-1]
  stats = [_percent(r) for r in rows]
  mean = [m for m, _, _ in stats]
  err = [[m - lo for m, lo, _ in stats], [hi - m for m, _, hi in stats]]
  ax.barh(y, mean, xerr=err, height=0.65, color="tab:blue", alpha=0.75,
          error_kw=dict(ecolor="black", capsize=4, linewidth=1.2))
  for yi, (m, lo, hi) in zip(y, stats):
    text = f"{m:.2f} ± {hi - m:.2f}" if hi > m else f"{m:.2f} (n=1)"
    ax.text(hi, yi, "  " + text, va="center", fontsize=8,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=0.5))
  ax.set_yticks(y, [_label(r["point"], keys) for r in rows], fontsize=8)
  scale, unit = (_scale(rows[0]), _unit(rows[0])) if rows else (100.0, "%")
  _references(ax, baseline, teacher, vertical=True, scale=scale, unit=unit)

  values = [v for s in stats for v in s[1:]]
  if baseline is not None:
    values.append(baseline.mean * scale)
  if teacher is not None:
    values.append(teacher * scale)
  if values:
    span = max(max(values) - min(values), 0.5)
    ax.set_xlim(min(values) - 0.3 * span, max(values) + 0.6 * span)  # room for labels
  name = _acc(rows[0]).replace("_", " ") if rows else "test accuracy"
  ax.set_xlabel(f"student final {name} ({unit})  (axis does not start at 0)")
  ax.set_title(f"{title or 'sweep'}\n{_seeds_note(rows, 'error bars')}", fontsize=10)
  ax.grid(True, axis="x", alpha=0.3)
  if baseline is not None or teacher is not None:
    ax.legend(fontsize=8, loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _title(config: Mapping[str, Any], grid: Mapping[str, Any]) -> str:
  """Names the experiment and the settings the grid holds fixed."""
  fixed = [f"{k}={config[k]}" for k in ("method", "divergence")
           if k in config and k not in grid]
  models = [(config.get(k) or {}).get("model") for k in ("student", "teacher")]
  if all(models):
    fixed.insert(0, f"student {models[0]} ← teacher {models[1]}")
  return ", ".join([config.get("experiment") or "sweep", *fixed])


def write_plots(rows: Sequence[Mapping[str, Any]], directory: str, *,
                grid: Mapping[str, Sequence[Any]], config: Mapping[str, Any],
                baseline: Interval | None = None, teacher: float | None = None) -> list[str]:
  """Writes the plots that apply to a sweep; returns their file names.

  ``accuracy_vs_temperature.png`` when the grid varies ``temperature`` or
  ``temperature.init`` (two values or more), lines in grid order; ``methods_bar.png``
  always, best final accuracy on top.

  Args:
    rows: summary rows, in grid order.
    directory: where the PNGs go.
    grid: grid key -> swept values.
    config: the base config as a dict (for the title).
    baseline: the baseline's accuracy interval, or None.
    teacher: the teacher's final headline metric (the mean when runs had several), or None.
  """
  title = _title(config, grid)
  written = []
  temperature_key = next((k for k in grid if k in TEMPERATURE_KEYS), None)
  if temperature_key and len(grid[temperature_key]) > 1:
    written.append("accuracy_vs_temperature.png")
    plot_accuracy_vs_temperature(rows, os.path.join(directory, written[-1]),
                                 temperature_key=temperature_key, baseline=baseline,
                                 teacher=teacher, title=title)
  written.append("methods_bar.png")
  plot_methods_bar(sort_rows(rows), os.path.join(directory, written[-1]),
                   baseline=baseline, teacher=teacher, title=title)
  return written
