r"""Adversarial diffusion distillation (Sauer et al. 2023, SD-Turbo's method) of the diffusion
teacher (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/adversarial.py --workdir=runs/diffusion_add
    python -m kd_jax.main --config=experiments/diffusion/adversarial.py:smoke --workdir=/tmp/dadd

The teacher of experiments/diffusion/teacher.py; the student, its copy, denoises images
noised to the times 1, ¾, ½, ¼ in one step, trained by score distillation through the
frozen teacher (λ = 2.5) and against a small discriminator with its own optimiser
(kd_jax/methods/adversarial.py). Reported at 4, 2 and 1 steps
(``dataset.student_sample_steps``) beside the teacher at 256, 16, 4, 2 and 1. Run time on
the 2-core CPU with the teacher cached: about 2.5 minutes (240 steps). Expected (3 seeds,
commit 2ebb937, docs/diffusion.md): FD-FMNIST 513 ± 149 at 1 step and 431 ± 73 at 4 (the
teacher: 580 at 1 DDIM step, 132 at 256).
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")


def get_config(arg=None):
  c = teacher.distilled(arg, "adversarial")
  c.adversarial = config_lib.adversarial_config()
  if arg == "smoke":
    c.adversarial.discriminator_width = 8
  return c
