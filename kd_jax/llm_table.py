r"""``python -m kd_jax.llm_table``: the command line of :mod:`kd_jax.reporting.llm_table` (see there)."""

from collections.abc import Sequence

from absl import flags

from kd_jax.config import cli
from kd_jax.reporting.llm_table import write


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {argv[1:]}")
  print(write(flags.FLAGS.workdir, flags.FLAGS.reference,
              allow_mixed_code=flags.FLAGS.allow_mixed_code), end="")


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "A kd_jax.sweep directory of language-model runs.")
  flags.DEFINE_string("reference", "sft", "The point the others are compared with (paired).")
  flags.DEFINE_bool("allow_mixed_code", False, "Tabulate runs computed by different code.")
  flags.mark_flags_as_required(["workdir"])
  cli.run(main, "kd_jax.llm_table")
