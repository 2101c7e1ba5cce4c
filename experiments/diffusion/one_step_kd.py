r"""One-step knowledge distillation (Luhman & Luhman 2021) of the diffusion teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/one_step_kd.py --workdir=runs/diffusion_kd1
    python -m kd_jax.main --config=experiments/diffusion/one_step_kd.py:smoke --workdir=/tmp/dkd1

The teacher of experiments/diffusion/teacher.py writes 2,000 (noise, 32-step DDIM sample)
pairs once (cached by teacher and settings); the student, a copy of the teacher, learns to
map each noise to its sample in one step (kd_jax/methods/one_step_kd.py). Reported at 4, 2
and 1 steps (``dataset.student_sample_steps``) beside the teacher at 256, 16, 4, 2 and 1.
Run time on the 2-core CPU with the teacher cached: about 4 minutes (240 steps). Expected
(3 seeds, commit 2ebb937, docs/diffusion.md): FD-FMNIST 207.2 ± 0.9 at 1 step and 149.9 ±
2.9 at 4 (the teacher: 580 at 1 DDIM step, 132 at 256).
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")


def get_config(arg=None):
  c = teacher.distilled(arg, "one_step_kd")
  c.one_step_kd = config_lib.one_step_kd_config(pairs=2000, teacher_steps=32)
  if arg == "smoke":
    c.one_step_kd = config_lib.one_step_kd_config(pairs=64, teacher_steps=4)
  return c
