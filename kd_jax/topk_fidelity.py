r"""``python -m kd_jax.topk_fidelity``: the command line of :mod:`kd_jax.reporting.topk_fidelity` (see there)."""

from collections.abc import Sequence

from absl import flags

from kd_jax.config import cli
from kd_jax.core.errors import ConfigError
from kd_jax.reporting.topk_fidelity import write


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(None, f"unexpected arguments: {argv[1:]}")
  print(write(flags.FLAGS.workdir, allow_mixed_code=flags.FLAGS.allow_mixed_code), end="")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A kd_jax.sweep directory over topk.k and topk.mode.")
  flags.DEFINE_bool("allow_mixed_code", False, "Tabulate runs computed by different code.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, "kd_jax.topk_fidelity")
