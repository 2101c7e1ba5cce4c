r"""The diffusion teacher: a UNet denoiser on Fashion-MNIST, sampled by DDIM (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/teacher.py --workdir=runs/diffusion_teacher
    python -m kd_jax.main --config=experiments/diffusion/teacher.py:smoke --workdir=/tmp/dteacher

The teacher (a 2-level UNet, widths 32 and 64: kd_jax/models/unet.py) learns v-prediction
on the 60,000 training images (kd_jax/tasks/diffusion.py) and is cached like every
teacher; the run's student is a UNet of half the width trained the same way from
scratch, without the teacher (``method="none"``): the reference the distillation
methods will be compared with. Both are reported with DDIM at 256, 16, 4, 2 and 1 steps
from the same 1,000 noise draws (``results[phase]["steps_<n>"]``: time per image;
the student's squared distance to the teacher's 256-step samples).

Not yet calibrated: the budgets below are a first guess, and the feature-space
metrics (FD-FMNIST, precision, recall, coverage) and the distillation methods are
still to come (issue 24).
"""

from kd_jax import config as config_lib

SAMPLES = 500          # noise draws every model is sampled from (FD's fixed N)
STUDENT_STEPS = 240    # every distilled student's budget (progressive: 8 rounds of 30)


def base(arg=None):
  """The data, teacher and budget the diffusion experiments share."""
  c = config_lib.base_config()
  c.experiment = "diffusion/teacher"
  c.dataset = config_lib.diffusion_dataset(samples=SAMPLES)
  c.teacher.model = "unet"
  c.teacher.kwargs = dict(widths=(16, 32), embed_dim=64)
  c.teacher.train.steps = 2000
  c.teacher.train.batch_size = 64
  c.teacher.train.learning_rate = 1e-3
  c.teacher.train.lr_schedule = "warmup_cosine"
  c.teacher.train.eval_every_steps = 1000
  c.teacher.train.eval_batch_size = 500
  c.student.model = "unet"
  c.student.kwargs = dict(widths=(8, 16), embed_dim=32)
  c.method = "none"
  c.baseline = False        # the student here is itself the from-scratch reference
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.lr_schedule = "warmup_cosine"
  c.train.eval_every_steps = 1000
  c.train.eval_batch_size = 500
  c.log_every_steps = 50
  if arg == "smoke":
    c.dataset = config_lib.diffusion_dataset(train_examples=256, test_examples=64, samples=8,
                                             sample_steps=(4, 1))
    c.teacher.kwargs = dict(widths=(8, 16), embed_dim=32)
    c.student.kwargs = dict(widths=(8, 8), embed_dim=32)
    c.teacher.train.steps = c.train.steps = 4
    c.teacher.train.eval_every_steps = c.train.eval_every_steps = 2
    c.teacher.train.eval_batch_size = c.train.eval_batch_size = 32
    c.log_every_steps = 2
  return c


def distilled(arg, method: str):
  """The shared setting of every distilled student: ``method`` from a copy of the teacher
  (``student_init="teacher"``, the teacher's UNet) at a fine-tuning rate."""
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  c = base(arg)
  c.experiment = f"diffusion/{method}"
  c.method = method
  c.student_init = "teacher"
  c.student.kwargs = dict(c.teacher.kwargs)
  c.train.learning_rate = 3e-4
  c.train.steps = c.train.eval_every_steps = STUDENT_STEPS
  if arg == "smoke":
    c.train.steps, c.train.eval_every_steps = 4, 2
  else:   # the few-step students at the step counts they are for (the teacher: all of them)
    c.dataset.student_sample_steps = (4, 2, 1)
  return c


def get_config(arg=None):
  if arg not in (None, "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  return base(arg)
