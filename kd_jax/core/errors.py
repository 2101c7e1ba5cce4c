"""The errors a person can fix: bad config values, unknown fields, refused workdirs, missing data.

The command-line entry points (:mod:`kd_jax.config.cli`) print these as one short
message and exit with status 2; every other exception is a bug and keeps its
traceback. Both subclass ``ValueError``, so library callers that catch
``ValueError`` (and the documented contract of config validation) are unchanged.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """An invalid config value, named by its dotted ``field`` (``"alpha"``, ``"train.epochs"``).

  ``field`` is None when the error is not about one field (e.g. two flags that
  conflict); the command line then shows the message as it is.
  """

  def __init__(self, field: str | None, message: str):
    super().__init__(message)
    self.field = field


class WorkdirConflictError(ConfigError):
  """A workdir (or checkpoint) that belongs to a run of a different config (docs/results.md)."""

  def __init__(self, message: str):
    super().__init__(None, message)


class DatasetNotFoundError(FileNotFoundError):
  """No usable copy of a dataset was found offline.

  The message says what to install (a Debian package) or which environment
  variable to set; it is raised instead of whatever a deeper library (TFDS)
  would have thrown, so users see one actionable line.
  """
