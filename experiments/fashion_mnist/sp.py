r"""Similarity-preserving KD (Tung & Mori 2019): CE + γ·‖G_s − G_t‖²_F / B².

    python -m kd_jax.main --config=experiments/fashion_mnist/sp.py --workdir=runs/sp
    python -m kd_jax.main --config=experiments/fashion_mnist/sp.py:smoke --workdir=/tmp/sp_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). The Gram matrices are of the penultimate embeddings.
Measured on the 2-core CPU (cached teacher and baseline, seed 0, shared machine):
33 s, student 89.12% vs 89.24% from scratch (−0.12 points). The loss weights are the published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/sp"
  c.method = "sp"
  c.alpha = 1.0
  c.feature_weight = 3000.0          # the paper's γ
  return kd.apply_arg(c, arg)
