r"""The step-distillation table: every diffusion student beside the teacher, 3 seeds (issue 24).

    python -m kd_jax.sweep --config=experiments/diffusion/table.py --workdir=runs/diffusion_table
    python -m kd_jax.diffusion_table --workdir=runs/diffusion_table

The teacher of experiments/diffusion/teacher.py (trained once, cached) and, from its
copy, one point per student: ``progressive``, ``consistency``, ``one_step_kd`` and
``adversarial``, each with the block of its experiment module and the same
``train.steps`` (progressive's: a multiple of its rounds); every run reports the teacher's DDIM and the student's at 256, 16, 4,
2 and 1 steps on the same noise. Not yet run or calibrated (issue 24).
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
