r"""Progressive distillation (Salimans & Ho 2022) of the diffusion teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/progressive.py --workdir=runs/diffusion_pd
    python -m kd_jax.main --config=experiments/diffusion/progressive.py:smoke --workdir=/tmp/dpd

The teacher of experiments/diffusion/teacher.py; the student starts as its copy
(``student_init="teacher"``) and halves its DDIM steps round by round, 256 → 1 (eight
rounds of ``train.steps`` / 8 steps: kd_jax/methods/progressive.py), and is reported at 4,
2 and 1 steps (``dataset.student_sample_steps``) beside the teacher at 256, 16, 4, 2 and
1. Run time on the 2-core CPU with the teacher cached: about 2.5 minutes (240 steps).
Expected (3 seeds, commit 2ebb937, docs/diffusion.md): FD-FMNIST 216.5 ± 6.4 at 1 step and
157.7 ± 5.6 at 4 (the teacher: 580 at 1 DDIM step, 132 at 256).
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
