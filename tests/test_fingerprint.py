"""The code fingerprint (DESIGN §5.6): caches and results name the code that computed them."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys

import pytest

from kd_jax.core import fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process on a copy of the package: the fingerprint is taken at import.
KEYS = """
import json, sys
from kd_jax.config import base_config
from kd_jax.core import fingerprint
from kd_jax.run import teachers
config = base_config()
keys = {"fingerprint": fingerprint.fingerprint(), "teacher": teachers.teacher_key(config),
        "baseline": teachers.baseline_key(config), "package": fingerprint.PACKAGE_DIR,
        "commit": fingerprint.record()["commit"]}
if len(sys.argv) > 1:                      # edit a file after the import
  with open(sys.argv[1], "a") as f:
    f.write("\\n_EDITED_WHILE_RUNNING = 1\\n")
  keys["changed"] = fingerprint.changed_since_import()
  keys["still"] = fingerprint.fingerprint()
print(json.dumps(keys))
"""


def _keys(package_parent, *edit_after_import):
  out = subprocess.run([sys.executable, "-c", KEYS, *edit_after_import], capture_output=True,
                       text=True, timeout=300, cwd=package_parent,
                       env=dict(os.environ, PYTHONPATH=str(package_parent), JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_keys_change_with_the_source_of_a_model_and_not_of_a_report(tmp_path):
  copy = tmp_path / "copy"
  shutil.copytree(os.path.join(ROOT, "kd_jax"), copy / "kd_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  before = _keys(copy)
  assert before["package"] == str(copy / "kd_jax")          # the copy, not the checkout
  assert before["commit"] is None                           # and no git checkout's commit
  # A report's source computes no result: the keys stay.
  with open(copy / "kd_jax" / "reporting" / "plots.py", "a") as f:
    f.write("\n# a report's edit\n")
  assert _keys(copy) == before
  # Comments and docstrings of a model compute nothing: the keys stay.
  gpt = copy / "kd_jax" / "models" / "gpt.py"
  source = gpt.read_text()
  gpt.write_text(source.replace('"""', '"""An edited docstring. ', 1) + "\n# a comment\n")
  assert _keys(copy) == before
  # A model's code (as a change like apply_rope's: same file, other numbers) does change them.
  with open(gpt, "a") as f:
    f.write("\n_A_MODEL_EDIT = 1\n")
  after = _keys(copy)
  for key in ("fingerprint", "teacher", "baseline"):
    assert after[key] != before[key], key
  # Edited while a process runs: the process keeps the code it imported, and says so.
  during = _keys(copy, str(copy / "kd_jax" / "engine" / "step.py"))
  assert during["fingerprint"] == during["still"] == after["fingerprint"]
  assert during["changed"] == [os.path.join("engine", "step.py")]


def test_a_code_digest_ignores_comments_docstrings_and_layout_but_not_code():
  source = b'''"""Module doc."""
def f(x):
  """Doc."""
  return x * 2  # twice
'''
  same = b'''"""Another module doc."""


def f(x):
  # a new comment
  return x*2
'''
  digest = fingerprint.code_digest(source)
  assert fingerprint.code_digest(same) == digest
  assert fingerprint.code_digest(source.replace(b"x * 2", b"x * 3")) != digest
  assert fingerprint.code_digest(source.replace(b"return x", b"y = x\n  return y")) != digest
  # A string statement that is not a docstring is code, not documentation.
  assert fingerprint.code_digest(source.replace(b"  return", b"  's'\n  return")) != digest


def test_the_record_names_the_commit_and_the_library_versions():
  record = fingerprint.record()
  assert record["fingerprint"] == fingerprint.fingerprint() and len(record["fingerprint"]) == 16
  assert record["versions"] == {name: importlib.metadata.version(name)
                                for name in fingerprint.LIBRARIES}
  git = shutil.which("git")
  head = subprocess.run([git, "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                        check=False) if git else None
  if head is None or head.returncode:
    pytest.skip("not a git checkout")
  assert record["commit"] == head.stdout.strip()
  assert isinstance(record["dirty"], bool)


def test_a_digest_covers_every_numerics_module_and_nothing_else():
  digests = fingerprint._source_digests()
  packages = {path.split(os.sep)[0] for path in digests}
  assert packages == set(fingerprint.NUMERICS_PACKAGES)
  assert os.path.join("models", "gpt.py") in digests
  assert not any(p.startswith(("reporting", "export", "config")) for p in digests)


@pytest.mark.slow
def test_a_table_point_run_twice_from_nothing_gives_identical_results(tmp_path):
  # The R1 table's seqkd point (teacher, transfer set, student) twice, each in fresh
  # workdirs and caches (teachers, transfer sets, compiled programs): the same numbers,
  # timings and the code record aside (tests/smoke_record.py's VOLATILE keys).
  from tests import smoke_record
  spec = "experiments/arithmetic/seqkd.py:smoke"
  runs = [smoke_record.run(spec, str(tmp_path / name), str(tmp_path / name / "teachers"))
          for name in ("first", "second")]
  assert "error" not in runs[0], runs[0].get("error")
  assert list(runs[0]) == ["results.json"] and runs[0]["results.json"]["transfer_set"]
  assert smoke_record.differences(runs[0], runs[1]) == []
