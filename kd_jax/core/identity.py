"""Identities: what a cached or recorded artefact was computed from, and its digest.

A teacher, baseline, teacher-output cache, transfer set or workdir is keyed by a JSON-able
*identity* dict of everything its contents depend on; its :func:`digest` names the file or
directory, and :func:`identity_record` is what a workdir or checkpoint stores to be checked
against the next run (DESIGN §5.6: a cache never answers for another config or code).
"""

from __future__ import annotations

import hashlib
import json


def digest(identity) -> str:
  """A 16-hex-digit hash of a JSON-able identity dict (key order does not matter).

  >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
  True
  >>> len(digest({"a": 1}))
  16
  """
  text = json.dumps(identity, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def identity_record(identity: dict) -> dict:
  """``{"key": digest, "fields": identity}``: what a workdir or checkpoint records."""
  return {"key": digest(identity), "fields": identity}
