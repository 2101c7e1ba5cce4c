r"""Rank-based and RL distillation against the R1 table's baselines, 5 seeds: DPO on the SFT
student's ranked samples, DPO on teacher-versus-student pairs (DPKD), and the
policy-gradient students GRPO and MiniLLM (with and without teacher-mixed sampling).

    python -m kd_jax.sweep --config=experiments/arithmetic/rank_table.py --workdir=runs/rank_table
    python -m kd_jax.llm_table --workdir=runs/rank_table --reference=sft

The task, teacher, student, budget (1,000 steps, evaluated every 125) and seeds of
``r1_table.py``, whose config this module extends with the ``dpo`` block (a separate
sweep: the R1 table's finished runs keep their config). Points: ``sft`` and ``seqkd``
(the references), ``sft2x`` (SFT trained on for 1,000 more steps: the control of
every ``-from-sft`` point), ``dpo-from-sft`` (experiments/arithmetic/dpo.py: pairs of
the SFT student's 4 samples ranked by verifier + teacher) and ``dpkd-from-sft``
(a verified teacher answer chosen, the student's own rejected: DPKD, Li et al. 2024, the
DPO baseline that DistiLLM-2 compares with; it was named ``distillm2-from-sft`` before,
but DistiLLM-2's own loss is not DPO), ``distillm2-from-sft`` (DistiLLM-2's contrastive
loss on the same pairs, the teacher live: skew KL on the teacher's answer, skew reverse KL
on the student's; added 2026-12-04, not in the table below), ``grpo-from-sft``,
``minillm-from-sft`` and ``minillm-mix-from-sft`` (experiments/arithmetic/rl.py: 4
samples per prompt, 16 prompts per step, scored live by the verifier and the teacher).
The ``-from-sft`` points start from the same seed's SFT student, shared with the R1
table's runs. ``sft-more-from-sft`` is their control at their own learning rate and steps
(1e-4, 1,000 steps; ``sft2x`` continues at SFT's 3e-3), added 2026-12-04 and not in the
table below. The policy-gradient points were added later with the ``rl`` block at its
defaults, which the finished points' records accept (kd_jax/run/workdir.py).

Measured on the 2-core CPU (2026-11-27, about commit 9a6413b, before a ranked pair's
chosen answer had to be correct; the table and the curves are in docs/language_models.md):
no rank or RL point beats ``sft`` or ``seqkd`` with a paired interval that excludes 0;
DPO on either kind of pair is worse than both. Against their own SFT start, GRPO and MiniLLM
leave greedy exact match unchanged and raise pass@1 of sampled answers by 3–6 points
(intervals excluding 0). Each GRPO or MiniLLM student trains in 67–83 s (one run
resumed: 24 s), each with teacher-mixed sampling in 198–212 s (``wall_seconds``; 22 min
for those 5 runs, end to end).
"""

from kd_jax import config as config_lib

r1_table = config_lib.load_sibling(__file__, "r1_table")

POINTS = (
    "sft: method=none",
    "seqkd: method=none; student_data=transfer",
    "sft2x: method=none; student_init=baseline; baseline=true",
    # The control of every -from-sft row below: the same start trained on by SFT at their
    # learning rate (1e-4: the dpo, rl and distillm2 blocks) for their steps (train.steps).
    "sft-more-from-sft: method=none; sft.learning_rate=1e-4; student_init=baseline; "
    "baseline=true",
    "dpo-from-sft: method=dpo; student_init=baseline; baseline=true",
    "dpkd-from-sft: method=dpo; dpo.pairs=teacher; student_init=baseline; baseline=true",
    # DistiLLM-2's own loss on the same teacher-versus-student pairs (kd_jax/methods/contrastive.py).
    "distillm2-from-sft: method=distillm2; student_init=baseline; baseline=true",
    # Policy-gradient students (experiments/arithmetic/rl.py), from the same SFT student.
    "grpo-from-sft: method=grpo; student_init=baseline; baseline=true",
    "minillm-from-sft: method=minillm; student_init=baseline; baseline=true",
    "minillm-mix-from-sft: method=minillm; rl.teacher_mix=0.2; student_init=baseline; "
    "baseline=true",
)


def get_config(arg=None):
  c = r1_table.get_config(arg)
  c.experiment = "arithmetic/rank_table"
  c.dpo = config_lib.dpo_config(beta=0.1, pairs="ranked", k=4, temperature=1.0,
                                teacher_weight=0.1, learning_rate=1e-4)
  c.rl = config_lib.rl_config()
  c.distillm2 = config_lib.distillm2_config(learning_rate=1e-4)
  c.sft = config_lib.sft_config()
  c.sweep = dict(points=POINTS, seeds=5)
  if arg == "smoke":
    c.dpo.k = 2
    c.dpo.correct_chosen = False       # the smoke SFT start is never right: rank by the teacher
    c.sweep = dict(points=(POINTS[0], POINTS[3], POINTS[4], POINTS[5], POINTS[6], POINTS[7]),
                   seeds=1)
  return c
