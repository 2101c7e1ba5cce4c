r"""The student fine-tuned on the gold chains alone (supervised fine-tuning): the LLM-KD baseline.

    python -m kd_jax.main --config=experiments/arithmetic/sft.py --workdir=runs/arithmetic_sft
    python -m kd_jax.main --config=experiments/arithmetic/sft.py:smoke --workdir=/tmp/asft

The data, student, budget and seed of experiments/arithmetic/token_kd.py, with
``method="none"``: the teacher is still trained (and cached) so that the report
compares the student with it (KL to the teacher, agreement). Its student equals
token_kd.py's baseline, to the bit.

Measured on the 2-core CPU with the teacher cached (2026-11-27): 34 s in all;
exact match 64.6% (teacher 99.8%), pass@4 83.0%.
"""

from kd_jax import config as config_lib

token_kd = config_lib.load_sibling(__file__, "token_kd")


def get_config(arg=None):
  c = token_kd.get_config()
  c.experiment = "arithmetic/sft"
  c.method = "none"
  c.baseline = False
  return token_kd.apply_arg(c, arg)
