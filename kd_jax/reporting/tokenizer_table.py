r"""The cross-tokenizer table of a text sweep (issue 25).

    python -m kd_jax.tokenizer_table --workdir=runs/xtok

Reads a ``kd_jax.sweep`` directory of text runs (experiments/text/cross_tokenizer.py) and
writes ``tokenizer_table.md`` next to its ``sweep.json``: per point, the student's
tokenizer (``dataset.student_vocab_size``; the teacher's when 0) and method, held-out
bits per byte (the metric that compares tokenizers), mean ± the half-width of the 95%
Student-t interval over seeds; for a distilled point, its paired difference to the
student of the same tokenizer trained alone (``method='none'`` on the corpus, same seeds;
a ``seqkd`` point, ``student_data='transfer'``, is one of the distilled ones) and the gap
it recovers, ``(alone − student) / (alone − teacher)`` on the means. Then, said plainly,
which points beat the student alone with an interval that excludes 0, and the
calibration: seed spread, plateau and the smallest detectable difference.

Only the runs' ``results.json`` are read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from kd_jax.reporting import report, stats, sweep_dir

TABLE_FILE = "tokenizer_table.md"
METRIC = "bits_per_byte"


def _tokenizer(results: Mapping[str, Any]) -> int:
  return int(results["config"]["dataset"].get("student_vocab_size", 0))


def _by_seed(results: Sequence[Mapping[str, Any]]) -> dict[int, float]:
  return {r["config"]["seed"]: r["student"][METRIC] for r in results
          if r["student"].get(METRIC) is not None}


def _interval(interval: stats.Interval, signed: bool = False) -> str:
  mean = f"{interval.mean:+.4f}" if signed else f"{interval.mean:.4f}"
  return mean if math.isnan(interval.half_width) else f"{mean} ± {interval.half_width:.4f}"


def late_change(results: Mapping[str, Any], last: float = 0.2) -> float | None:
  """The plateau check of one run: bits per byte at its final evaluation minus at its first
  evaluation in the last ``last`` of the steps (None without two evaluations there). The
  history holds per-token nll; on one held-out text bits per byte is a fixed multiple of
  it (tokens / bytes / ln 2), taken from the run's final values."""
  student = results["student"]
  if not student.get("nll") or student.get(METRIC) is None:
    return None
  per_nll = student[METRIC] / student["nll"]
  late = [h for h in student.get("history", [])
          if "nll" in h and h["step"] >= (1 - last) * student.get("steps", 0)]
  if len(late) < 2:
    return None
  return (late[-1]["nll"] - late[0]["nll"]) * per_nll


def calibration(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                alone: Mapping[int, Mapping[int, float]]) -> list[str]:
  """The table's calibration lines: per point, the seed-to-seed sd of bits per byte, its
  change over the last 20% of the steps (mean over seeds: a plateau is near 0) and, for a
  distilled point, the smallest true difference to its student alone that a paired 95%
  interval over these seeds excludes from 0 four times in five
  (:func:`kd_jax.reporting.stats.detectable_difference`, from the observed spread of the
  paired differences)."""
  rows = []
  for point, results in runs.items():
    values = _by_seed(results)
    if len(values) < 2:
      continue
    changes = [c for c in map(late_change, results) if c is not None]
    change = f"{sum(changes) / len(changes):+.4f}" if changes else "–"
    reference = alone.get(_tokenizer(results[0]))
    common = (sorted(set(values) & set(reference))
              if reference and report.student_method(results[0]) != "none" else [])
    detectable = "–"
    if len(common) > 1:
      diff = stats.paired_difference([values[s] for s in common],
                                     [reference[s] for s in common])
      detectable = f"{stats.detectable_difference(diff.std, diff.n):.4f}"
    sd = stats.mean_ci(list(values.values())).std
    rows.append(f"| `{point}` | {sd:.4f} | {change} | {detectable} | {len(values)} |")
  if not rows:
    return []
  return ["", "Calibration: the seed-to-seed standard deviation of bits per byte; its change "
          "over the last 20% of the steps (final minus the first evaluation there, mean over "
          "seeds: a plateau is near 0, a falling curve is negative); and the smallest true "
          "difference to the same tokenizer's student alone that a paired 95% interval over "
          "these seeds would exclude from 0 four times in five (80% power).", "",
          "| point | sd (bits/byte) | change, last 20% of steps | detectable Δ | n |",
          "|---|---|---|---|---|", *rows]


def table(sweep: sweep_dir.SweepDir) -> str:
  runs = {point: results for point, results in sweep.by_point.items() if results}
  if not runs:
    return "No finished runs yet.\n"
  teacher = [r["teacher"][METRIC] for results in runs.values() for r in results
             if r["teacher"].get(METRIC) is not None]
  teacher_mean = sum(teacher) / len(teacher) if teacher else math.nan
  alone = {_tokenizer(results[0]): _by_seed(results) for results in runs.values()
           if report.student_method(results[0]) == "none"}
  lines = [f"Teacher: {teacher_mean:.4f} bits per byte.", "",
           "| point | student tokenizer | method | bits/byte | Δ vs alone (paired) | "
           "gap recovered | n |", "|---|---|---|---|---|---|---|"]
  verdicts = []
  for point, results in runs.items():
    size, method = _tokenizer(results[0]), report.student_method(results[0])
    values = _by_seed(results)
    cells = [f"`{point}`", f"{size:,} tokens" if size else "the teacher's", method,
             _interval(stats.mean_ci(list(values.values())))]
    reference = alone.get(size)
    common = sorted(set(values) & set(reference or {})) if method != "none" else []
    if common:
      diff = stats.paired_difference([values[s] for s in common],
                                     [reference[s] for s in common])
      base = sum(reference[s] for s in common) / len(common)
      gap = (base - sum(values[s] for s in common) / len(common)) / (base - teacher_mean)
      cells += [_interval(diff, signed=True), f"{100 * gap:.1f}%"]
      high = diff.mean + diff.half_width
      low = diff.mean - diff.half_width
      verdict = ("beats" if high < 0 else "is worse than" if low > 0 else
                 "is not separated from")
      verdicts.append(f"- `{point}` {verdict} the student alone ({_interval(diff, True)} "
                      f"bits per byte, {len(common)} paired seeds).")
    else:
      cells += ["–", "–"]
    lines.append("| " + " | ".join(cells) + f" | {len(values)} |")
  seeds = sorted({r["config"]["seed"] for results in runs.values() for r in results})
  lines += ["", f"Seeds {', '.join(map(str, seeds))}. Bits per byte: held-out nll in bits "
            "over the UTF-8 bytes of the targets' text (lower is better); Δ: the point minus "
            "the same tokenizer's student alone, per seed, mean ± 95% t half-width; gap "
            "recovered: (alone − point) / (alone − teacher) on the means.", ""]
  lines += verdicts or ["- No point has a student alone to compare with."]
  return "\n".join(lines + calibration(runs, alone)) + "\n"


def write(workdir: str, *, allow_mixed_code: bool = False) -> str:
  """Writes ``tokenizer_table.md`` in the sweep ``workdir`` and returns its text."""
  text = table(sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code))
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(text)
  return text
