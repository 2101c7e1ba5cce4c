r"""The reasoning testbed's reference students: supervised fine-tuning on the student's own data.

    python -m kd_jax.main --config=experiments/reasoning/sft.py --workdir=runs/reasoning_sft_answers
    python -m kd_jax.main --config=experiments/reasoning/sft.py:gold --workdir=runs/reasoning_sft_gold
    python -m kd_jax.main --config=experiments/reasoning/sft.py:smoke --workdir=/tmp/rsft

The task (kd_jax/tasks/reasoning.py, kd_jax/data/reasoning.py): signed sums of four
two-digit numbers (``37+48-15+26=``) that a worked solution may take in any order whose
running totals stay >= 0. The student (a 2-layer, 128-wide GPT, 401k parameters) has as
its original data 4,000 problems with final answers only (``sft-answers``, the default);
``:gold`` trains it instead on the 4,000 step-by-step solutions the teacher (a 4-layer,
128-wide GPT, 0.8M parameters, 2,000 steps) learns from (``sft-gold``). Every student
trains 3,000 steps of 64 rows, evaluated every 300. Headline: greedy exact match on 2,000
held-out problems; ``ood_exact_match["terms+1"]`` on problems with five numbers.

The teacher reaches 85.1% exact match on the 2,000 test problems. The calibration of
these budgets (learning curves and seed spreads of the reference students) is in
docs/language_models.md, "The reasoning testbed".
"""

from kd_jax import config as config_lib

def base(arg=None):
  """The testbed's data, teacher, student and budget (shared by the reasoning modules)."""
  c = config_lib.base_config()
  c.experiment = "reasoning/sft"
  c.dataset = config_lib.reasoning_dataset(gold_examples=4000, test_examples=2000)
  c.sampling = config_lib.sampling_config()
  c.teacher.model = "gpt"
  c.teacher.kwargs = dict(num_layers=4, num_heads=4, dim=128)
  c.teacher.train.steps = 2000
  c.teacher.train.batch_size = 64
  c.teacher.train.learning_rate = 3e-3
  c.teacher.train.lr_schedule = "warmup_cosine"
  c.teacher.train.eval_batch_size = 500
  c.teacher.train.eval_every_steps = 500
  c.student.model = "gpt"
  # 128 wide: the 64-wide student of the first calibration learned the procedure at
  # seed-dependent steps (docs/language_models.md); 2,000 test problems: binomial sd
  # ≤ 1.1 points, below the spread the table must resolve.
  c.student.kwargs = dict(num_layers=2, num_heads=4, dim=128)
  c.method = "none"
  # Token-level distillation on text is at T = 1 (GKD, on-policy KD); the schema's 4.0 is
  # image KD's. `sampling`'s and each method block's temperatures are the sampling ones.
  c.temperature = dict(schedule="constant", init=1.0)
  c.baseline = False    # the points that start from it (or are it) set baseline=True
  c.train.steps = 3000
  c.train.eval_every_steps = 300      # the learning curve: its last 20% shows the plateau
  c.train.batch_size = 64
  c.train.learning_rate = 3e-3
  c.train.lr_schedule = "warmup_cosine"
  c.train.eval_batch_size = 500
  c.log_every_steps = 50
  if arg == "smoke":
    c.dataset = config_lib.reasoning_dataset(answers_examples=256, gold_examples=128,
                                             pool_examples=128, test_examples=64,
                                             ood_examples=32)
    c.teacher.train.steps = 8
    c.student.kwargs = dict(num_layers=2, num_heads=2, dim=64)    # (seconds, not a result)
    c.teacher.train.eval_every_steps = 4
    c.train.steps = 8
    c.train.eval_every_steps = 4
    c.sampling.num_samples = 2
    c.sampling.pass_at_k = (1, 2)
    c.log_every_steps = 2
  return c


def get_config(arg=None):
  """``:gold`` trains on the gold solutions (with ``:smoke``: ``--config.student_data=gold``)."""
  if arg not in (None, "gold", "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; valid: gold, smoke")
  c = base("smoke" if arg == "smoke" else None)
  c.student_data = "gold" if arg == "gold" else "answers"
  return c
