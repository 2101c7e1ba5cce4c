r"""The method-comparison table of a language-model sweep, in the style of DeepSeek-R1's
distillation table, and its plots.

    python -m kd_jax.llm_table --workdir=runs/r1_table [--reference=sft]

Reads a finished (or running) `kd_jax.sweep` directory whose runs are language-model
experiments and writes, next to ``sweep.json``:

* ``llm_table.md`` — the teacher and one row per point: parameters, greedy exact
  match and pass@k on the held-out split (mean ± 95% t-interval over seeds),
  retention (student / teacher exact match), the gap recovered
  (student − ref) / (teacher − ref) against the reference point (``sft``), the paired
  difference to the reference over the same seeds with its interval and a plain
  verdict, training tokens, wall time, and exact match on the harder splits
  (``ood_exact_match``) when the runs have them;
* ``exact_match_vs_tokens.png`` — each point's evaluations during training (mean
  over seeds) against the training tokens seen;
* ``policy_gradient_curves.png`` — for the policy-gradient students (``grpo``,
  ``minillm``): the verifier's and the teacher's rewards of their samples and their KL
  to the starting SFT student, step by step (mean over seeds), from their logs;
* ``preference_curves.png`` — for the preference students (``dpo`` and its kin): their
  chosen and rejected answers' sequence log-probabilities and the reward margin, step by
  step, with the start and end values in ``llm_table.md`` (likelihood displacement:
  both falling);
* ``transfer_vs_temperature.png`` — when the points differ in the teacher's
  sampling temperature for the transfer set: its acceptance rate, its distinct
  accepted answers per prompt and the student's exact match against it.

Only the runs' ``results.json`` (and the policy-gradient students' ``metrics.jsonl``) are
read, so it can run while the sweep is still going.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kd_jax.reporting import stats, sweep_dir
from kd_jax.core.errors import ConfigError
from kd_jax.reporting.stats import Interval

TABLE_FILE = "llm_table.md"
TEMPERATURE_KEY = ("transfer", "sampling", "temperature")


BUDGET_FIELDS = ("train_tokens", "wall_seconds")


def _warm_start(results: Mapping[str, Any]) -> Mapping[str, Any] | None:
  """The report of the trained student a warm-started student began from, with the budget
  of everything before it: ``student_init="baseline"``: the baseline's report;
  ``"seqkd"``: the seqkd start's (``results["start"]``: the baseline fine-tuned on the
  teacher's transfer set), its tokens, wall time and FLOPs added to the baseline's."""
  init = results["config"].get("student_init")
  if init == "baseline":
    return results["baseline"]
  if init != "seqkd":
    return None
  base, start = results["baseline"], results["start"]
  chained = {**start, **{f: start.get(f, 0) + base.get(f, 0) for f in BUDGET_FIELDS}}
  if "flops" in start and "flops" in base:
    chained["flops"] = {side: start["flops"][side] + base["flops"][side]
                        for side in ("student", "teacher")}
  else:
    chained.pop("flops", None)
  return chained


def _largest_k(report: Mapping[str, Any]) -> str | None:
  ks = sorted(report.get("pass_at_k", {}), key=int)
  return ks[-1] if ks else None


def point_row(name: str, runs: Sequence[Mapping[str, Any]],
              reference: Sequence[Mapping[str, Any]], teacher_exact_match: float,
              confidence: float = 0.95) -> dict:
  """One table row: the point's statistics over its seeds and its comparison to ``reference``.

  The comparison pairs runs by seed (same initialisation and batch order, so the
  seed-to-seed variance they share cancels: `kd_jax.reporting.stats.paired_difference`).
  """
  students = [r["student"] for r in runs]
  exact = [s["exact_match"] for s in students]
  k = _largest_k(students[0])
  warm = _warm_start(runs[0]) or {}
  row = {
      "name": name, "n": len(runs), "params": students[0]["params"],
      "exact_match": stats.mean_ci(exact, confidence),
      "pass_k": k, "pass_at_k": stats.mean_ci([s["pass_at_k"][k] for s in students], confidence)
      if k else None,
      "retention": float(np.mean(exact)) / teacher_exact_match if teacher_exact_match else math.nan,
      # A student that started from the trained baseline also spent the baseline's budget.
      "train_tokens": (students[0].get("train_tokens", 0) + warm.get("train_tokens", 0)) or None,
      "wall_seconds": float(np.mean([s["wall_seconds"] + (_warm_start(r) or {}).get(
          "wall_seconds", 0.0) for r, s in zip(runs, students)])),
      "ood": {split: stats.mean_ci([s["ood_exact_match"][split] for s in students], confidence)
              for split in students[0].get("ood_exact_match", {})},
      "acceptance_rate": (float(np.mean([r["transfer_set"]["acceptance_rate"] for r in runs]))
                          if all("transfer_set" in r for r in runs) else None),
      **_mean_flops(runs),
  }
  row["late_change"] = stats.mean_late_change(runs, "exact_match")
  mine, theirs = stats.paired_by_seed(runs, reference, lambda r: r["student"]["exact_match"])
  row["detectable"] = math.nan
  if mine:
    row["difference"] = stats.paired_difference(mine, theirs, confidence)
    row["detectable"] = stats.detectable_difference(row["difference"].std, row["difference"].n,
                                                    confidence)
    # Of the means (a per-seed ratio explodes on a seed where the reference nearly
    # matches the teacher): the interval is the paired difference's.
    gap = teacher_exact_match - float(np.mean(theirs))
    row["gap_recovered"] = row["difference"].mean / gap if gap else math.nan
  else:
    row["difference"] = row["gap_recovered"] = None
  # A student that started from the trained baseline: its gain over that very start, in
  # greedy exact match and in pass@1 of sampled answers (what a policy gradient sharpens).
  warm_runs = [(s, _warm_start(r)) for r, s in zip(runs, students) if _warm_start(r) is not None]
  row["difference_to_start"] = row["pass1_difference_to_start"] = None
  if warm_runs:
    row["difference_to_start"] = stats.paired_difference(
        [s["exact_match"] for s, _ in warm_runs], [b["exact_match"] for _, b in warm_runs],
        confidence)
    if all("1" in s.get("pass_at_k", {}) and "1" in b.get("pass_at_k", {})
           for s, b in warm_runs):
      row["pass1_difference_to_start"] = stats.paired_difference(
          [s["pass_at_k"]["1"] for s, _ in warm_runs],
          [b["pass_at_k"]["1"] for _, b in warm_runs], confidence)
  return row


def run_flops(results: Mapping[str, Any]) -> dict[str, int] | None:
  """A run's counted FLOPs (kd_jax/llm/compute.py), ``{"student", "teacher"}``, or None for
  a run recorded without them.

  The student's: its phase's steps, its warm start's (the trained baseline, and a seqkd
  start's phase on the transfer set) when it began from one, and the one-off scoring of
  preference pairs. The teacher's: its work for this student
  (forwards in the steps, the transfer set it wrote, the pairs it scored or wrote),
  not its own training (the teacher row's).
  """
  student = results["student"]
  if "flops" not in student:
    return None
  warm = _warm_start(results)
  if warm is not None and "flops" not in warm:
    return None
  pairs = results.get("preference_pairs", {})
  return {
      "student": (student["flops"]["student"] + (warm["flops"]["student"] if warm else 0)
                  + pairs.get("student_flops", 0)),
      # (a seqkd start's transfer set included: the run records the set it trained on)
      "teacher": (student["flops"]["teacher"] + (warm["flops"]["teacher"] if warm else 0)
                  + results.get("transfer_set", {}).get("teacher_flops", 0)
                  + pairs.get("teacher_flops", 0)),
  }


def _mean_flops(runs: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
  counted = [run_flops(r) for r in runs]
  if any(c is None for c in counted):
    return {"student_flops": None, "teacher_flops": None}
  return {f"{side}_flops": float(np.mean([c[side] for c in counted]))
          for side in ("student", "teacher")}


def _flops(count: float | None) -> str:
  return "–" if count is None else ("0" if not count else f"{count:.2e}")


def verdict(name: str, difference: Interval | None, reference: str) -> str:
  """Whether a point beats the reference with a paired interval that excludes 0."""
  if name == reference:
    return "(reference)"
  if difference is None:
    return "–"
  if difference.n < 2:
    return "n = 1: no interval"
  if difference.low > 0:
    return f"**beats {reference}**"
  if difference.high < 0:
    return f"worse than {reference}"
  return "no difference shown"


def _pm(interval: Interval | None, scale: float = 100.0, digits: int = 1, sign=False) -> str:
  return stats.format_interval(interval, scale=scale, digits=digits, sign=sign)


def _tokens(count: int | None) -> str:
  if not count:
    return "–"
  return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


def _teacher(runs_by_point: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict:
  """The teacher's report (every run of a table shares one teacher: checked) and its budget."""
  reports = [r for runs in runs_by_point.values() for r in runs]
  sources = {r["teacher"].get("source") for r in reports}
  if len(sources) > 1:
    raise ConfigError(None, f"the sweep's runs have {len(sources)} different teachers "
                      f"({sorted(sources)}): a table compares the students of one teacher")
  teacher, config = reports[0]["teacher"], reports[0]["config"]
  steps = teacher.get("steps")
  tokens = (steps * config["teacher"]["train"]["batch_size"] * (config["dataset"]["max_len"] - 1)
            if steps else None)
  return {**teacher, "train_tokens": tokens}


def markdown(rows: Sequence[dict], teacher: Mapping[str, Any], *, reference: str,
             experiment: str | None, seeds: Sequence[int]) -> str:
  """``llm_table.md``: the table, what each column means, and the verdicts in words."""
  k = next((r["pass_k"] for r in rows if r["pass_k"]), None)
  splits = sorted({s for r in rows for s in r["ood"]})
  header = ["model", "params", "exact match %", *([f"pass@{k} %"] if k else []),
            "retention %", "gap recovered %", f"Δ vs {reference} (pp, paired)", "verdict",
            "train tokens", "student FLOPs", "teacher FLOPs", "wall s",
            *(f"OOD {s} %" for s in splits), "n"]
  lines = [f"# {experiment or 'language-model sweep'}: distillation methods compared", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  t_ood = teacher.get("ood_exact_match", {})
  t_pass = teacher.get("pass_at_k", {}).get(k) if k else None
  lines.append("| " + " | ".join([
      "teacher", f"{teacher['params']:,}", f"{teacher['exact_match'] * 100:.1f}",
      *([f"{t_pass * 100:.1f}" if t_pass is not None else "–"] if k else []),
      "100", "100", "–", "–",
      _tokens(teacher.get("train_tokens")), "–", _flops(teacher.get("flops", {}).get("teacher")),
      f"{teacher['train_seconds']:.0f}" if teacher.get("train_seconds") else "–",
      *(f"{t_ood[s] * 100:.1f}" if s in t_ood else "–" for s in splits), "1"]) + " |")
  for row in rows:
    if not row["n"]:
      continue
    lines.append("| " + " | ".join([
        f"`{row['name']}`", f"{row['params']:,}", _pm(row["exact_match"]),
        *([_pm(row["pass_at_k"])] if k else []),
        "–" if math.isnan(row["retention"]) else f"{row['retention'] * 100:.1f}",
        "–" if row["gap_recovered"] is None or math.isnan(row["gap_recovered"])
        else f"{row['gap_recovered'] * 100:.0f}",
        _pm(row["difference"], sign=True), verdict(row["name"], row["difference"], reference),
        _tokens(row["train_tokens"]), _flops(row["student_flops"]), _flops(row["teacher_flops"]),
        f"{row['wall_seconds']:.0f}",
        *(_pm(row["ood"].get(s)) for s in splits), str(row["n"])]) + " |")
  better = [r["name"] for r in rows if r["name"] != reference and r["difference"] is not None
            and r["difference"].n > 1 and r["difference"].low > 0]
  worse = [r["name"] for r in rows if r["name"] != reference and r["difference"] is not None
           and r["difference"].n > 1 and r["difference"].high < 0]
  unclear = [r["name"] for r in rows if r["name"] != reference and r["name"] not in better + worse
             and r["n"]]
  lines += [
      "", f"Seeds {', '.join(map(str, seeds))}. Values are mean ± half-width of the 95% "
      "Student-t interval over seeds. Exact match: greedy answers on the held-out problems; "
      f"pass@{k}: the unbiased estimator from sampled answers. Retention = student / teacher "
      f"exact match. Gap recovered = (student − {reference}) / (teacher − {reference}), of "
      f"the means over the paired seeds. Δ: student − {reference} exact match over the same seeds, paired t interval; "
      "a verdict needs the interval to exclude 0. Train tokens: every position of every "
      "training row (the budget), including its warm start's for a student that began "
      "from one (`student_init=baseline`: the trained baseline; `seqkd`: the baseline, "
      "then its fine-tuning on the transfer set). FLOPs: counted matmul FLOPs "
      "(kd_jax/llm/compute.py) of the student's training (its sampling and the baseline it "
      "started from included) and of the teacher's work for it (forwards in the steps, "
      "the transfer set or pairs it wrote); the teacher row's is its own training. Wall s: the students' training with its "
      "evaluations (and the baseline's when it started from it), the teacher's training.",
      "", f"- Beat `{reference}` (interval excludes 0): "
      f"{', '.join(f'`{n}`' for n in better) or 'none'}.",
      f"- Worse than `{reference}`: {', '.join(f'`{n}`' for n in worse) or 'none'}.",
      f"- No difference shown: {', '.join(f'`{n}`' for n in unclear) or 'none'}.",
  ]
  warm = [r for r in rows if r.get("difference_to_start") is not None]
  if warm:
    lines += ["", "Against their own start (the same seed's trained baseline, or its seqkd "
              "student for `student_init=seqkd`, whose budget they add to), paired over "
              "seeds, greedy exact match"
              + (" | pass@1 of sampled answers" if any(r["pass1_difference_to_start"]
                                                       for r in warm) else "") + ":", ""]
    for r in warm:
      parts = [f"{_pm(d, sign=True)} pp ({verdict(r['name'], d, 'its start')})"
               for d in (r["difference_to_start"], r["pass1_difference_to_start"]) if d]
      lines.append(f"- `{r['name']}`: " + " | ".join(parts))
  lines += _calibration(rows, reference)
  accepted = [f"`{r['name']}` {r['acceptance_rate']:.1%}" for r in rows
              if r["acceptance_rate"] is not None]
  if accepted:
    lines += ["", "Transfer sets (the teacher's samples the verifier accepted, mean over "
              f"seeds): {', '.join(accepted)}."]
  if splits:
    lines += ["", "OOD: exact match on problems harder than any seen in training "
              f"({', '.join(splits)}: `steps+1` and `terms+1` have one more operation, "
              "`digits+1` operands one digit longer)."]
  return "\n".join(lines) + "\n"


def _calibration(rows: Sequence[dict], reference: str) -> list[str]:
  """The table's calibration: seed spread, plateau and the smallest detectable difference."""
  shown = [r for r in rows if r["n"] > 1]
  if not shown:
    return []
  pp = lambda value: "–" if value is None or math.isnan(value) else f"{value * 100:+.1f}"
  lines = ["", "Calibration: the seed-to-seed standard deviation of exact match; its change "
           "over the last 20% of the steps (final minus the first evaluation there, mean "
           "over seeds: a plateau is near 0); and the smallest true difference to "
           f"`{reference}` that a paired 95% interval over these seeds would exclude from 0 "
           "four times in five (80% power; from the observed spread of the paired "
           "differences).", "",
           "| model | sd (pp) | change, last 20% of steps (pp) | detectable Δ (pp) | n |",
           "|---|---|---|---|---|"]
  for r in shown:
    sd = r["exact_match"].std * 100
    lines.append(f"| `{r['name']}` | {sd:.1f} | {pp(r['late_change'])} | "
                 f"{'–' if r['name'] == reference else pp(r['detectable']).lstrip('+')} | "
                 f"{r['n']} |")
  return lines


def _history_curve(runs: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
  """Training tokens and mean exact match over seeds at the evaluation steps all seeds share."""
  per_seed = [{h["step"]: h["exact_match"] for h in r["student"]["history"]} for r in runs]
  steps = sorted(set.intersection(*(set(h) for h in per_seed)))
  student = runs[0]["student"]
  tokens_per_step = student["train_tokens"] / student["steps"]
  before = (_warm_start(runs[0]) or {}).get("train_tokens", 0)
  return (before + np.array(steps) * tokens_per_step,
          np.array([np.mean([h[s] for h in per_seed]) for s in steps]))


def plot_exact_match_vs_tokens(by_point: Mapping[str, Sequence[Mapping[str, Any]]],
                               teacher: Mapping[str, Any], path: str, title: str) -> None:
  """One line per point: exact match (mean over seeds) at each evaluation vs tokens seen."""
  from kd_jax.reporting import plots  # matplotlib is slow to import
  fig, ax = plots.plt.subplots(figsize=(8, 5), dpi=130)
  colors = plots.plt.get_cmap("tab20").colors         # 20 distinct colours, then dashes
  for i, (name, runs) in enumerate((n, r) for n, r in by_point.items() if r):
    if "train_tokens" not in runs[0]["student"]:
      continue
    x, y = _history_curve(runs)
    ax.plot(x / 1e6, y * 100, "-" if i < 20 else "--", color=colors[i % 20], marker="o",
            markersize=3, label=name)
  ax.axhline(teacher["exact_match"] * 100, color="black", linestyle=":", label="teacher")
  ax.set_xlabel("training tokens (millions)")
  ax.set_ylabel("held-out exact match (%)")
  n = min(len(r) for r in by_point.values() if r)
  ax.set_title(f"{title}\nexact match during training (mean over {n}+ seeds)", fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, ncol=2, loc="lower right")
  fig.tight_layout()
  fig.savefig(path)
  plots.plt.close(fig)


def _temperature(results: Mapping[str, Any]) -> float | None:
  node = results["config"]
  for key in TEMPERATURE_KEY:
    node = node.get(key) if isinstance(node, dict) else None
  return node


def plot_transfer_vs_temperature(by_point: Mapping[str, Sequence[Mapping[str, Any]]],
                                 path: str, title: str) -> bool:
  """Acceptance rate, distinct accepted answers per prompt and the student's exact match
  against the teacher's sampling temperature; False (nothing written) unless the
  points use transfer sets at two temperatures or more."""
  points = []
  for runs in by_point.values():
    runs = [r for r in runs if "transfer_set" in r]
    if runs:
      points.append((_temperature(runs[0]),
                     np.mean([r["transfer_set"]["acceptance_rate"] for r in runs]),
                     np.mean([r["transfer_set"]["distinct_accepted_per_prompt"] for r in runs]),
                     stats.mean_ci([r["student"]["exact_match"] for r in runs])))
  if len({p[0] for p in points}) < 2:
    return False
  from kd_jax.reporting import plots
  points.sort(key=lambda p: p[0])
  t = [p[0] for p in points]
  fig, (left, right) = plots.plt.subplots(1, 2, figsize=(10, 4), dpi=130)
  left.plot(t, [p[1] * 100 for p in points], "o-", label="acceptance rate (teacher samples)")
  em = [p[3] for p in points]
  left.errorbar(t, [i.mean * 100 for i in em],
                yerr=[0 if i.n < 2 else i.half_width * 100 for i in em], fmt="s--",
                capsize=3, label="student exact match (seqkd)")
  left.set_xlabel("teacher sampling temperature")
  left.set_ylabel("%")
  left.legend(fontsize=8)
  left.grid(True, alpha=0.3)
  right.plot(t, [p[2] for p in points], "o-", color="tab:green")
  right.set_xlabel("teacher sampling temperature")
  right.set_ylabel("distinct accepted answers per prompt")
  right.grid(True, alpha=0.3)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plots.plt.close(fig)
  return True


# The policy-gradient curves: (metric logged by the step, axis label).
RL_CURVES = (("verifier_reward", "sampled answers correct (verifier reward)"),
             ("teacher_reward", "teacher reward: mean log p_T − log q_S per answer"),
             ("kl_to_reference", "KL to the SFT start per token (k3)"))


def _training_curve(runs: Sequence[Mapping[str, Any]], metric: str, smooth: int = 5):
  """Steps and the mean over seeds of a logged training metric (a moving average over
  ``smooth`` logged steps), at the steps every seed logged; None if a run lacks it."""
  from kd_jax.engine import run_log
  per_seed = []
  for r in runs:
    path = os.path.join(r["student"].get("logs", ""), run_log.METRICS_FILE)
    if not os.path.exists(path):
      return None
    values = {x["step"]: x[metric] for x in run_log.read_records(path) if metric in x}
    if not values:
      return None
    per_seed.append(values)
  steps = sorted(set.intersection(*(set(v) for v in per_seed)))
  if not steps:
    return None
  mean = np.array([np.mean([v[s] for v in per_seed]) for s in steps])
  width = min(smooth, len(mean))
  return np.array(steps[width - 1:]), np.convolve(mean, np.ones(width) / width, mode="valid")


# The preference students' curves (DPO and its kin): the likelihood-displacement signature.
PREFERENCE_CURVES = (("chosen_log_prob", "chosen answers: mean sequence log-prob"),
                     ("rejected_log_prob", "rejected answers: mean sequence log-prob"),
                     ("reward_margin", "β · (chosen − rejected log-ratio)"))


def _plot_training_curves(by_point: Mapping[str, Sequence[Mapping[str, Any]]],
                          metrics: Sequence[tuple[str, str]], path: str, title: str) -> bool:
  """One panel per logged training metric, a line per point that logs them all (mean over
  seeds, moving average of 5 logged steps); False (nothing written) when no point does."""
  curves = {name: [_training_curve(runs, metric) for metric, _ in metrics]
            for name, runs in by_point.items() if runs}
  curves = {name: c for name, c in curves.items() if all(x is not None for x in c)}
  if not curves:
    return False
  from kd_jax.reporting import plots  # matplotlib is slow to import
  fig, axes = plots.plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), dpi=130)
  for ax, (metric, label), i in zip(axes, metrics, range(len(metrics))):
    for name, c in curves.items():
      steps, values = c[i]
      ax.plot(steps, values, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel(label, fontsize=8)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  n = min(len(by_point[name]) for name in curves)
  fig.suptitle(f"{title} (mean over {n}+ seeds, moving average of 5 logged steps)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path)
  plots.plt.close(fig)
  return True


def plot_policy_gradient_curves(by_point: Mapping[str, Sequence[Mapping[str, Any]]], path: str,
                                title: str) -> bool:
  """The reward curves and the KL to the reference of the points whose steps log them
  (the policy-gradient students); False (nothing written) when no point does."""
  return _plot_training_curves(by_point, RL_CURVES, path,
                               f"{title}: policy-gradient students during training")


def plot_preference_curves(by_point: Mapping[str, Sequence[Mapping[str, Any]]], path: str,
                           title: str) -> bool:
  """The chosen and rejected answers' log-probabilities and the reward margin of the points
  whose steps log them (the preference students); False when no point does."""
  return _plot_training_curves(by_point, PREFERENCE_CURVES, path,
                               f"{title}: preference students during training")


def displacement(by_point: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
  """The likelihood-displacement lines of ``llm_table.md``: for each preference student,
  its chosen and rejected answers' mean sequence log-probabilities at the start and the
  end of training (means of the first and last 5 logged steps, over seeds), and whether
  both fell (DPO raising its margin by lowering both: Pang et al. 2024, Razin et al. 2024)."""
  lines = []
  for name, runs in by_point.items():
    if not runs:
      continue
    chosen, rejected = (_training_curve(runs, metric, smooth=1)
                        for metric in ("chosen_log_prob", "rejected_log_prob"))
    if chosen is None or rejected is None:
      continue
    if min(len(chosen[1]), len(rejected[1])) < 10:    # the two windows would overlap
      lines.append(f"- `{name}`: fewer than 10 logged steps.")
      continue
    ends = [(float(np.mean(v[:5])), float(np.mean(v[-5:]))) for _, v in (chosen, rejected)]
    (c0, c1), (r0, r1) = ends
    said = ("both fell: likelihood displacement" if c1 < c0 and r1 < r0 else
            "the chosen fell, the rejected did not" if c1 < c0 else "the chosen did not fall")
    lines.append(f"- `{name}`: chosen {c0:.2f} → {c1:.2f}, rejected {r0:.2f} → {r1:.2f} "
                 f"({said}).")
  if not lines:
    return []
  return ["", "Preference students: their answers' mean sequence log-probabilities (nats) "
          "at the start → the end of training (the first and last 5 logged steps, mean over "
          "seeds):", "", *lines]


def write(workdir: str, reference: str = "sft", *, allow_mixed_code: bool = False) -> str:
  """Writes ``llm_table.md`` and the plots into ``workdir``; returns the table's text.

  Raises:
    ConfigError: ``reference`` is not a point of the sweep (naming the points), no run
      has finished, the runs have different teachers, or (unless ``allow_mixed_code``)
      they were computed by different code.
  """
  sweep = sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code)
  record, by_point = sweep.record, sweep.by_point
  if reference not in by_point:
    raise ConfigError("reference", f"--reference={reference!r} is not a point of the sweep; "
                      f"its points: {', '.join(by_point)}")
  if not any(by_point.values()):
    raise ConfigError(None, f"no run of the sweep in {workdir} has finished yet")
  teacher = _teacher(by_point)
  rows = [point_row(name, runs, by_point[reference], teacher["exact_match"])
          for name, runs in by_point.items() if runs]
  title = record.get("experiment") or "sweep"
  # The seeds of the finished runs (a running sweep has not reached all of record["seeds"]).
  finished = sorted({r["config"]["seed"] for runs in by_point.values() for r in runs})
  text = markdown(rows, teacher, reference=reference, experiment=record.get("experiment"),
                  seeds=finished)
  text += "\n" + sweep_dir.footer(sweep)
  plot_exact_match_vs_tokens(by_point, teacher, os.path.join(workdir, "exact_match_vs_tokens.png"),
                             title)
  if plot_transfer_vs_temperature(by_point, os.path.join(workdir, "transfer_vs_temperature.png"),
                                  title):
    text += "\n![transfer_vs_temperature.png](transfer_vs_temperature.png)\n"
  text += "\n![exact_match_vs_tokens.png](exact_match_vs_tokens.png)\n"
  if plot_policy_gradient_curves(by_point, os.path.join(workdir, "policy_gradient_curves.png"),
                                 title):
    text += "\n![policy_gradient_curves.png](policy_gradient_curves.png)\n"
  text += "".join(line + "\n" for line in displacement(by_point))
  if plot_preference_curves(by_point, os.path.join(workdir, "preference_curves.png"), title):
    text += "\n![preference_curves.png](preference_curves.png)\n"
  with open(os.path.join(workdir, TABLE_FILE), "w") as f:
    f.write(text)
  return text
