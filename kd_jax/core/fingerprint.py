"""The code fingerprint: which source and library versions computed a result (DESIGN §5.6).

Every cache (teachers, baselines, teacher outputs, transfer sets) is keyed by its config
*and* by :func:`fingerprint`, so that a change of the code that computes it — say a
rotary embedding whose forward pass is unchanged but whose gradients differ — retrains
instead of reusing. ``results.json`` records :func:`record`.

The fingerprint is a digest of the source of every module under :data:`NUMERICS_PACKAGES`
plus the versions of the libraries in :data:`LIBRARIES`, **as they were when kd_jax was
imported**: the sources are read once, when this module is first imported (``import
kd_jax`` does it), so a file edited while a sweep runs does not change what the sweep's
runs say they ran; :func:`changed_since_import` tells that it happened.

One fingerprint serves every cache rather than one per artefact: a teacher is trained by
the same engine, objectives, task and pipeline as the students, and a finer split would
have to follow each artefact's imports, where a missed module is exactly the silent reuse
this exists to prevent. A module's digest is of its syntax tree less its docstrings
(:func:`code_digest`): comments, docstrings and layout compute nothing, so editing them
keeps every cache, while any change of a statement, name or constant retrains. The
command lines, export, the config schema and the reports change no result and are left
out (see :data:`NUMERICS_PACKAGES`).
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import os
import subprocess
import sys

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The packages whose code computes what runs and caches hold: DESIGN §1's layers below
# the command lines, less `reporting`, which only reads results, and `config`, whose
# defaults reach a result only as config values, which every cache key holds already.
NUMERICS_PACKAGES = ("core", "objectives", "models", "data", "llm", "engine", "tasks",
                     "methods", "run")
# The libraries whose versions change numbers (DESIGN §5.6).
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def _without_docstrings(tree: ast.AST) -> ast.AST:
  """``tree`` with the docstring of every module, class and function removed (in place)."""
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
          and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]
  return tree


def code_digest(source: bytes) -> str:
  """sha256 of what ``source`` computes: its syntax tree without docstrings, so comments,
  docstrings and layout do not count (``ast.dump`` holds no positions or comments). A
  file that does not parse is digested as its bytes."""
  try:
    tree = ast.parse(source)
  except SyntaxError:
    return hashlib.sha256(source).hexdigest()
  return hashlib.sha256(ast.dump(_without_docstrings(tree)).encode()).hexdigest()


def _source_digests(package_dir: str = PACKAGE_DIR) -> dict[str, str]:
  """``{path relative to kd_jax/: code_digest of it}`` for every ``.py`` of the numerics packages."""
  digests = {}
  for package in NUMERICS_PACKAGES:
    root = os.path.join(package_dir, package)
    for directory, subdirs, names in os.walk(root):
      subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
      for name in sorted(n for n in names if n.endswith(".py")):
        path = os.path.join(directory, name)
        with open(path, "rb") as f:
          digests[os.path.relpath(path, package_dir)] = code_digest(f.read())
  return digests


def _versions() -> dict[str, str | None]:
  versions = {}
  for name in LIBRARIES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  return versions


def _git(*args: str) -> str | None:
  try:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                          cwd=PACKAGE_DIR, timeout=30).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _commit() -> dict:
  """The checkout's commit and whether its numerics packages differ from it (None outside git,
  and when the package is not tracked there: installed into a venv inside another repository)."""
  tracked = _git("ls-files", "--", "__init__.py") == "__init__.py"
  commit = _git("rev-parse", "HEAD") if tracked else None
  status = _git("status", "--porcelain", "--", *NUMERICS_PACKAGES) if commit else None
  return {"commit": commit, "dirty": bool(status) if commit else None}


# Taken once, at import: what this process's code is.
_SOURCES = _source_digests()
_VERSIONS = _versions()
# XLA's flags change compiled programs (and so numbers) without changing the code.
_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")
_COMMIT = _commit()
# ast.dump's form differs between Python versions (3.12 added type_params): the digests
# are those of this interpreter's minor version, which the fingerprint therefore holds.
_FINGERPRINT = hashlib.sha256(repr((sorted(_SOURCES.items()), sorted(_VERSIONS.items()),
                                    sys.version_info[:2])).encode()).hexdigest()[:16]


def fingerprint() -> str:
  """A 16-hex-digit digest of the loaded numerics code, the library versions and the
  Python minor version (the code digests are of its syntax trees)."""
  return _FINGERPRINT


def versions() -> dict[str, str | None]:
  """The versions of :data:`LIBRARIES` this process imported (None: not installed)."""
  return dict(_VERSIONS)


def record() -> dict:
  """What ``results.json`` stores under ``"code"``: the fingerprint, commit, versions and
  ``XLA_FLAGS`` (as the process started; '' when unset).

  ``commit`` and ``dirty`` (uncommitted changes under the numerics packages) are read at
  import, next to the sources; ``changed_since_import`` lists files edited since.
  """
  changed = changed_since_import()
  return {"fingerprint": _FINGERPRINT, **_COMMIT, "versions": dict(_VERSIONS),
          "xla_flags": _XLA_FLAGS,
          **({"changed_since_import": changed} if changed else {})}


def changed_since_import() -> list[str]:
  """The numerics source files (relative to kd_jax/) whose code (:func:`code_digest`) differs
  on disk from what was imported."""
  now = _source_digests()
  return sorted(p for p in set(now) | set(_SOURCES) if now.get(p) != _SOURCES.get(p))
