"""Files that are either complete or absent: one atomic-write convention for the house.

Every file a run may be killed while writing (results, records, caches, tokenizers) is
written to ``<path>.<pid>.tmp`` and renamed over ``path`` (``os.replace`` is atomic on
POSIX), so a reader never sees a half-written file; the pid keeps two processes that write
the same path (a shared cache, two sweep workers) from sharing one temporary file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any, Callable


def temporary_path(path: str) -> str:
  """The temporary file next to ``path`` that this process writes before renaming it."""
  return f"{path}.{os.getpid()}.tmp"


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path to write; on success it replaces ``path``, on error it is removed.

  >>> import tempfile
  >>> target = os.path.join(tempfile.mkdtemp(), "a.txt")
  >>> with atomic_path(target) as tmp:
  ...   _ = open(tmp, "w").write("done")
  >>> open(target).read()
  'done'
  """
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = temporary_path(path)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w") -> Iterator[Any]:
  """``open`` for writing, atomically (see :func:`atomic_path`)."""
  with atomic_path(path) as tmp, open(tmp, mode) as f:
    yield f


def write_json(path: str, obj, *, indent: int = 2, default: Callable | None = str,
               sort_keys: bool = False) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically; ``default`` converts what JSON cannot
  (``float`` for NumPy scalars in results, ``str`` for anything else)."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=indent, default=default, sort_keys=sort_keys)


def read_json(path: str):
  """The JSON in ``path``, or None when there is no such file."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
  """Holds a lock file (``.locks/<name>.lock`` beside ``path``: a listing of the entries
  shows none) while the block runs: concurrent processes that would produce the same
  shared entry ``path`` (two runs of a Ray or SLURM sweep training one teacher) take
  turns, and the second finds the entry done.

  An OS lock (``filelock``: ``flock`` on POSIX), so it is released when its process dies
  and never goes stale; on NFS it needs the server's locking (NFSv4, or ``lockd``), on
  Lustre the ``flock`` mount option.
  """
  import filelock  # noqa: PLC0415  (only runs that share a cache need it)
  directory, name = os.path.split(os.path.abspath(path))
  locks = os.path.join(directory, ".locks")
  os.makedirs(locks, exist_ok=True)
  with filelock.FileLock(os.path.join(locks, f"{name}.lock")):
    yield
