r"""The cross-tokenizer table of a text sweep (issue 25).

    python -m kd_jax.tokenizer_table --workdir=runs/xtok

Reads a ``kd_jax.sweep`` directory of text runs (experiments/text/cross_tokenizer.py) and
writes ``tokenizer_table.md`` next to its ``sweep.json``: per point, the student's
tokenizer (``dataset.student_vocab_size``; the teacher's when 0) and method, held-out
bits per byte (the metric that compares tokenizers), mean ± the half-width of the 95%
Student-t interval over seeds; for a distilled point, its paired difference to the
student of the same tokenizer and steps trained alone (``method='none'`` on the corpus, same seeds;
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


def _budget(results: Mapping[str, Any]) -> tuple[int, int | None]:
  """What a point is compared within: its student's tokenizer and its training steps."""
  return _tokenizer(results), results["config"].get("train", {}).get("steps")


def _by_seed(results: Sequence[Mapping[str, Any]]) -> dict[int, float]:
  return {r["config"]["seed"]: r["student"][METRIC] for r in results
          if r["student"].get(METRIC) is not None}


def _interval(interval: stats.Interval, signed: bool = False) -> str:
  mean = f"{interval.mean:+.4f}" if signed else f"{interval.mean:.4f}"
  return mean if math.isnan(interval.half_width) else f"{mean} ± {interval.half_width:.4f}"


def _students_alone(runs: Mapping[str, Sequence[Mapping[str, Any]]]
                    ) -> dict[tuple[int, int | None], tuple[str, dict[int, float]]]:
  """``{(tokenizer, steps): (point, bits per byte by seed)}`` of the points trained alone.

  Raises:
    ValueError: two such points share a tokenizer and a budget (which would a distilled
      point be compared with?).
  """
  alone = {}
  for point, results in runs.items():
    if report.student_method(results[0]) != "none":
      continue
    key = _budget(results[0])
    if key in alone:
      raise ValueError(f"points {alone[key][0]!r} and {point!r} are both the student alone "
                       f"with {key[0] or 'the teacher'}'s tokenizer and {key[1]} steps")
    alone[key] = (point, _by_seed(results))
  return alone


def _paired(results: Sequence[Mapping[str, Any]], alone) -> tuple[stats.Interval, float] | None:
  """A distilled point's paired difference to its student alone (same tokenizer, steps and
  seeds) and the alone students' mean bits per byte over those seeds; None for a student
  alone, or when there is none to pair with."""
  if report.student_method(results[0]) == "none" or _budget(results[0]) not in alone:
    return None
  values, reference = _by_seed(results), alone[_budget(results[0])][1]
  common = sorted(set(values) & set(reference))
  if not common:
    return None
  diff = stats.paired_difference([values[s] for s in common], [reference[s] for s in common])
  return diff, sum(reference[s] for s in common) / len(common)


def late_change(results: Mapping[str, Any], last: float = 0.2) -> float | None:
  """The plateau check of one run: bits per byte at its final evaluation minus at its first
  evaluation in the last ``last`` of the steps (None without two evaluations there, or
  without a recorded step count). The history holds per-token nll; on one held-out text
  bits per byte is a fixed multiple of it (tokens / bytes / ln 2), taken from the run's
  final values."""
  student = results["student"]
  if not student.get("nll") or student.get(METRIC) is None or not student.get("steps"):
    return None
  change = stats.late_change(student.get("history", []), "nll", student["steps"], last)
  return None if change is None else change * student[METRIC] / student["nll"]


def calibration(runs: Mapping[str, Sequence[Mapping[str, Any]]],
                pairs: Mapping[str, tuple[stats.Interval, float] | None]) -> list[str]:
  """The table's calibration lines: per point, the seed-to-seed sd of bits per byte, its
  change over the last 20% of the steps (mean over seeds: a plateau is near 0) and the
  smallest true difference to its student alone that a paired 95% interval over these
  seeds excludes from 0 four times in five
  (:func:`kd_jax.reporting.stats.detectable_difference`): from the observed spread of the
  paired differences for a distilled point (``pairs``: each point's :func:`_paired`), from
  √2 × its own sd for a student alone (as if the pairs shared nothing: what a method
  compared with it would face at most, unless the method's seeds spread more)."""
  rows = []
  for point, results in runs.items():
    values = _by_seed(results)
    if len(values) < 2:
      continue
    changes = [c for c in map(late_change, results) if c is not None]
    change = f"{sum(changes) / len(changes):+.4f}" if changes else "–"
    sd = stats.mean_ci(list(values.values())).std
    paired = pairs[point]
    if report.student_method(results[0]) == "none":
      detectable = f"{stats.detectable_difference(math.sqrt(2) * sd, len(values)):.4f} (√2·sd)"
    elif paired is not None and paired[0].n > 1:
      detectable = f"{stats.detectable_difference(paired[0].std, paired[0].n):.4f}"
    else:
      detectable = "–"
    rows.append(f"| `{point}` | {sd:.4f} | {change} | {detectable} | {len(values)} |")
  if not rows:
    return []
  return ["", "Calibration: the seed-to-seed standard deviation of bits per byte; its change "
          "over the last 20% of the steps (final minus the first evaluation there, mean over "
          "seeds: a plateau is near 0, a falling curve is negative); and the smallest true "
          "difference to the same tokenizer's student alone that a paired 95% interval over "
          "these seeds would exclude from 0 four times in five (80% power): from the paired "
          "differences' spread for a distilled point, from √2 × its sd for a student alone.",
          "", "| point | sd (bits/byte) | change, last 20% of steps | detectable Δ | n |",
          "|---|---|---|---|---|", *rows]


def table(sweep: sweep_dir.SweepDir) -> str:
  runs = {point: results for point, results in sweep.by_point.items() if results}
  if not runs:
    return "No finished runs yet.\n"
  teacher = [r["teacher"][METRIC] for results in runs.values() for r in results
             if r["teacher"].get(METRIC) is not None]
  teacher_mean = sum(teacher) / len(teacher) if teacher else math.nan
  alone = _students_alone(runs)
  lines = [f"Teacher: {teacher_mean:.4f} bits per byte.", "",
           "| point | student tokenizer | method | bits/byte | Δ vs alone (paired) | "
           "gap recovered | n |", "|---|---|---|---|---|---|---|"]
  verdicts = []
  pairs = {point: _paired(results, alone) for point, results in runs.items()}
  for point, results in runs.items():
    size, method = _tokenizer(results[0]), report.student_method(results[0])
    values = _by_seed(results)
    cells = [f"`{point}`", f"{size:,} tokens" if size else "the teacher's", method,
             _interval(stats.mean_ci(list(values.values())))]
    if pairs[point] is not None:
      diff, base = pairs[point]
      gap = -diff.mean / (base - teacher_mean)
      cells += [_interval(diff, signed=True), f"{100 * gap:.1f}%"]
      verdict = ("beats" if diff.high < 0 else "is worse than" if diff.low > 0 else
                 "is not separated from")
      verdicts.append(f"- `{point}` {verdict} the student alone ({_interval(diff, True)} "
                      f"bits per byte, {diff.n} paired seeds).")
    else:
      cells += ["–", "–"]
    lines.append("| " + " | ".join(cells) + f" | {len(values)} |")
  seeds = sorted({r["config"]["seed"] for results in runs.values() for r in results})
  lines += ["", f"Seeds {', '.join(map(str, seeds))}. Bits per byte: held-out nll in bits "
            "over the UTF-8 bytes of the targets' text (lower is better); Δ: the point minus "
            "the student alone of the same tokenizer and steps, per seed, mean ± 95% t "
            "half-width; gap recovered: (alone − point) / (alone − teacher) on the means.", ""]
  if not verdicts:
    verdicts = ["- Every point is a student alone: no method to compare." if
                all(report.student_method(r[0]) == "none" for r in runs.values()) else
                "- No point has a student alone to compare with."]
  return "\n".join(lines + verdicts + calibration(runs, pairs)) + "\n"


def write(workdir: str, *, allow_mixed_code: bool = False) -> str:
  """Writes ``tokenizer_table.md`` in the sweep ``workdir`` and returns its text."""
  text = table(sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code))
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(text)
  return text
