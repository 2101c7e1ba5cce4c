r"""Consistency distillation (Song et al. 2023) of the diffusion teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/consistency.py --workdir=runs/diffusion_cd
    python -m kd_jax.main --config=experiments/diffusion/consistency.py:smoke --workdir=/tmp/dcd

The teacher of experiments/diffusion/teacher.py; the student starts as its copy, wrapped
as a consistency function (f(z, 0) = z exactly), and learns from one teacher DDIM step
between neighbours of a 64-point time grid against an EMA target network
(kd_jax/methods/consistency.py). Reported at 4, 2 and 1 steps
(``dataset.student_sample_steps``) beside the teacher at 256, 16, 4, 2 and 1. Run time on
the 2-core CPU with the teacher cached: about 2.7 minutes (240 steps). Expected (3 seeds,
commit 2ebb937, docs/diffusion.md): FD-FMNIST 309.5 ± 6.7 at 1 step and 204.8 ± 2.2 at 4
(the teacher: 580 at 1 DDIM step, 132 at 256).
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")


def get_config(arg=None):
  c = teacher.distilled(arg, "consistency")
  c.consistency = config_lib.consistency_config(grid=64, ema=0.95, distance="pseudo_huber")
  if arg == "smoke":
    c.consistency.grid = 4
  return c
