r"""Decoupled KD (Zhao et al. 2022): CE + α·TCKD + β·NCKD, each with T².

    python -m kd_jax.main --config=experiments/fashion_mnist/dkd.py --workdir=runs/dkd
    python -m kd_jax.main --config=experiments/fashion_mnist/dkd.py:smoke --workdir=/tmp/dkd_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). The DKD term ramps up linearly over its warm-up steps, as in the paper.
Measured on the 2-core CPU (cached teacher and baseline, seed 0, shared machine):
58 s, student 88.79% vs 89.24% from scratch (−0.45 points). The loss weights are the published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/dkd"
  c.method = "dkd"
  c.dkd = dict(alpha=1.0, beta=8.0, warmup_steps=469)  # the paper's β=8; one epoch of warm-up
  c.temperature = dict(schedule="constant", init=4.0)
  return kd.apply_arg(c, arg)
