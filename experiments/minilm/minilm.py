r"""MiniLM-style distillation of all-MiniLM-L6-v2 into a narrower student (256 wide, 4 heads).

    python -m kd_jax.main --config=experiments/minilm/minilm.py --workdir=runs/minilm_minilm
    python -m kd_jax.main --config=experiments/minilm/minilm.py:smoke --workdir=/tmp/mml

As ``distilbert.py`` (teacher, data, budget, evaluation), but the student is 256 wide
with 4 attention heads and 4 layers, from random weights, and learns only the
teacher's last-layer self-attention: the attention distributions (Q, K) and the
value relations (V, V), each cut into 8 relation heads so that the two widths and
head counts need not match (Wang et al. 2020, 2021; kd_jax/objectives/attention_losses.py).
"""

from kd_jax import config as config_lib
from kd_jax.run import grid

distilbert = config_lib.load_sibling(__file__, "distilbert")

# What this experiment changes in distilbert.py's (also a point of table.py).
POINT = ("minilm: method=minilm; student_init=scratch; divergence=kl; "
         "student.kwargs.dim=256; student.kwargs.num_layers=4; student.kwargs.num_heads=4; "
         "student.kwargs.mlp_dim=1024; encoder.relation_heads=8; train.learning_rate=5e-4")


def get_config(arg=None):
  c = distilbert.get_config(arg)
  (_, point), = grid.parse_points([POINT], c)
  c = grid.apply_point(c, point)
  c.experiment = "minilm/minilm"
  if arg == "smoke":
    c.student.kwargs = dict(dim=64, num_layers=2, num_heads=2, mlp_dim=128)
  return c
