r"""``python -m kd_jax.diffusion_table``: the command line of :mod:`kd_jax.reporting.diffusion_table`
(see there)."""

from kd_jax.config import cli
from kd_jax.reporting.diffusion_table import write

if __name__ == "__main__":
  cli.run_table(write, "kd_jax.diffusion_table", "A kd_jax.sweep directory of diffusion runs.")
