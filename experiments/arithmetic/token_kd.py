r"""Token-level distillation on the arithmetic reasoning task: a GPT teacher teaches a smaller GPT.

    python -m kd_jax.main --config=experiments/arithmetic/token_kd.py --workdir=runs/arithmetic_kd
    python -m kd_jax.main --config=experiments/arithmetic/token_kd.py:smoke --workdir=/tmp/akd

The task (kd_jax/data/arithmetic.py): left-to-right chains of additions and
subtractions of 2-digit numbers, answered step by step (``48+25-13=`` →
``48+25=73;73-13=60####60``). The teacher (a 4-layer, 128-wide GPT) is trained
once on the gold chains and cached; the student (2 layers, 64 wide) is trained
with the same budget from the gold chains alone (the baseline: supervised
fine-tuning) and with token-level KD from the teacher (KL at T = 1, α = 0.5, on
the gold responses: prompt and padding masked, the per-token mean over the
global batch). Headline: greedy exact match on 500 held-out problems.

Expected run time and results: see the README's arithmetic table (measured with
the command above on the 2-core CPU).
"""

from kd_jax import config as config_lib


def teacher_spec(c):
  """A GPT that learns the task well within minutes on 2 CPU cores."""
  c.teacher.model = "gpt"
  c.teacher.kwargs = dict(num_layers=4, num_heads=4, dim=128)
  c.teacher.train.epochs = 12
  c.teacher.train.batch_size = 64
  c.teacher.train.learning_rate = 1e-2
  c.teacher.train.lr_schedule = "warmup_cosine"
  c.teacher.train.eval_batch_size = 500


def get_config(arg=None):
  c = config_lib.base_config()
  c.experiment = "arithmetic/token_kd"
  c.dataset = config_lib.arithmetic_dataset(train_examples=8000, test_examples=500, steps=2,
                                            digits=2)
  c.sampling = config_lib.sampling_config()
  teacher_spec(c)
  c.student.model = "gpt"
  c.student.kwargs = dict(num_layers=2, num_heads=4, dim=64)
  c.method = "kd"
  c.divergence = "kl"
  c.temperature = dict(schedule="constant", init=1.0)
  c.alpha = 0.5
  c.train.epochs = 12
  c.train.batch_size = 64
  c.train.learning_rate = 1e-2
  c.train.lr_schedule = "warmup_cosine"
  c.train.eval_batch_size = 500
  c.baseline = True
  c.log_every_steps = 25
  return apply_arg(c, arg)


def apply_arg(c, arg):
  """``:smoke`` shrinks the run to seconds; any other argument is an error."""
  if arg == "smoke":
    c.dataset.train_examples = 512
    c.dataset.test_examples = 64
    c.teacher.train.epochs = 1
    c.train.epochs = 1
    c.sampling.num_samples = 2
    c.sampling.pass_at_k = (1, 2)
    c.log_every_steps = 2
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; valid: smoke")
  return c
