r"""On-policy distillation (GKD, Agarwal et al. 2024): the student learns from the teacher's
token-level judgement of its own answers.

    python -m kd_jax.main --config=experiments/arithmetic/gkd.py --workdir=runs/arithmetic_gkd
    python -m kd_jax.main --config=experiments/arithmetic/gkd.py:smoke --workdir=/tmp/agkd

The data, teacher, student, budget and seed of experiments/arithmetic/token_kd.py.
In a fraction λ = ``gkd.fraction`` of the training steps the batch's responses are
sampled by the current student inside the jitted step (temperature
``gkd.temperature``, fixed shapes: one compilation); the other steps use the gold
responses. Every batch is scored token by token with T²·JSD(β) between teacher
and student (``gkd.beta``; β = 0 is KL(teacher ‖ student), 1 the reverse, TRL's
convention). λ = 0 is supervised KD with JSD(β); λ = 1 is fully on-policy. The
teacher runs inside every step (its outputs on student samples cannot be cached).

Measured on the 2-core CPU (2026-11-27, one seed, teacher cached): 97 s in all;
exact match 5.8% (the student from scratch: 64.6%); with ``--config.gkd.fraction=0``
38.0%. From scratch, without a CE term, neither the JSD objective nor the
student's own early samples teach this student well; the paper starts GKD from a
supervised fine-tuned student.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/gkd"
  c.method = "gkd"
  c.gkd = config_lib.gkd_config(fraction=0.5, beta=0.5, temperature=1.0)
  return token_kd.apply_arg(c, arg)
