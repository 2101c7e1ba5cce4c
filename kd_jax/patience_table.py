r"""``python -m kd_jax.patience_table``: the command line of :mod:`kd_jax.reporting.patience`
(see there). ``--workdir`` repeats: a budget's runs may be a sweep of their own."""

from collections.abc import Sequence

from absl import flags

from kd_jax.config import cli
from kd_jax.core.errors import ConfigError
from kd_jax.reporting.patience import write


def run() -> None:
  """Defines the flags (here, not at import: other entry points define ``--workdir`` too)
  and runs the command."""
  flags.DEFINE_multi_string("workdir", None, "A kd_jax.sweep directory whose points are "
                            "named <family>-<N>x (repeatable; the table and plot go into the "
                            "first).")
  flags.DEFINE_string("reference", None, "The family of the student alone (default: the one "
                      "family whose method is 'none').")
  flags.DEFINE_bool("allow_mixed_code", False, "Tabulate runs computed by different code.")
  flags.mark_flags_as_required(["workdir"])

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise ConfigError(None, f"unexpected arguments: {argv[1:]}")
    print(write(flags.FLAGS.workdir, allow_mixed_code=flags.FLAGS.allow_mixed_code,
                reference=flags.FLAGS.reference), end="")

  cli.run(main, "kd_jax.patience_table")


if __name__ == "__main__":
  run()
