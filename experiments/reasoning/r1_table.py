r"""DeepSeek-R1's distillation finding on the reasoning testbed: the teacher's written traces
against the student's own data, 5 seeds.

    python -m kd_jax.sweep --config=experiments/reasoning/r1_table.py --workdir=runs/reasoning_r1
    python -m kd_jax.llm_table --workdir=runs/reasoning_r1 --reference=sft-gold

The data, teacher, student and budget of experiments/reasoning/sft.py: every student
trains 3,000 steps of 64 rows, evaluated every 300. The points (``config.sweep.points``):

* ``sft-gold`` — the student on the teacher's 4,000 worked solutions;
* ``seqkd`` — the R1 recipe: the student that learnt the original data (the 4,000
  answers-only problems: the shared baseline, ``sft-answers``) fine-tuned on the
  teacher's verified traces for the 16,000 pool prompts, k = 4 samples each at
  temperature 0.7. Its ``baseline`` block is the ``sft-answers`` student of its seed.

Seeds 0–4 change the student's initialisation, the batch order and the transfer set's
samples; the teacher and the problems are fixed. Being calibrated (issue 23): these
points measure the reference students' plateaus and seed spread before the table's
other rows (rl-zero, the transfer-set-size and k axes, on-policy KD, MiniLLM, DPO) are
added.
"""

from kd_jax import config as config_lib

sft = config_lib.load_sibling(__file__, "sft")

POINTS = (
    "sft-gold: method=none; student_data=gold",
    "seqkd: method=none; student_data=transfer; student_init=baseline; baseline=true",
)


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  c = sft.base(arg)
  c.experiment = "reasoning/r1_table"
  c.student_data = "answers"
  c.transfer = config_lib.transfer_config(k=4, temperature=0.7)
  c.sweep = dict(points=POINTS, seeds=5)
  if arg == "smoke":
    c.transfer.k = 2
    c.transfer.label_free = True      # the smoke teacher (8 steps) is never right
    c.sweep = dict(points=POINTS, seeds=1)
  return c
