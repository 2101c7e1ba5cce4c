r"""The step-distillation table: every diffusion student beside the teacher, 3 seeds (issue 24).

    python -m kd_jax.sweep --config=experiments/diffusion/table.py --workdir=runs/diffusion_table
    python -m kd_jax.diffusion_table --workdir=runs/diffusion_table

The teacher of experiments/diffusion/teacher.py (trained once, cached) and, from its
copy, one point per student: ``progressive``, ``consistency``, ``one_step_kd`` and
``adversarial``, each with the settings of its experiment module and the same
``train.steps``; every run reports the teacher's DDIM and the student's at 256, 16, 4,
2 and 1 steps on the same noise. Not yet run or calibrated (issue 24).
"""

from kd_jax import config as config_lib

teacher = config_lib.load_sibling(__file__, "teacher")

FROM_TEACHER = "student_init=teacher"


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  c = teacher.base(arg)
  c.experiment = "diffusion/table"
  c.student.kwargs = dict(c.teacher.kwargs)
  c.train.learning_rate = 1e-4
  c.progressive = config_lib.progressive_config(start_steps=256, final_steps=1)
  c.consistency = config_lib.consistency_config(grid=64, ema=0.95, distance="pseudo_huber")
  c.one_step_kd = config_lib.one_step_kd_config(pairs=10000, teacher_steps=256)
  c.adversarial = config_lib.adversarial_config()
  c.train.steps = 8 * 500          # a multiple of progressive's 8 rounds
  if arg == "smoke":
    c.train.steps = 4
    c.progressive = config_lib.progressive_config(start_steps=4, final_steps=1)
    c.consistency.grid = 4
    c.one_step_kd = config_lib.one_step_kd_config(pairs=64, teacher_steps=4)
    c.adversarial.discriminator_width = 8
  c.sweep = dict(points=tuple(f"{m}: method={m}; {FROM_TEACHER}" for m in (
      "progressive", "consistency", "one_step_kd", "adversarial")),
      seeds=1 if arg == "smoke" else 3)
  return c
