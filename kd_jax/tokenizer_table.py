r"""``python -m kd_jax.tokenizer_table``: the command line of :mod:`kd_jax.reporting.tokenizer_table`
(see there)."""

from collections.abc import Sequence

from absl import flags

from kd_jax.config import cli
from kd_jax.reporting.tokenizer_table import write


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  print(write(flags.FLAGS.workdir, allow_mixed_code=flags.FLAGS.allow_mixed_code), end="")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A kd_jax.sweep directory of text runs.")
  flags.DEFINE_bool("allow_mixed_code", False, "Tabulate runs computed by different code.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, "kd_jax.tokenizer_table")
