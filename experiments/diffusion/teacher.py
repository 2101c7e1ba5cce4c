r"""The diffusion teacher: a UNet denoiser on Fashion-MNIST, sampled by DDIM (issue 24).

    python -m kd_jax.main --config=experiments/diffusion/teacher.py --workdir=runs/diffusion_teacher
    python -m kd_jax.main --config=experiments/diffusion/teacher.py:smoke --workdir=/tmp/dteacher

The teacher (a 2-level UNet, widths 16 and 32, 142k parameters: kd_jax/models/unet.py)
learns v-prediction on the 60,000 training images (kd_jax/tasks/diffusion.py), 2,000 steps
of batch 64, and is cached like every teacher; the run's student is a UNet of half the
width trained the same way from scratch, without the teacher (``method="none"``). Both
are reported with DDIM at 256, 16, 4, 2 and 1 steps from the same 500 noise draws
(``results[phase]["steps_<n>"]``: FD-FMNIST, precision, recall, coverage, time per
image; the student's squared distance to the teacher's 256-step samples).

Run time on the 2-core CPU: the teacher 14 minutes (824 s), its report (and, the first
time, the feature classifier) about 5 more; the from-scratch student about as long
again. Expected (measured at commit 2ebb937): the teacher's held-out denoising loss
0.186; FD-FMNIST 132 at 256 DDIM steps, 154 at 16, 285 at 4, 420 at 2, 580 at 1
(docs/diffusion.md). ``:smoke`` runs in well under a minute.
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
    # (the quality metrics in a classifier of 2,048 training images, not all 60,000)
    c.dataset = config_lib.diffusion_dataset(train_examples=256, test_examples=64, samples=8,
                                             classifier_examples=2048,
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
