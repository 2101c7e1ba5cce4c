r"""Probabilistic knowledge transfer (Passalis & Tefas 2018): CE + KL between cosine-similarity distributions.

    python -m kd_jax.main --config=experiments/fashion_mnist/pkt.py --workdir=runs/pkt
    python -m kd_jax.main --config=experiments/fashion_mnist/pkt.py:smoke --workdir=/tmp/pkt_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). The distributions are over the batch's penultimate embeddings.
Measured on the 2-core CPU (cached teacher and baseline, seed 0, shared machine):
35 s, student 89.08% vs 89.24% from scratch (−0.16 points). The loss weights are the published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/pkt"
  c.method = "pkt"
  c.alpha = 1.0
  c.feature_weight = 30000.0         # as in the CRD benchmark (Tian et al. 2020)
  return kd.apply_arg(c, arg)
