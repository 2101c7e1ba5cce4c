r"""Attention transfer (Zagoruyko & Komodakis 2017): CE + β·Σ‖a_s − a_t‖² over matched conv stages.

    python -m kd_jax.main --config=experiments/fashion_mnist/at.py --workdir=runs/at
    python -m kd_jax.main --config=experiments/fashion_mnist/at.py:smoke --workdir=/tmp/at_smoke

Teacher, data and budget are the default experiment's (experiments/fashion_mnist/kd.py;
the cached teacher is reused). AT needs spatial maps, so the student is a narrow CNN with the teacher's 14x14 and 7x7 stages (both matched).
Measured on the 2-core CPU (cached teacher, seed 0, shared machine): 172 s, student
(52k parameters) 90.18% vs 90.27% from scratch (−0.09 points). The loss weights are the
published defaults, not tuned on Fashion-MNIST.
"""

from kd_jax import config as config_lib

kd = config_lib.load_sibling(__file__, "kd")


def get_config(arg=None):
  c = kd.get_config()
  c.experiment = "fashion_mnist/at"
  c.method = "at"
  c.alpha = 1.0
  c.feature_weight = 1000.0          # the paper's β
  # A small CNN student with the teacher's spatial plan (14x14, 7x7), so the maps can be compared.
  c.student.model = "cnn"
  c.student.kwargs = dict(widths=(8, 16), first_kernel=5, first_stride=2, head="flatten", hidden=64)
  return kd.apply_arg(c, arg)
