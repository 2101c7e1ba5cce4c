r"""Consistency distillation (Song et al. 2023) of the diffusion teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/consistency.py --workdir=runs/diffusion_cd
    python -m kd_jax.main --config=experiments/diffusion/consistency.py:smoke --workdir=/tmp/dcd

The teacher of experiments/diffusion/teacher.py; the student starts as its copy, wrapped
as a consistency function (f(z, 0) = z exactly), and learns from one teacher DDIM step
between neighbours of a 64-point time grid against an EMA target network
(kd_jax/methods/consistency.py). Reported at 256, 16, 4, 2 and 1 steps beside the
teacher. Not yet calibrated (issue 24): the budget is a first guess.
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")


def get_config(arg=None):
  c = teacher.distilled(arg, "consistency")
  c.consistency = config_lib.consistency_config(grid=64, ema=0.95, distance="pseudo_huber")
  if arg == "smoke":
    c.consistency.grid = 4
  return c
