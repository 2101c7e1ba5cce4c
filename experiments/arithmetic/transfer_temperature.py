r"""How hot should the teacher write? Acceptance, diversity and the seqkd student vs sampling temperature.

    python -m kd_jax.sweep --config=experiments/arithmetic/transfer_temperature.py \
        --workdir=runs/transfer_temperature
    python -m kd_jax.llm_table --workdir=runs/transfer_temperature --reference=T0.5

The ``seqkd`` point of experiments/arithmetic/r1_table.py (k = 4 teacher samples per
training prompt, the verified ones kept, 1,000 student steps) at teacher sampling
temperatures 0.5, 1.0, 1.5 and 2.0 (``transfer.sampling.temperature``), 3 seeds
each. ``kd_jax.llm_table`` plots the transfer sets' acceptance rate, their distinct
accepted answers per prompt and the students' exact match against the temperature
(``transfer_vs_temperature.png``).
"""

from kd_jax import config as config_lib

r1_table = config_lib.load_sibling(__file__, "r1_table")


def get_config(arg=None):
  c = r1_table.get_config(arg)
  c.experiment = "arithmetic/transfer_temperature"
  c.method = "none"
  c.student_data = "transfer"
  temperatures = (0.5, 1.0, 1.5, 2.0)
  c.sweep = dict(points=tuple(f"T{t}: transfer.sampling.temperature={t}" for t in temperatures),
                 seeds=3)
  if arg == "smoke":
    c.sweep = dict(points=("T0.5: transfer.sampling.temperature=0.5",
                           "T1.5: transfer.sampling.temperature=1.5"), seeds=1)
  return c
