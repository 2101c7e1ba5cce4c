r"""DeepSeek-R1's distillation finding on the reasoning testbed: the teacher's written traces
against the student's own data and against RL on the student alone, 5 seeds.

    python -m kd_jax.sweep --config=experiments/reasoning/r1_table.py --workdir=runs/reasoning_r1
    python -m kd_jax.llm_table --workdir=runs/reasoning_r1 --reference=sft-answers

The table also runs in parts (``PARTS``), 5 seeds each, whose runs are the table's own
(the same configs and run directories): parts and the full table share one workdir and
skip what another already finished, so a table too long for one sitting is computed part
by part:

* ``:core`` — R1's comparison alone: ``base``, ``seqkd-64k``, ``rl-zero``. Its table has
  no ``sft-answers``: ``python -m kd_jax.llm_table --workdir=... --reference=rl-zero``;
* ``:references`` — ``sft-answers``, ``sft-gold``;
* ``:sizes`` — the transfer-set-size and k axes: ``seqkd-1k``, ``-4k``, ``-16k``,
  ``-16k-k1``;
* ``:on_policy`` — ``seqkd+kd`` and its control ``seqkd-more``;
* ``:rank`` — ``dpo``, ``dpo-nll``, ``dpkd``, ``distillm2``, ``minillm`` and their control
  ``sft-gold-more``.

The data, teacher, student and budget of experiments/reasoning/sft.py: every student
phase trains 3,000 steps of 64 rows (the base 600), evaluated every 300. The points
(``config.sweep.points``):

* ``sft-answers`` — the student on its original data, the 4,000 answers-only problems;
* ``sft-gold`` — the student on the teacher's 4,000 worked solutions (the reference that
  learns the procedure; seed-dependent: 56–81% at b2cbbe2, 60–83% at e572497,
  docs/language_models.md);
* ``base`` — the shared baseline (``baseline=true``, ``dataset.baseline_data="gold"``,
  ``baseline_steps=600``) that the warm-started rows start from: the same student on the
  gold solutions for 600 steps (a schedule of its own). It writes the worked-solution
  format and is right 0.75% of the time (seed 0), as R1's distilled and RL-trained
  models start from one pretrained base that could already write step-by-step text.
  Two other bases were measured and set aside (docs/language_models.md, "Two bases"):
  the full ``sft-gold`` (right 56–81% by seed: RL inherits that spread and adds 11–20
  points to it) and one trained on the answers alone (so sure of answering at once that
  3,000 steps on the teacher's traces leave it at 2.6%);
* ``seqkd-<n>k`` — the R1 recipe: the base fine-tuned on the first n thousand of the
  teacher's verified traces for the 20,000 pool prompts (k = 4 samples each at
  temperature 0.7; ``transfer.max_examples``): the transfer-set-size axis, 1k to 64k;
* ``seqkd-16k-k1`` — 16k traces again, one sample per prompt (k = 1, so from about four
  times as many prompts): the k axis at a fixed number of traces;
* ``rl-zero`` — R1-Zero on the small model: the base trained by GRPO with the
  verifier's reward alone (no teacher: ``rl.teacher_weight=0``), 4 samples per prompt
  of the pool, for 1,527 steps: the student compute of a ``seqkd`` row (a GRPO step of
  64 sampled rows counts 1.965 SFT steps' FLOPs: tests/test_compute.py checks the two
  within 1%);
* the rank and RL rows from the same base, at their own learning rate (1e-4):
  ``dpo`` (DPO on the base's ranked samples, a verified answer chosen), ``dpo-nll`` (the
  same with λ = 1 times the chosen answers' length-normalised NLL, Pang et al. 2024's
  remedy for likelihood displacement: llm_table reports whether both answers' log-probs
  fall), ``dpkd`` (DPO on
  teacher-versus-student pairs), ``distillm2`` (DistiLLM-2's contrastive loss on those
  pairs), ``minillm`` (MiniLLM's policy gradient), each 3,000 steps, and their control
  ``sft-gold-more``: the base trained on by SFT at 1e-4 for 3,000 steps;
* ``seqkd+kd`` — on-policy distillation from the ``seqkd-64k`` student
  (``student_init=seqkd``: the same seed's run of that point, shared, not retrained): GKD
  with λ = 1 and β = 1, the per-token reverse KL to the teacher at T = 1 on the student's
  own samples (Thinking Machines' on-policy distillation), at 1e-4 for 3,000 steps; its
  control ``seqkd-more``: that start trained on by SFT on its 64k traces at 1e-4 for
  3,000 steps.

Seeds 0–4 change the student's initialisation, the batch order, the transfer set's
samples and the RL samples; the teacher and the problems are fixed. Measured so far with
this base, at commit a21d031's code: ``:core`` (``seqkd-64k`` − ``rl-zero`` = +89.6 ± 15.3
points over 5 seeds, paired) and ``sft-answers`` (``seqkd-64k`` − ``sft-answers`` = +84.6
± 17.9). At commit e572497 (the table restarted, its runs in records/reasoning_r1/):
``:core`` again, ``seqkd-64k`` − ``rl-zero`` = +83.6 ± 21.2 points over 5 seeds, paired,
and ``:references``: ``seqkd-64k`` − ``sft-answers`` = +81.0 ± 22.0, ``seqkd-64k`` −
``sft-gold`` = +9.5 ± 20.7 (not separated); ``:sizes``, paired: 1k → 4k traces +49.3 ±
30.5, 4k → 16k +25.3 ± 13.3, 16k → 64k +7.5 ± 18.8 (not separated), k = 1 against k = 4
at 16k traces −3.8 ± 32.5 (not separated); ``:on_policy`` (from 81d280a, the same code
with ``seqkd+kd`` at T = 1): ``seqkd+kd`` − ``seqkd-more`` = −2.5 ± 2.6 (not separated);
``:rank`` (from 81d280a), against ``sft-gold-more``: ``dpo`` −2.8 ± 1.5, ``dpkd`` −2.7 ±
1.5, ``dpo-nll`` −1.9 ± 1.5 (worse), ``distillm2`` +16.6 ± 28.1 and ``minillm`` +6.0 ± 18.1
(not separated; two and one seeds of five take off). Those runs, the ones that chose
the base, and the earlier table from the ``sft-gold`` base are in docs/language_models.md.
"""

from kd_jax import config as config_lib

sft = config_lib.load_sibling(__file__, "sft")

# The shared base: the student trained 600 steps on the gold solutions (a warmup-cosine
# schedule of its own). It writes the worked-solution format and is right 0.75% of the time
# (seed 0), so what a row adds, not the seed's base, decides it (docs/language_models.md,
# "Two bases").
BASE_STEPS = 600
# The student compute of train.steps = 3,000 SFT steps: a GRPO step of 64 sampled rows of
# the 128-wide student counts 1.965 SFT steps (tests/test_compute.py checks it within 1%).
RL_ZERO_STEPS = 1527
# The table in parts (``:core`` is R1's finding: the teacher's traces against RL on the
# student, from one base); together they are the table's points, each in one part.
PARTS = {
    "core": ("base", "seqkd-64k", "rl-zero"),
    "references": ("sft-answers", "sft-gold"),
    "sizes": ("seqkd-1k", "seqkd-4k", "seqkd-16k", "seqkd-16k-k1"),
    "on_policy": ("seqkd+kd", "seqkd-more"),
    "rank": ("dpo", "dpo-nll", "dpkd", "distillm2", "minillm", "sft-gold-more"),
}


def points(sizes=(1000, 4000, 16000, 64000), k1_size=16000, rl_steps=RL_ZERO_STEPS,
           warm_rows=True, base_steps=BASE_STEPS):
  """The table's points (smaller sizes and steps, and no rank rows, for ``:smoke``)."""
  name = lambda n: f"{n // 1000}k" if n >= 1000 else str(n)
  from_base = f"student_init=baseline; baseline=true; baseline_steps={base_steps}"
  seqkd = f"method=none; student_data=transfer; {from_base}"
  # From the largest seqkd point's student (student_init=seqkd: that very run, shared).
  from_seqkd = (f"student_init=seqkd; baseline=true; baseline_steps={base_steps}; "
                f"transfer.max_examples={max(sizes)}")
  warm = (
      f"dpo: method=dpo; {from_base}",
      # DPO with λ = 1 times the chosen answers' length-normalised NLL (Pang et al. 2024).
      f"dpo-nll: method=dpo; dpo.nll_weight=1.0; {from_base}",
      f"dpkd: method=dpo; dpo.pairs=teacher; {from_base}",
      f"distillm2: method=distillm2; {from_base}",
      f"minillm: method=minillm; {from_base}",
      f"sft-gold-more: method=none; sft.learning_rate=1e-4; {from_base}",
  )
  return (
      "sft-answers: method=none",
      "sft-gold: method=none; student_data=gold",
      # The base itself (the shared run the warm-started rows start from, not a retrain).
      f"base: method=none; student_data=gold; baseline=true; train.steps={base_steps}",
      *(f"seqkd-{name(n)}: {seqkd}; transfer.max_examples={n}" for n in sizes),
      f"seqkd-{name(k1_size)}-k1: {seqkd}; transfer.k=1; transfer.max_examples={k1_size}",
      f"rl-zero: method=grpo; rl.teacher_weight=0.0; rl.steps={rl_steps}; {from_base}",
      # On-policy distillation after seqkd (Thinking Machines; GKD with λ = 1, β = 1: the
      # per-token reverse KL on the student's own samples, at the family's T = 1), and its
      # control.
      f"seqkd+kd: method=gkd; gkd.fraction=1.0; gkd.beta=1.0; gkd.learning_rate=1e-4; "
      f"{from_seqkd}",
      f"seqkd-more: method=none; student_data=transfer; sft.learning_rate=1e-4; {from_seqkd}",
      *(warm if warm_rows else ()),
  )


def get_config(arg=None):
  if arg not in (None, "smoke", *PARTS):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke, {', '.join(PARTS)}")
  c = sft.base(arg)
  c.experiment = "reasoning/r1_table"
  c.student_data = "answers"
  c.dataset.pool_examples = 20000
  c.dataset.baseline_data = "gold"
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)
  c.rl = config_lib.rl_config()
  c.dpo = config_lib.dpo_config(learning_rate=1e-4)
  c.distillm2 = config_lib.distillm2_config(learning_rate=1e-4)
  c.sft = config_lib.sft_config()
  c.gkd = config_lib.gkd_config()
  c.sweep = dict(points=points(), seeds=5)
  if arg in PARTS:
    c.sweep.points = tuple(p for p in points() if p.split(":")[0] in PARTS[arg])
  if arg == "smoke":
    c.dataset.pool_examples = 128
    c.transfer.k = 2
    c.transfer.label_free = True      # the smoke teacher (8 steps) is never right
    # The rank rows run in experiments/arithmetic/rank_table.py's smoke.
    c.sweep = dict(points=points(sizes=(4, 8), k1_size=4, rl_steps=4, warm_rows=False,
                                 base_steps=4), seeds=1)
  return c
