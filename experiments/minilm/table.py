r"""The sentence-encoder table: DistilBERT-style, MiniLM-style and from-scratch students of
all-MiniLM-L6-v2, over seeds.

    python -m kd_jax.sweep --config=experiments/minilm/table.py --workdir=runs/minilm_table
    python -m kd_jax.sweep --config=experiments/minilm/table.py:smoke --workdir=/tmp/mtable

The points are the three experiment modules of this directory (``distilbert``,
``minilm``, ``scratch``), 3 seeds each (the seed changes the batch order and a
random student's initialisation; the teacher and the sentences are fixed). The
teacher's outputs are computed once per feature set and shared by every run.
``summary.md`` has, per point, the mean ± 95% CI of the probe and kNN accuracy,
the fidelity, ``probe_retention`` (student ÷ teacher probe accuracy) and
``speedup_b64`` / ``speedup_b1`` (student ÷ teacher sentences/s, same process).
"""

from kd_jax import config as config_lib

distilbert = config_lib.load_sibling(__file__, "distilbert")
minilm = config_lib.load_sibling(__file__, "minilm")
scratch = config_lib.load_sibling(__file__, "scratch")


def get_config(arg=None):
  c = distilbert.get_config(arg)
  c.experiment = "minilm/table"
  points = ["distilbert: student_init=teacher_layers", minilm.POINT, scratch.POINT]
  c.sweep = dict(points=tuple(points), seeds=2 if arg == "smoke" else 3)
  return c
