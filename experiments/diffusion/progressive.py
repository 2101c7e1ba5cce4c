r"""Progressive distillation (Salimans & Ho 2022) of the diffusion teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/progressive.py --workdir=runs/diffusion_pd
    python -m kd_jax.main --config=experiments/diffusion/progressive.py:smoke --workdir=/tmp/dpd

The teacher of experiments/diffusion/teacher.py; the student starts as its copy
(``student_init="teacher"``) and halves its DDIM steps round by round, 256 → 1 (eight
rounds of ``train.steps`` / 8 steps: kd_jax/methods/progressive.py), and is reported at
256, 16, 4, 2 and 1 steps beside the teacher. Not yet calibrated (issue 24): the budget
is a first guess.
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")


def get_config(arg=None):
  c = teacher.distilled(arg, "progressive")
  c.progressive = config_lib.progressive_config(start_steps=256, final_steps=1)
  c.train.steps = teacher.STUDENT_STEPS      # 8 rounds of 30 steps
  if arg == "smoke":
    c.progressive = config_lib.progressive_config(start_steps=4, final_steps=1)
    c.train.steps = 4          # two rounds of two steps: 4 → 2 → 1
  return c
