r"""Relational KD (Park et al. 2019): CE + distance- and angle-wise relations of embeddings.

    python -m kd_jax.main --config=experiments/fashion_mnist/rkd.py --workdir=runs/rkd
    python -m kd_jax.main --config=experiments/fashion_mnist/rkd.py:smoke --workdir=/tmp/rkd_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). The relations are computed between the penultimate embeddings of a batch.
Measured on the 2-core CPU (cached teacher and baseline, seed 0, shared machine):
642 s (the angle term is O(B³·D) per step: 15 steps/s), student 89.07% vs 89.24% from scratch (−0.17 points). The loss weights are the published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/rkd"
  c.method = "rkd"
  c.alpha = 1.0
  c.feature_weight = 1.0             # rkd_loss carries the paper's 25 (distance) and 50 (angle)
  return kd.apply_arg(c, arg)
