r"""The fidelity curve of a top-k teacher cache: student quality against k, for both modes.

    python -m kd_jax.topk_fidelity --workdir=runs/topk_fidelity

Reads a `kd_jax.sweep` directory whose points differ in ``topk.k`` and ``topk.mode``
(``topk.k = 0``: the full-logit teacher; e.g. experiments/text/topk_fidelity.py)
and writes ``fidelity.md`` and ``topk_fidelity.png``: per point the cache's bytes per
token, the students' held-out ``nll`` and ``kl_to_teacher`` (mean ± 95% t-interval
over seeds) and the paired difference in nll to the full-logit point over the same
seeds; the plot draws nll and KL against k (log axis) per mode, with the full-logit
students and the students trained without a teacher (the baseline) as references.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from kd_jax.reporting import stats
from kd_jax.core.errors import ConfigError
from kd_jax.reporting import sweep_dir

FILE = "fidelity.md"
PLOT = "topk_fidelity.png"


def _setting(results: Mapping[str, Any]) -> tuple[int, str]:
  topk = results["config"].get("topk") or {}
  k = int(topk.get("k", 0))
  return k, topk.get("mode", "tail") if k else "full"


def rows(by_point: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict]:
  """One row per point with runs: k, mode, bytes/token, nll and KL intervals, Δnll vs full."""
  full = [r for runs in by_point.values() for r in runs if _setting(r)[0] == 0]
  out = []
  for name, runs in by_point.items():
    if not runs:
      continue
    k, mode = _setting(runs[0])
    students = [r["student"] for r in runs]
    paired = stats.paired_by_seed(runs, full, lambda r: r["student"]["nll"])
    vocab = runs[0]["config"]["dataset"].get("vocab_size")
    out.append({
        "name": name, "k": k, "mode": mode, "n": len(runs),
        "bytes_per_token": (runs[0]["topk"]["bytes_per_token"] if k
                            else (vocab or 0) * 4),
        "nll": stats.mean_ci([s["nll"] for s in students]),
        "kl_to_teacher": stats.mean_ci([s["kl_to_teacher"] for s in students]),
        "nll_vs_full": stats.paired_difference(*paired) if paired[0] and k else None,
        "baseline_nll": (stats.mean_ci([r["baseline"]["nll"] for r in runs])
                         if all("baseline" in r for r in runs) else None),
    })
  return sorted(out, key=lambda r: (r["mode"] != "full", r["mode"], r["k"]))


def _pm(interval, digits=4, sign=False) -> str:
  return stats.format_interval(interval, scale=1.0, digits=digits, sign=sign)


def markdown(table: Sequence[dict], experiment: str | None, seeds: Sequence[int]) -> str:
  lines = [f"# {experiment or 'sweep'}: student quality against the top-k cache's k", "",
           "| mode | k | bytes/token | held-out nll | KL(teacher‖student) | Δnll vs full "
           "(paired) | n |", "|---|---|---|---|---|---|---|"]
  for r in table:
    lines.append(f"| {r['mode']} | {r['k'] or 'all (V)'} | {r['bytes_per_token']:,} | "
                 f"{_pm(r['nll'])} | {_pm(r['kl_to_teacher'])} | "
                 f"{_pm(r['nll_vs_full'], sign=True)} | {r['n']} |")
  baseline = next((r["baseline_nll"] for r in table if r["baseline_nll"] is not None), None)
  lines += ["", f"Seeds {', '.join(map(str, seeds))}; mean ± half-width of the 95% "
            "Student-t interval over seeds. nll and KL per token on the held-out "
            "documents (nats). Δnll: the point's student − the full-logit student, paired by "
            "seed (negative is better). Bytes per token: the cache's k float32 logits, k "
            "int32 ids and one float32 logsumexp; full: V float32 logits."]
  if baseline is not None:
    lines.append(f"The student trained without a teacher: nll {_pm(baseline)}.")
  return "\n".join(lines) + "\n"


def plot(table: Sequence[dict], path: str, title: str) -> None:
  """nll and KL against k (log₂ axis), one line per mode; full logits and no teacher dashed."""
  from kd_jax.reporting import plots  # matplotlib is slow to import
  fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.2), dpi=130)
  full = next((r for r in table if r["mode"] == "full"), None)
  for ax, key, label in ((axes[0], "nll", "held-out nll per token"),
                         (axes[1], "kl_to_teacher", "KL(teacher ‖ student) per token")):
    for mode in sorted({r["mode"] for r in table} - {"full"}):
      members = [r for r in table if r["mode"] == mode]
      x = [r["k"] for r in members]
      mean = np.array([r[key].mean for r in members])
      half = np.array([0.0 if math.isnan(r[key].half_width) else r[key].half_width
                       for r in members])
      (line,) = ax.plot(x, mean, marker="o", label=f"top-k, {mode}")
      ax.fill_between(x, mean - half, mean + half, color=line.get_color(), alpha=0.2,
                      linewidth=0)
    if full is not None:
      ax.axhline(full[key].mean, color="black", linestyle="--",
                 label=f"full logits ({full['bytes_per_token']:,} B/token)")
    baseline = next((r["baseline_nll"] for r in table if r["baseline_nll"] is not None), None)
    if key == "nll" and baseline is not None:
      ax.axhline(baseline.mean, color="tab:red", linestyle=":", label="no teacher")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (teacher logits kept per token)")
    ax.set_ylabel(label)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
  sizes = {r["k"]: r["bytes_per_token"] for r in table if r["k"]}
  sizes = ", ".join(f"k={k}: {size} B" for k, size in sorted(sizes.items()))
  fig.suptitle(f"{title}\ncache size per token: {sizes}", fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plots.plt.close(fig)


def write(workdir: str, *, allow_mixed_code: bool = False) -> str:
  """Writes ``fidelity.md`` and ``topk_fidelity.png``; returns the markdown.

  Raises:
    ConfigError: no finished run, no point with ``topk.k`` > 0, or (unless
      ``allow_mixed_code``) runs computed by different code.
  """
  sweep = sweep_dir.read(workdir, allow_mixed_code=allow_mixed_code)
  record, by_point = sweep.record, sweep.by_point
  table = rows(by_point)
  if not any(r["k"] for r in table):
    raise ConfigError(None, f"no finished run in {workdir} used a top-k cache (topk.k > 0)")
  text = markdown(table, record.get("experiment"), record["seeds"])
  text += "\n" + sweep_dir.footer(sweep)
  plot(table, os.path.join(workdir, PLOT), record.get("experiment") or "sweep")
  text += f"\n![{PLOT}]({PLOT})\n"
  with open(os.path.join(workdir, FILE), "w") as f:
    f.write(text)
  return text
