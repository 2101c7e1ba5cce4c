"""Command-line plumbing shared by ``kd_jax.main`` and ``kd_jax.sweep``: readable errors.

A mistake a person can fix — an invalid value, a misspelt ``--config.*`` field,
a missing config file or dataset, a workdir that belongs to another config —
prints one short message and exits with status 2, with no traceback::

    kd_jax.main: error: --config.temprature.init=2: no field 'temprature' at the top
    level. Did you mean 'temperature'? Valid fields there: alpha, baseline, ...

The message names what the user typed (``--config.alpha=1.5``, not the
``alpha.init`` it became inside). Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags, logging

from kd_jax.config import schema
from kd_jax.core.errors import ConfigError, DatasetNotFoundError

# Errors that are the user's to fix; anything else is a bug and shows its traceback.
USER_ERRORS = (ConfigError, DatasetNotFoundError)
EXIT_USER_ERROR = 2
_OVERRIDE = re.compile(r"^--(?:no)?config\.([A-Za-z0-9_.]+)(?:=(.*))?$")


def quiet_logging() -> None:
  """WARNING and above unless --verbosity is given: orbax and TFDS log every save and
  read at INFO, which buries the progress bar. ``--verbosity=0`` brings them back."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def fail(program: str, message: str) -> NoReturn:
  """Prints ``program: error: message`` to stderr and exits with status 2."""
  print(f"{program}: error: {message}", file=sys.stderr)
  sys.exit(EXIT_USER_ERROR)


def config_overrides(argv: Sequence[str]) -> dict[str, str]:
  """``{"alpha": "--config.alpha=1.5", ...}``: each ``--config.*`` flag as typed."""
  overrides = {}
  for i, arg in enumerate(argv):
    match = _OVERRIDE.match(arg)
    if match:
      typed = arg if match.group(2) is not None or i + 1 >= len(argv) or argv[i + 1].startswith(
          "-") else f"{arg} {argv[i + 1]}"
      overrides[match.group(1)] = typed
  return overrides


def _related(field: str, key: str) -> bool:
  return field == key or field.startswith(key + ".") or key.startswith(field + ".")


def describe(error: Exception, argv: Sequence[str]) -> str:
  """The one-line message for a user error, naming the ``--config.*`` flag behind it."""
  message = str(error)
  field = getattr(error, "field", None)
  if field:
    typed = [flag for key, flag in config_overrides(argv).items() if _related(field, key)]
    if typed:
      return f"{', '.join(typed)}: {message}"
  return message


def _config_spec(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config_file(spec: str):
  """``get_config(arg)`` of the experiment module ``path[:arg]``, as ml_collections loads it."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("kd_jax_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _unknown_override(argv: Sequence[str]) -> str | None:
  """The message for the first ``--config.*`` flag that names no field, if any."""
  config = load_config_file(_config_spec(argv))
  for key, typed in config_overrides(argv).items():
    try:
      schema.resolve_field(config, key)
    except ConfigError as e:
      return f"{typed}: {e}"
  return None


def _last_line(text: str) -> str:
  """The last non-empty line: ml_collections embeds a whole traceback in its flag errors."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  return lines[-1] if lines else text


def parse_flags(program: str) -> Callable[[list[str]], list[str]]:
  """An ``app.run`` flags parser that turns flag and config-file mistakes into one line."""

  def parser(argv: list[str]) -> list[str]:
    spec = _config_spec(argv)
    if spec is not None and not os.path.isfile(spec.partition(":")[0]):
      fail(program, f"--config={spec}: no such file {spec.partition(':')[0]!r} "
           f"(run from the repository root, or give the experiment module's full path)")
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      message = str(e)
      if "Error whilst parsing config file" in message:   # get_config raised
        fail(program, f"--config={spec}: {_last_line(message)}")
      fail(program, f"{_last_line(message)} (see --help)")
    except (KeyError, AttributeError, TypeError, ValueError):
      # ml_collections raises these for a --config.* flag that names no field.
      message = _unknown_override(argv)
      if message is None:
        raise
      fail(program, message)

  return parser


def run(main: Callable[[list[str]], None], program: str) -> None:
  """``app.run(main)`` with one-line messages and exit status 2 for user errors."""

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      fail(program, describe(e, sys.argv))

  app.run(guarded, flags_parser=parse_flags(program))


def run_table(write: Callable[..., str], program: str, workdir_help: str) -> None:
  """The command line of a table over a ``kd_jax.sweep`` directory: the required
  ``--workdir`` and ``--allow_mixed_code``; prints ``write(workdir, allow_mixed_code=...)``
  (which also writes the table's file)."""
  flags.DEFINE_string("workdir", None, workdir_help)
  flags.DEFINE_bool("allow_mixed_code", False, "Tabulate runs computed by different code.")
  flags.mark_flags_as_required(["workdir"])

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise ConfigError(None, f"unexpected arguments: {argv[1:]}")
    print(write(flags.FLAGS.workdir, allow_mixed_code=flags.FLAGS.allow_mixed_code), end="")

  run(main, program)
