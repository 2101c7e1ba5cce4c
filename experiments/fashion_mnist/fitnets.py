r"""FitNets (Romero et al. 2015): CE + MSE between adapted student and teacher features.

    python -m kd_jax.main --config=experiments/fashion_mnist/fitnets.py --workdir=runs/fitnets
    python -m kd_jax.main --config=experiments/fashion_mnist/fitnets.py:smoke --workdir=/tmp/fitnets_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). The hint matches the student's penultimate layer to the teacher's through a learned linear adapter.
Measured on the 2-core CPU (cached teacher and baseline, seed 0, shared machine):
49 s, student 89.33% vs 89.24% from scratch (+0.09 points). The loss weights are the published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/fitnets"
  c.method = "fitnets"
  c.alpha = 1.0                      # hard-label CE; the hint is the only teacher signal
  c.feature_weight = 1.0
  c.feature_layers = {"embedding": "embedding"}  # MLP hidden (128) -> CNN dense (256), linear adapter
  return kd.apply_arg(c, arg)
