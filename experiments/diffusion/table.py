r"""The step-distillation table: every diffusion student beside the teacher, 3 seeds (issue 24).

    python -m kd_jax.sweep --config=experiments/diffusion/table.py --workdir=runs/diffusion_table
    python -m kd_jax.diffusion_table --workdir=runs/diffusion_table

The teacher of experiments/diffusion/teacher.py (trained once, cached) and, from its
copy, one point per student: ``progressive``, ``consistency``, ``one_step_kd`` and
``adversarial``, each with the block of its experiment module and the same
``train.steps`` (240; progressive's: a multiple of its 8 rounds); every run reports the
teacher's DDIM at 256, 16, 4, 2 and 1 steps (computed once, cached) and the student's at
4, 2 and 1 steps on the same 500 noise draws.

Run time on the 2-core CPU: 58 minutes from nothing (teacher 14 min, its report and the
feature classifier about 5), 36 minutes for the 12 student runs. Expected (commit
2ebb937, docs/diffusion.md): FD-FMNIST of the 1-step students one_step_kd 207.2 ± 0.9,
progressive 216.5 ± 6.4, consistency 309.5 ± 6.7, adversarial 513 ± 149 (the teacher's
1-step DDIM: 580; its 256 steps: 132); at 4 steps one_step_kd 150 and progressive 158
meet the 1.5× target, no 1-step student meets the ≤ ¼-of-teacher-1-step target.
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")

STUDENTS = ("progressive", "consistency", "one_step_kd", "adversarial")


def get_config(arg=None):
  c = teacher.distilled(arg, STUDENTS[0])      # (each point sets its method)
  c.experiment = "diffusion/table"
  modules = {name: config_lib.load_sibling(__file__, name).get_config(arg) for name in STUDENTS}
  for name, module in modules.items():
    c[name] = module[name]                     # each method's block, as its module sets it
  c.train.steps = modules["progressive"].train.steps     # a multiple of its rounds
  c.sweep = dict(points=tuple(f"{m}: method={m}; student_init=teacher" for m in STUDENTS),
                 seeds=1 if arg == "smoke" else 3)
  return c
