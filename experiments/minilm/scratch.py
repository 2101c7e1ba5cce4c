r"""The DistilBERT-style student of ``distilbert.py`` trained from random weights (the control).

    python -m kd_jax.main --config=experiments/minilm/scratch.py --workdir=runs/minilm_scratch
    python -m kd_jax.main --config=experiments/minilm/scratch.py:smoke --workdir=/tmp/msc

Same student shape, data, objective and budget as ``distilbert.py``; only the
initialisation (random instead of the teacher's layers) and the learning rate differ.
"""

from kd_jax import config as config_lib
from kd_jax.run import grid

distilbert = config_lib.load_sibling(__file__, "distilbert")

# What this experiment changes in distilbert.py's (also a point of table.py).
POINT = "scratch: student_init=scratch; train.learning_rate=5e-4"


def get_config(arg=None):
  c = distilbert.get_config(arg)
  (_, point), = grid.parse_points([POINT], c)
  c = grid.apply_point(c, point)
  c.experiment = "minilm/scratch"
  return c
