"""Confidence intervals for results over seeds, and their aggregation.

Pure numpy/scipy: no JAX, no files. The sweep (`kd_jax.sweep`) feeds these the
`results.json` dicts of each run and writes what they return.

Why Student t and paired differences: sweeps have few seeds (3-5), so a normal
interval would be too narrow (t_{0.975, 2} = 4.30 vs z = 1.96); and the knowledge
distillation gain is measured on the *same* seeds as the from-scratch baseline, so the
seed-to-seed variance they share cancels in the paired difference (a paired t
interval), giving an honest and much tighter interval than comparing two independent
means. See e.g. Dror et al. 2018, "The Hitchhiker's Guide to Testing Statistical
Significance in Natural Language Processing".
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as scipy_stats

from kd_jax.reporting.catalog import (DISPLAY, LOWER_IS_BETTER, METRICS_BY_HEADLINE,
                                     SUMMARY_COLUMNS)


def headline_of(results: Sequence[Mapping[str, Any]]) -> str:
  """The headline metric of a set of results.json dicts (classification's when unsaid)."""
  names = {r.get("headline", "test_accuracy") for r in results} or {"test_accuracy"}
  if len(names) > 1:
    raise ValueError(f"results with different headline metrics cannot be summarised together: "
                     f"{sorted(names)}")
  return names.pop()


# Hinton et al.'s omitted-class study (dataset.omit_classes): accuracy on the classes the
# students never saw, before and after the bias correction (kd_jax.tasks.metrics.bias_corrected).
OMITTED_CLASS_COLUMNS = (
    ("omitted_student", "student", "accuracy"),
    ("omitted_student_corrected", "student", "corrected_accuracy"),
    ("omitted_baseline", "baseline", "accuracy"),
    ("omitted_baseline_corrected", "baseline", "corrected_accuracy"),
    ("student_corrected_test_accuracy", "student", "corrected_test_accuracy"),
)


class Interval(NamedTuple):
  """Mean of a sample with a two-sided Student t confidence interval.

  Unpacks as ``mean, std, half_width, n``; the interval is
  ``[mean - half_width, mean + half_width]``.
  """

  mean: float
  std: float
  half_width: float
  n: int

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> Interval:
  r"""Sample mean with a two-sided Student t confidence interval.

  .. math::
    \bar x = \frac{1}{n}\sum_i x_i, \quad
    s = \sqrt{\frac{1}{n-1}\sum_i (x_i - \bar x)^2}, \quad
    h = t_{(1+c)/2,\, n-1} \, \frac{s}{\sqrt n}

  This is the interval of `scipy.stats.t.interval(c, n - 1, loc=mean, scale=sem)`.
  It assumes the per-seed values are independent draws from a roughly normal
  distribution (reasonable for accuracies far from 0 and 1).

  With n = 1 the spread is unknown: ``std`` and ``half_width`` are NaN (not 0, which
  would claim perfect certainty). Non-finite inputs propagate to the outputs.

  Args:
    values: the per-seed values, shape [n] (any iterable of numbers), n >= 1.
    confidence: the coverage c of the interval, in (0, 1).

  Returns:
    `Interval(mean, std, half_width, n)`; ``std`` uses ddof=1.

  Example:
    >>> mean_ci([1.0, 2.0, 3.0])  # half width = t_{0.975,2} / sqrt(3) = 2.484...
    Interval(mean=2.0, std=1.0, half_width=2.4841..., n=3)
  """
  if not 0.0 < confidence < 1.0:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")
  x = np.asarray(list(values), dtype=np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"mean_ci needs a non-empty 1-D sample, got shape {x.shape}.")
  n = int(x.size)
  mean = float(np.mean(x))
  if n == 1:
    return Interval(mean, math.nan, math.nan, 1)
  std = float(np.std(x, ddof=1))
  t = float(scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))
  return Interval(mean, std, t * std / math.sqrt(n), n)


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Interval:
  r"""Mean of the paired differences ``a_i - b_i`` with a paired t interval.

  .. math::
    d_i = a_i - b_i, \qquad \text{result} = \text{mean\_ci}(d)

  ``a[i]`` and ``b[i]`` must come from the same seed (same data order and
  initialisation), e.g. the distilled student and the student trained from scratch:
  the KD gain. Differencing first removes the variance the two share.

  Args:
    a: shape [n], e.g. student test accuracies per seed.
    b: shape [n], e.g. baseline test accuracies for the same seeds, same order.
    confidence: the coverage of the interval, in (0, 1).

  Returns:
    `Interval` of the differences (see `mean_ci`; NaN spread when n = 1).

  Example:
    >>> paired_difference([0.90, 0.80], [0.85, 0.78])  # d = [0.05, 0.02]
    Interval(mean=0.035, std=0.0212..., half_width=0.1906..., n=2)
  """
  a_arr = np.asarray(a, dtype=np.float64)
  b_arr = np.asarray(b, dtype=np.float64)
  if a_arr.shape != b_arr.shape:
    raise ValueError(
        "paired_difference needs one b per a (same seeds, same order), got shapes "
        f"{a_arr.shape} and {b_arr.shape}."
    )
  return mean_ci(a_arr - b_arr, confidence)


def detectable_difference(std: float, n: int, confidence: float = 0.95,
                          power: float = 0.8) -> float:
  r"""The smallest true paired difference that a paired t interval of ``n`` seeds excludes
  from 0 with probability ``power``, for differences of standard deviation ``std``.

  .. math::
    \delta = (t_{(1+c)/2,\, n-1} + t_{\text{power},\, n-1}) \, \frac{s}{\sqrt n}

  (the usual normal-approximation power formula with t quantiles; e.g. Cohen 1988). NaN
  when n < 2 or ``std`` is NaN.

  Example:
    >>> round(detectable_difference(1.0, 5), 3)   # (2.776 + 0.941) / sqrt(5)
    1.662
  """
  if n < 2 or not math.isfinite(std):
    return math.nan
  quantiles = (scipy_stats.t.ppf(0.5 + confidence / 2.0, df=n - 1)
               + scipy_stats.t.ppf(power, df=n - 1))
  return float(quantiles * std / math.sqrt(n))


def late_change(history: Sequence[Mapping[str, Any]], metric: str, steps: int,
                last: float = 0.2) -> float | None:
  """The plateau check of one run: ``metric`` at its final evaluation in ``history`` minus at
  its first evaluation in the last ``last`` of ``steps`` (None without two evaluations
  there). A plateau is near 0."""
  late = [h for h in history if metric in h and h["step"] >= (1 - last) * steps]
  if len(late) < 2:
    return None
  return late[-1][metric] - late[0][metric]


def mean_late_change(runs: Sequence[Mapping[str, Any]], metric: str,
                     last: float = 0.2) -> float | None:
  """The plateau check of a point: the mean over its runs of :func:`late_change` of the
  student's ``metric`` (None when a run lacks two evaluations in the last ``last`` of its
  steps, or a step count).

  >>> run = lambda a, b: {"student": {"steps": 100, "history": [
  ...     {"step": 50, "acc": 0.5}, {"step": 80, "acc": a}, {"step": 100, "acc": b}]}}
  >>> round(mean_late_change([run(0.80, 0.81), run(0.70, 0.73)], "acc"), 6)
  0.02
  """
  changes = [late_change(r["student"].get("history", []), metric, r["student"]["steps"], last)
             if r["student"].get("steps") else None for r in runs]
  return None if not changes or None in changes else float(np.mean(changes))


def paired_by_seed(runs: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]],
                   value: Callable[[Mapping[str, Any]], float | None],
                   reference_value: Callable[[Mapping[str, Any]], float | None] | None = None
                   ) -> tuple[list[float], list[float]]:
  """``(mine, theirs)``: ``value`` of each run and ``reference_value`` (default ``value``)
  of the reference run with the same ``config.seed``, for the seeds both have (in the
  order of ``runs``), ready for :func:`paired_difference`.

  >>> runs = [{"config": {"seed": s}, "x": x} for s, x in ((0, 0.9), (1, 0.8), (2, 0.7))]
  >>> ref = [{"config": {"seed": s}, "x": x} for s, x in ((1, 0.5), (0, 0.6))]
  >>> paired_by_seed(runs, ref, lambda r: r["x"])
  ([0.9, 0.8], [0.6, 0.5])
  """
  reference_value = reference_value or value
  theirs_by_seed = {r["config"]["seed"]: reference_value(r) for r in reference}
  mine, theirs = [], []
  for run in runs:
    other = theirs_by_seed.get(run["config"]["seed"])
    own = value(run)
    if other is not None and own is not None:
      mine.append(own)
      theirs.append(other)
  return mine, theirs


def _columns(prefix: str, interval: Interval | None):
  """Flat CSV columns ``<prefix>_{mean,std,ci95_low,ci95_high,n}`` (NaN, n = 0 for None)."""
  if interval is None:
    mean = std = low = high = math.nan
    n = 0
  else:
    mean, std, low, high, n = (
        interval.mean, interval.std, interval.low, interval.high, interval.n)
  return {f"{prefix}_mean": mean, f"{prefix}_std": std, f"{prefix}_ci95_low": low,
          f"{prefix}_ci95_high": high, f"{prefix}_n": n}


def _interval_columns(prefix: str, values: Sequence[float], confidence: float):
  """`_columns` of `mean_ci` over ``values`` (NaN when empty)."""
  return _columns(prefix, mean_ci(values, confidence) if values else None)


def _metric(results: Mapping[str, Any], model: str, key: str) -> float | None:
  value = (results.get(model) or {}).get(key)
  return None if value is None else float(value)


def aggregate_point(
    results: Sequence[Mapping[str, Any]], confidence: float = 0.95,
    headline: str | None = None) -> dict[str, float | int | str]:
  """Summarises the `results.json` dicts of one grid point (one per finished seed).

  Columns, each as ``_mean, _std, _ci95_low, _ci95_high, _n`` (see `mean_ci`):
  every `METRICS_BY_HEADLINE` key of the distilled student (``test_accuracy`` ...),
  ``baseline_<headline>`` and ``kd_gain`` = `paired_difference` of the student's
  and the baseline's final headline metric over the seeds that have both (all NaN
  with n = 0 when no run trained a baseline). A metric missing from a run is
  skipped for that run only, so its ``_n`` may be smaller than the number of seeds.
  ``headline`` names the headline metric (a string column).

  Args:
    results: the per-seed results dicts (docs/results.md), possibly empty.
    confidence: the coverage of every interval.
    headline: default `headline_of(results)`.

  Returns:
    A flat dict, the columns of `summary.csv`.
  """
  headline = headline or headline_of(results)
  row: dict[str, float | int | str] = {"headline": headline}
  for key, _ in METRICS_BY_HEADLINE[headline]:
    values = [v for r in results if (v := _metric(r, "student", key)) is not None]
    row.update(_interval_columns(key, values, confidence))
  pairs = [
      (s, b) for r in results
      if (s := _metric(r, "student", headline)) is not None
      and (b := _metric(r, "baseline", headline)) is not None
  ]
  row.update(_interval_columns(
      f"baseline_{headline}", [b for _, b in pairs], confidence))
  row.update(_columns("kd_gain", paired_difference(
      [s for s, _ in pairs], [b for _, b in pairs], confidence) if pairs else None))
  for column, model, key in OMITTED_CLASS_COLUMNS:
    values = [r[model]["omitted_classes"][key] for r in results
              if "omitted_classes" in (r.get(model) or {})]
    row.update(_interval_columns(column, values, confidence))
  return row


def baseline_over_seeds(
    results: Iterable[Mapping[str, Any]], confidence: float = 0.95,
    headline: str = "test_accuracy") -> Interval | None:
  """The from-scratch baseline's final headline metric, pooled over the whole sweep.

  Where a grid varies only distillation settings, every point has the same baseline for
  a seed (one shared run, ``baseline.logs`` naming its cache entry); values are first
  averaged per seed (repeats of one run are identical) and the interval is taken over
  seeds. A grid that changes the baseline itself (the budget, ``baseline_steps``, the
  data) has no one baseline to pool: each point's KD gain is paired with its own
  (`aggregate_point`).

  Args:
    results: results dicts of all finished runs; ``config.seed`` identifies the seed.
    confidence: the coverage of the interval.

  Returns:
    `Interval` over distinct seeds, or None when no run has a baseline or when one seed
    has several different baselines.
  """
  by_seed: dict[Any, list[float]] = {}
  runs_of_seed: dict[Any, set[str]] = {}
  for r in results:
    accuracy = _metric(r, "baseline", headline)
    if accuracy is not None:
      seed = (r.get("config") or {}).get("seed")
      by_seed.setdefault(seed, []).append(accuracy)
      # The shared run's directory (its cache key); records written before it was
      # reported count as one run.
      runs_of_seed.setdefault(seed, set()).add(os.path.basename(r["baseline"].get("logs", "")))
  if not by_seed or any(len(runs) > 1 for runs in runs_of_seed.values()):
    return None
  return mean_ci([float(np.mean(v)) for v in by_seed.values()], confidence)


# ----------------------------------------------------------------- summary tables
# Pure formatting of the rows that `kd_jax.sweep` writes to summary.csv/summary.md.


def format_value(value: Any) -> str:
  """A grid value for people: 4.0 -> '4', True -> 'true', 'kl' -> 'kl'."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value)


def sort_rows(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  """Best final headline metric first (the lowest for `LOWER_IS_BETTER`); empty points last."""
  def key(row):
    headline = row.get("headline", "test_accuracy")
    mean = row[f"{headline}_mean"]
    sign = 1.0 if headline in LOWER_IS_BETTER else -1.0
    return (math.isnan(mean), sign * mean if not math.isnan(mean) else 0.0)
  return sorted(rows, key=key)


def csv_columns(keys: Sequence[str], headline: str = "test_accuracy") -> list[str]:
  """summary.csv header: point slug, grid keys, then 5 columns per statistic."""
  stats = ([key for key, _ in METRICS_BY_HEADLINE[headline]]
           + [f"baseline_{headline}", "kd_gain"]
           + [column for column, _, _ in OMITTED_CLASS_COLUMNS])
  numeric = [f"{s}_{c}" for s in stats for c in ("mean", "std", "ci95_low",
                                                   "ci95_high", "n")]
  return ["point", *keys, "headline", *numeric, "runs_failed", "runs_pending"]


def _pm(mean: float, half: float, scale: float = 100.0, digits: int = 2,
        sign: bool = False) -> str:
  """``mean ± half`` after scaling; 'n/a' for a missing value, no ± when n = 1 (the
  table's n column says why)."""
  if math.isnan(mean):
    return "n/a"
  text = f"{mean * scale:{'+' if sign else ''}.{digits}f}"
  return text if math.isnan(half) else f"{text} ± {half * scale:.{digits}f}"


def format_interval(interval: Interval | None, *, scale: float = 100.0, digits: int = 2,
                    sign: bool = False) -> str:
  """``mean ± half-width`` of an `Interval` after scaling; '–' for none, no ± when n = 1."""
  if interval is None or math.isnan(interval.mean):
    return "–"
  return _pm(interval.mean, interval.half_width, scale, digits, sign)


def _column(row: Mapping[str, Any], stat: str, **kwargs) -> str:
  mean = row[f"{stat}_mean"]
  return _pm(mean, (row[f"{stat}_ci95_high"] - mean), **kwargs)


def markdown_summary(
    rows: Sequence[Mapping[str, Any]], *, keys: Sequence[str], experiment: str | None,
    grid: Mapping[str, Sequence[Any]], seeds: Sequence[Any],
    status_counts: Mapping[str, int], teacher_accuracies: Sequence[float],
    baseline: Interval | None, failures: Sequence[str], plots: Sequence[str],
    confidence: float = 0.95, headline: str = "test_accuracy") -> str:
  """The human-readable summary.md: header, table sorted by the final headline metric, notes.

  Args:
    rows: per point, ``{"point": {key: value}, **aggregate_point(...), "runs_failed",
      "runs_pending"}``.
    keys: the grid keys (table columns, in flag order).
    experiment: the config's experiment name.
    grid: key -> swept values.
    seeds: the seeds of every point.
    status_counts: run status -> number of runs.
    teacher_accuracies: final headline metric of each distinct teacher seen.
    baseline: `baseline_over_seeds`, or None without baselines.
    failures: one line per failed run.
    plots: PNG file names to embed.
    confidence: the coverage the intervals were computed with.
    headline: the headline metric (`METRICS_BY_HEADLINE`).
  """
  level = f"{confidence:.0%}"
  (_, final_name), (best_key, best_name), *extra = METRICS_BY_HEADLINE[headline]
  extra = [(key, *SUMMARY_COLUMNS.get(key, (name, 1.0, 4))) for key, name in extra]
  final_name = final_name.removeprefix("final ")
  scale, unit, digits = DISPLAY[headline]
  shown = lambda value: f"{value * scale:.{digits}f}{'' if unit == '%' else ' '}{unit}"
  lines = [f"# Sweep summary: {experiment or 'unnamed experiment'}", ""]
  if teacher_accuracies:
    lo, hi = min(teacher_accuracies), max(teacher_accuracies)
    lines.append(f"- **Teacher** final {final_name}: {shown(lo)}" if lo == hi else
                 f"- **Teachers** ({len(teacher_accuracies)}) final {final_name}: "
                 f"{shown(np.mean(teacher_accuracies))} (range {shown(lo)} – {shown(hi)})")
  if baseline is not None:
    lines.append(f"- **Baseline** (student trained from scratch, no teacher) final "
                 f"{final_name}: {_pm(baseline.mean, baseline.half_width, scale, digits)} "
                 f"{unit} over {baseline.n} seed(s)")
  axes = " × ".join(f"`{k}` ∈ {{{', '.join(map(format_value, v))}}}" for k, v in grid.items())
  counts = ", ".join(f"{n} {status}" for status, n in status_counts.items() if n)
  lines += [f"- Grid: {axes or '(none: the base config)'}; seeds "
            f"{', '.join(map(str, seeds))}. Runs: {counts}.", ""]
  has_gain = any(row["kd_gain_n"] for row in rows)
  gain_unit = "pp" if unit == "%" else unit
  header = ["#", *(f"`{k}`" for k in keys), f"**final {final_name} {unit}** (headline)",
            f"{best_name} {unit}", *([f"KD gain ({gain_unit}, paired)"] if has_gain else []),
            *(title for _, title, _, _ in extra), "n"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for rank, row in enumerate(sort_rows(rows), 1):
    cells = [str(rank), *(format_value(row["point"][k]) for k in keys),
             "**" + _column(row, headline, scale=scale, digits=digits) + "**",
             _column(row, best_key, scale=scale, digits=digits),
             *([_column(row, "kd_gain", sign=True, scale=scale, digits=digits)]
               if has_gain else []),
             *(_column(row, key, scale=factor, digits=places)
               for key, _, factor, places in extra),
             str(row[f"{headline}_n"]) + (f" ({row['runs_failed']} failed)"
                                            if row["runs_failed"] else "")]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
      "", f"Rows are sorted by final {final_name}, best first (`#` is the rank"
      f"{'; lower is better' if headline in LOWER_IS_BETTER else ''}).",
      "", f"Values are mean ± half-width of the {level} confidence interval over the "
      "n seeds of each point (Student t with n − 1 degrees of freedom; n = 1 gives no "
      f"interval). **Final** {final_name}, after the last training step, is the "
      "headline; **best-step** is the best of the evaluations during training, "
      "which selects on the test set and is optimistic, so it is shown for comparison "
      "only.",
  ]
  if has_gain:
    lines.append(f"KD gain = student − baseline final {final_name} in "
                 f"{'percentage points' if unit == '%' else unit}"
                 f"{' (negative is better)' if headline in LOWER_IS_BETTER else ''}, paired "
                 "over the same seeds (paired t interval).")
  if any(0 < row[f"{headline}_n"] < 3 for row in rows):
    lines += ["", "**Too few seeds for a usable interval:** with n = 2 the t interval has "
              "one degree of freedom (t = 12.71 for 95%), so its half-width is about 9× "
              "the standard deviation and it can extend past what a metric can take (below 0 for ECE, "
              "above 100% for accuracy). Run at least 3 seeds per point (`--seeds 3`) "
              "before reading differences from this table."]
  if any(row.get("omitted_student_n") for row in rows):
    lines += ["", "## Omitted classes (Hinton et al. 2015 §3)", "",
              "Accuracy % on the test examples of the classes left out of the students' "
              "transfer set, before → after adding the bias shift that maximises overall "
              "test accuracy (as in the paper).", "",
              "| # | distilled student | from scratch | distilled, overall test acc. after "
              "correction |", "|---|---|---|---|"]
    for rank, row in enumerate(sort_rows(rows), 1):
      lines.append(
          f"| {rank} | {_column(row, 'omitted_student')} → "
          f"{_column(row, 'omitted_student_corrected')} | {_column(row, 'omitted_baseline')} → "
          f"{_column(row, 'omitted_baseline_corrected')} | "
          f"{_column(row, 'student_corrected_test_accuracy')} |")
  lines += [""] + [f"![{name}]({name})" for name in plots]
  if failures:
    lines += ["", "## Failed runs", "", *(f"- {line}" for line in failures)]
  return "\n".join(lines) + "\n"
