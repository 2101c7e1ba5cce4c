"""What ``kd_jax.main`` prints: the results table, what the run did, where its logs are.

Accuracies, agreement and ECE are shown as percentages; ``results.json``
stores them as fractions in [0, 1] (docs/results.md).
"""

from __future__ import annotations

import os


def _pct(value) -> str:
  return "-" if value is None else f"{value:.2%}"


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.1f} s"


def summary_table(results: dict, *, recorded: bool = False) -> str:
  """The console table: params, final and best test accuracy, agreement, ECE, KD gain.

  ``recorded``: the results are a stored record (a finished run shown again), so
  the timing line describes the run that produced them, not this invocation.
  """
  rows = [("teacher", results["teacher"])]
  if "baseline" in results:
    rows.append(("student (from scratch)", results["baseline"]))
  rows.append((f"student ({results['config']['method']})", results["student"]))
  lines = [f"{'model':<26}{'params':>10}{'test acc':>10}{'best acc':>10}{'agree':>9}{'ECE':>8}",
           "-" * 73]
  for label, r in rows:
    lines.append(f"{label:<26}{r['params']:>10,}{_pct(r['test_accuracy']):>10}"
                 f"{_pct(r.get('best_test_accuracy')):>10}{_pct(r.get('agreement')):>9}"
                 f"{_pct(r.get('ece')):>8}")
  lines.append("test acc: after the last step; best acc: best end-of-epoch accuracy; agree: "
               "top-1 agreement with the teacher; ECE: expected calibration error (15 bins).")
  if "baseline" in results:
    teacher = results["teacher"]["test_accuracy"]
    scratch = results["baseline"]["test_accuracy"]
    gain = results["student"]["test_accuracy"] - scratch
    lines.append(f"KD gain (student − from scratch, final-step accuracy): {gain * 100:+.2f} points")
    if teacher <= scratch:
      lines.append(f"note: the teacher ({teacher:.2%}) is no better than the student trained "
                   f"from scratch ({scratch:.2%}), so distillation cannot be expected to help "
                   "here; :smoke configs train a deliberately small teacher to test the "
                   "pipeline, not to measure KD.")
  lines.append(_timing_line(results, "that run" if recorded else "this run"))
  return "\n".join(lines)


def _timing_line(results: dict, label: str) -> str:
  """What the run did and how long each phase took (wall time, compilation included)."""
  timing, student, teacher = results["timing"], results["student"], results["teacher"]
  if teacher.get("cached"):
    parts = ["teacher loaded from its cache"]
  else:
    parts = [f"teacher trained in {_seconds(timing.get('teacher_train_seconds'))}"]
  if "baseline" in results:
    seconds = timing.get("baseline_train_seconds")
    parts.append("from-scratch student from its cache" if seconds == 0 else
                 f"from-scratch student {_seconds(seconds)}")
  resumed = student.get("resumed_from_step") or 0
  student_part = (f"distilled student {student['steps'] - resumed} steps in "
                  f"{_seconds(timing.get('student_wall_seconds'))}")
  if resumed:
    student_part += f" (resumed at step {resumed} of {student['steps']})"
  rate = timing.get("steps_per_second")
  if rate:
    student_part += f", {rate:.0f} steps/s after compiling, without evaluation"
  parts.append(student_part)
  return f"{label}: {'; '.join(parts)}; {_seconds(timing.get('total_seconds'))} in all."


def where_to_look(workdir: str, results: dict | None = None) -> str:
  """Paths of the results and logs, and the TensorBoard command that shows every phase."""
  logdirs = {"student": os.path.join(workdir, "student")}
  if results:
    for phase in ("teacher", "baseline"):
      logs = (results.get(phase) or {}).get("logs")
      if logs and os.path.isdir(logs):
        logdirs[phase] = logs
  spec = ",".join(f"{name}:{path}" for name, path in sorted(logdirs.items()))
  return (f"results: {os.path.join(workdir, 'results.json')}; per-step logs: "
          f"<phase>/metrics.jsonl\nTensorBoard: tensorboard --logdir_spec {spec}")
