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
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/gkd"
  c.method = "gkd"
  c.gkd = config_lib.gkd_config(fraction=0.5, beta=0.5, temperature=1.0)
  return token_kd.apply_arg(c, arg)
