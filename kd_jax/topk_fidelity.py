r"""``python -m kd_jax.topk_fidelity``: the command line of :mod:`kd_jax.reporting.topk_fidelity` (see there)."""

from kd_jax.config import cli
from kd_jax.reporting.topk_fidelity import write

if __name__ == "__main__":
  cli.run_table(write, "kd_jax.topk_fidelity",
                "A kd_jax.sweep directory over topk.k and topk.mode.")
