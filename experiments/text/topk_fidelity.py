r"""The fidelity curve: how a student distilled from a top-k teacher cache depends on k.

    python -m kd_jax.sweep --config=experiments/text/topk_fidelity.py --workdir=runs/topk_fidelity
    python -m kd_jax.topk_fidelity --workdir=runs/topk_fidelity

The teacher, student and data of experiments/text/token_kd.py (fortunes, BPE 8k),
pure distillation (α = 0, KL, T = 1) so that the teacher's signal is all the student
gets. Points (``config.sweep.points``): the full-logit teacher (``full``: it runs in
every step, its logits do not fit a cache) and the top-k cache with k ∈ {1, 4, 16, 64}
in both modes (``renormalize``, ``tail``: kd_jax/objectives/topk.py), 3 seeds each; every run
also trains the student without a teacher (the baseline). ``kd_jax.topk_fidelity``
writes the table (bytes per token, held-out nll, KL to the teacher, Δnll against the
full-logit student) and ``topk_fidelity.png``.

Measured on the 2-core CPU (2026-11-27, 3 seeds; the table is in the README): held-out
nll per token, full-logit teacher 4.969 ± 0.019; ``tail`` 6.883 (k = 1) → 5.372 (k = 64);
``renormalize`` 9.017 → 7.001; the student without a teacher 5.010 ± 0.075. Every top-k
point is worse than the full teacher (paired), ``tail`` beats ``renormalize`` by 1.6–2.1
nats at every k, and with α = 0 no cache up to k = 64 beats the labels alone.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")

KS = (1, 4, 16, 64)


def get_config(arg=None):
  c = token_kd.get_config("smoke" if arg == "smoke" else None)
  c.experiment = "text/topk_fidelity"
  c.alpha = 0.0
  c.teacher_cache = "auto"       # the top-k points cache; the full-logit one runs the teacher
  points = ["full: topk.k=0"] + [f"{mode}-k{k}: topk.k={k}; topk.mode={mode}"
                                 for mode in ("renormalize", "tail") for k in KS]
  c.sweep = dict(points=tuple(points), seeds=3)
  if arg == "smoke":
    c.sweep = dict(points=("full: topk.k=0", "tail-k4: topk.k=4; topk.mode=tail",
                           "renormalize-k4: topk.k=4; topk.mode=renormalize"), seeds=1)
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  return c
