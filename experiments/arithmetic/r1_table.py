r"""The R1 distillation table in miniature: every LLM-distillation recipe on equal terms, 5 seeds.

    python -m kd_jax.sweep --config=experiments/arithmetic/r1_table.py --workdir=runs/r1_table
    python -m kd_jax.llm_table --workdir=runs/r1_table      # the table, the plots

The task, teacher and student of experiments/arithmetic/token_kd.py; every student
gets the same budget, 1,000 steps of 64 rows of 55 positions (3.5M training
tokens), and is evaluated every 125 steps. The points (``config.sweep.points``):

* ``sft`` — the gold chains alone (the baseline);
* ``seqkd`` — the teacher's verified answers (k = 4 per training prompt at
  sampling temperature 0.7, rejection-sampled; the DeepSeek-R1 recipe);
* ``kd-<divergence>`` — token-level KD on the gold chains, α = 0.5, T = 1, with
  each divergence of kd_jax/divergences.py;
* ``seqkd+kd`` — token-level KD (KL) on the teacher's answers;
* ``gkd`` — on-policy distillation, λ = 0.5, β = 0.5 (Agarwal et al. 2024);
  ``gkd-onpolicy`` λ = 1; ``gkd-supervised`` λ = 0 (JSD(0.5) on gold text, no CE);
* ``gkd-from-sft`` — GKD starting from the trained ``sft`` student of the same seed
  (``student_init="baseline"``), as the paper does: twice the budget in all, so its
  control is ``sft2x``, the ``sft`` student trained on for the same extra steps.

Seeds 0–4 change the student's initialisation, the batch order, the transfer
set's samples and the on-policy samples; the teacher and the problems are fixed.
Every final report has exact match on the 500 held-out problems and on two harder
splits of 500 (``ood_exact_match``: one more step, one more digit).
``python -m kd_jax.llm_table`` writes ``r1_table.md`` (params, exact match, pass@4,
retention, gap recovered, paired difference to ``sft``, tokens, wall time, OOD) and
``exact_match_vs_tokens.png``.

Measured on the 2-core CPU (2026-11-27, 80 runs, 58 min of run time with the teacher
cached; the table is in the README): exact match, mean ± 95% CI over 5 seeds —
teacher 99.8%; sft 68.5 ± 32.6%; kd-cosine 86.6 ± 24.9%, seqkd+kd 77.9 ± 39.4%,
kd-kl 74.3 ± 44.5%, seqkd 67.6 ± 29.5%; gkd 6.5 ± 1.7%; gkd-from-sft 99.4 ± 0.3% and
its control sft2x 99.6 ± 0.2%. No method beats sft with a paired interval that
excludes 0 (the student's result swings 39–96% with the seed); gkd, gkd-onpolicy and
kd-skew_kl are worse. OOD exact match is at most 7% for every model, the teacher
included. ``:smoke`` (2 seeds of 3 points, then the table) runs in CI.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")

DIVERGENCES = ("kl", "reverse_kl", "js", "skew_kl", "skew_reverse_kl", "tvd", "cosine", "mse")

POINTS = (
    "sft: method=none",
    "seqkd: method=none; student_data=transfer",
    *(f"kd-{name}: method=kd; divergence={name}" for name in DIVERGENCES),
    "seqkd+kd: method=kd; student_data=transfer; divergence=kl",
    "gkd: method=gkd",
    "gkd-onpolicy: method=gkd; gkd.fraction=1.0",
    "gkd-supervised: method=gkd; gkd.fraction=0.0",
    # Starting from the trained sft student (as Agarwal et al. do), twice the budget in all;
    # sft2x, sft trained on for the same extra steps, is its control.
    "gkd-from-sft: method=gkd; student_init=baseline; baseline=true",
    "sft2x: method=none; student_init=baseline; baseline=true",
)


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/r1_table"
  c.baseline = False                  # sft is a point of its own
  c.student_data = "gold"
  c.dataset.ood_examples = 500
  c.train.steps = 1000                # 8 epochs of the 8,000 gold chains
  c.train.eval_every_steps = 125
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)
  c.gkd = config_lib.gkd_config(fraction=0.5, beta=0.5, temperature=1.0)
  c.sweep = dict(points=POINTS, seeds=5)
  if arg == "smoke":
    c.dataset.ood_examples = 32
    c.train.steps = 8                 # token_kd.py:smoke's one epoch of 512 chains
    c.train.eval_every_steps = 4
    c.transfer.k = 2
    c.transfer.label_free = True      # the smoke teacher is rarely right
    # The pipeline's three kinds of row (gold data, the transfer set, a warm start); the
    # kd and gkd methods themselves run in token_kd.py's and gkd.py's smokes.
    c.sweep = dict(points=("sft: method=none", "seqkd: method=none; student_data=transfer",
                           "gkd-from-sft: method=gkd; student_init=baseline; baseline=true"),
                   seeds=2)
  return token_kd.apply_arg(c, arg)
