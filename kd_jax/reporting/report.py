"""What ``kd_jax.main`` prints: the results table, what the run did, where its logs are.

Accuracies, agreement and ECE are shown as percentages; ``results.json``
stores them as fractions in [0, 1] (docs/results.md).
"""

from __future__ import annotations

import os

from kd_jax.reporting import catalog


def _pct(value) -> str:
  return "-" if value is None else f"{value:.2%}"


def _seconds(value) -> str:
  return "-" if value is None else f"{value:.1f} s"


def _number(value) -> str:
  return "-" if value is None else f"{value:.4f}"


def _pass_at_k(row) -> str:
  passes = row.get("pass_at_k") or {}
  return _pct(passes[max(passes, key=int)]) if passes else "-"


# headline -> (columns: (title, result key and its format, or a row -> text getter), legend)
_TABLES = {
    "test_accuracy": (
        [("test acc", "test_accuracy", _pct), ("best acc", "best_test_accuracy", _pct),
         ("agree", "agreement", _pct), ("ECE", "ece", _pct)],
        "test acc: after the last step; best acc: best end-of-epoch accuracy; agree: top-1 "
        "agreement with the teacher; ECE: expected calibration error (15 bins)."),
    "exact_match": (
        [("exact", "exact_match", _pct), ("pass@k", _pass_at_k, None),
         ("nll/tok", "nll", _number), ("tok acc", "token_accuracy", _pct),
         ("KL→T/tok", "kl_to_teacher", _number), ("agree", "agreement", _pct)],
        "exact: greedy answers correct (held-out problems); pass@k: at least one of k sampled "
        "answers correct (the largest k); nll and tok acc: teacher-forced on the gold "
        "responses; KL→T: KL(teacher ‖ model) per token; agree: argmax agreement with the "
        "teacher per token."),
    "nll": (
        [("nll/tok", "nll", _number), ("bits/byte", "bits_per_byte", _number),
         ("ppl", "perplexity", _number),
         ("tok acc", "token_accuracy", _pct), ("KL→T/tok", "kl_to_teacher", _number),
         ("agree", "agreement", _pct)],
        "nll: teacher-forced negative log-likelihood per token on the held-out documents "
        "(lower is better); bits/byte: the same nll in bits per byte of text (comparable "
        "across tokenizers); ppl: exp(nll); tok acc: argmax accuracy; KL→T: KL(teacher ‖ "
        "model) per token (one tokenizer only); agree: argmax agreement with the teacher per "
        "token."),
    "probe_accuracy": (
        [("probe", "probe_accuracy", _pct), ("kNN", "knn_accuracy", _pct),
         ("cos→T", "mean_cosine", _number), ("nbr→T", "neighbour_overlap", _pct),
         ("sent/s@64", "sentences_per_second_b64", lambda v: f"{v:.0f}"),
         ("sent/s@1", "sentences_per_second_b1", lambda v: f"{v:.0f}")],
        "probe: linear-probe accuracy by fortune collection (held-out sentences); kNN: "
        "10-nearest-neighbour accuracy; cos→T: mean cosine to the teacher's embeddings (same "
        "width only); nbr→T: overlap of the 10 nearest held-out neighbours with the "
        "teacher's; sent/s: sentences per second encoding raw text at batch 64 and 1."),
    "test_loss": (
        [("test loss", "test_loss", _number), ("best loss", "best_test_loss", _number),
         ("ms/img@1", lambda r: _ms(r, 1), None),
         ("MSE→T@1", lambda r: _number(r.get("steps_1", {}).get("mse_to_teacher")), None)],
        "test loss: the denoising loss on the held-out images at fixed (t, noise) (lower is "
        "better); ms/img@1: DDIM at one step, ms per image (batch 64); MSE→T@1: squared "
        "distance of the one-step samples to the teacher's at its most steps, same noise."),
}


def _ms(row, steps: int) -> str:
  value = row.get(f"steps_{steps}", {}).get("ms_per_image")
  return "-" if value is None else f"{value:.2f}"


def student_method(results: dict) -> str:
  """The student's method, ``seqkd`` (or ``seqkd+<method>``) where the teacher wrote its
  data (a transfer set: sequence-level KD, a token-level term on top with another method)."""
  method = results["config"]["method"]
  if "transfer_set" in results:
    return "seqkd" if method == "none" else f"seqkd+{method}"
  return method


def _student_label(results: dict) -> str:
  method = student_method(results)
  return method if method != "none" else "no teacher"


def summary_table(results: dict, *, recorded: bool = False) -> str:
  """The console table of the task's metrics for teacher, baseline and student, and the KD gain.

  ``recorded``: the results are a stored record (a finished run shown again), so
  the timing line describes the run that produced them, not this invocation.
  """
  headline = results.get("headline", "test_accuracy")
  columns, legend = _TABLES[headline]
  rows = [("teacher", results["teacher"])]
  if "baseline" in results:
    rows.append(("student (from scratch)", results["baseline"]))
  rows.append((f"student ({_student_label(results)})", results["student"]))
  header = f"{'model':<26}{'params':>10}" + "".join(f"{title:>10}" for title, _, _ in columns)
  lines = [header, "-" * len(header)]
  for label, r in rows:
    cells = [key(r) if callable(key) else fmt(r.get(key)) for _, key, fmt in columns]
    lines.append(f"{label:<26}{r['params']:>10,}" + "".join(f"{c:>10}" for c in cells))
  lines.append(legend)
  if "baseline" in results:
    teacher = results["teacher"][headline]
    scratch = results["baseline"][headline]
    if catalog.lower_is_better(headline):
      gain, shown, worse = scratch - results["student"][headline], _number, teacher >= scratch
      per = " per token" if headline == "nll" else ""
      lines.append(f"KD gain (from scratch − student, final {headline}{per}): {gain:+.4f}"
                   f"{' nats' if headline == 'nll' else ''}")
    else:
      gain, shown, worse = results["student"][headline] - scratch, _pct, teacher <= scratch
      lines.append(f"KD gain (student − from scratch, final {headline.replace('_', ' ')}): "
                   f"{gain * 100:+.2f} points")
    if worse:
      lines.append(f"note: the teacher ({shown(teacher)}) is no better than the student trained "
                   f"from scratch ({shown(scratch)}), so distillation cannot be expected to "
                   "help here; :smoke configs train a deliberately small teacher to test the "
                   "pipeline, not to measure KD.")
  lines.append(_timing_line(results, "that run" if recorded else "this run"))
  return "\n".join(lines)


def _timing_line(results: dict, label: str) -> str:
  """What the run did and how long each phase took (wall time, compilation included)."""
  timing, student, teacher = results["timing"], results["student"], results["teacher"]
  if teacher.get("format") == "huggingface":
    parts = [f"teacher loaded from the Hugging Face checkpoint {teacher.get('source')}"]
  elif teacher.get("cached"):
    parts = ["teacher loaded from its cache"]
  else:
    parts = [f"teacher trained in {_seconds(timing.get('teacher_train_seconds'))}"]
  if "baseline" in results:
    seconds = timing.get("baseline_train_seconds")
    parts.append("from-scratch student from its cache" if seconds == 0 else
                 f"from-scratch student {_seconds(seconds)}")
  resumed = student.get("resumed_from_step") or 0
  name = "distilled student" if results["config"]["method"] != "none" else "student"
  student_part = (f"{name} {student['steps'] - resumed} steps in "
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
