r"""``python -m kd_jax.tokenizer_table``: the command line of :mod:`kd_jax.reporting.tokenizer_table`
(see there)."""

from kd_jax.config import cli
from kd_jax.reporting.tokenizer_table import write

if __name__ == "__main__":
  cli.run_table(write, "kd_jax.tokenizer_table", "A kd_jax.sweep directory of text runs.")
