"""A run records the library versions and XLA flags it ran with, and an unfinished run is not
resumed under other versions unless told to (kd_jax/run/workdir.py, issue 26)."""

import json
import os
import subprocess
import sys

import pytest

from kd_jax.core import fingerprint
from kd_jax.core.errors import WorkdirConflictError
from kd_jax.run import workdir as workdir_lib
from tests.test_experiments import ROOT, _cli, cli_load

SMOKE = "experiments/fashion_mnist/kd.py:smoke"


def _recorded_with(tmp_path, **versions):
  """A workdir recorded by the smoke config, then its versions edited to ``versions``."""
  workdir = str(tmp_path / "w")
  os.makedirs(workdir)
  workdir_lib.record(workdir, cli_load(SMOKE))
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    record = json.load(f)
  assert record["versions"] == {name: fingerprint.versions()[name]
                                for name in fingerprint.LIBRARIES}
  record["versions"].update(versions)
  with open(path, "w") as f:
    json.dump(record, f)
  return workdir


def test_a_resume_under_other_library_versions_is_refused_by_name(tmp_path):
  now = fingerprint.versions()
  same = _recorded_with(tmp_path / "same")
  workdir_lib.check_versions(same)                     # the versions it started with: resumes
  other = _recorded_with(tmp_path / "other", jax="0.0.1", optax="0.0.2")
  with pytest.raises(WorkdirConflictError) as refused:
    workdir_lib.check_versions(other)
  message = str(refused.value)
  assert f"jax: 0.0.1 → {now['jax']}" in message and f"optax: 0.0.2 → {now['optax']}" in message
  assert "flax" not in message and "--allow_version_change" in message
  workdir_lib.check_versions(other, allow_change=True)   # told to: resumes


def test_a_workdir_recorded_before_versions_were_is_not_refused(tmp_path):
  workdir = _recorded_with(tmp_path)
  path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  with open(path) as f:
    record = json.load(f)
  del record["versions"]
  with open(path, "w") as f:
    json.dump(record, f)
  workdir_lib.check_versions(workdir)


def test_the_command_line_refuses_before_anything_runs(tmp_path):
  workdir = _recorded_with(tmp_path, numpy="1.0.0")
  out = _cli(f"--config={SMOKE}", f"--workdir={workdir}", "--noprogress")
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"numpy: 1.0.0 → {fingerprint.versions()['numpy']}" in out.stderr
  assert "Traceback" not in out.stderr
  assert sorted(os.listdir(workdir)) == [workdir_lib.CONFIG_FILE]     # nothing was run


def test_the_code_record_holds_the_xla_flags_the_process_started_with():
  script = "import json; from kd_jax.core import fingerprint; print(json.dumps(fingerprint.record()))"
  flags = "--xla_cpu_enable_fast_math=false"
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu"), timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["xla_flags"] == flags
