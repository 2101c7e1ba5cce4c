"""Two real processes on localhost (jax.distributed, gloo CPU collectives), two CPU devices each.

The pair runs the tiny experiment as one 4-device job and must match the
single-process 4-device run (`tests.multidevice.device_runs`); its checkpoints
must restore in a single process with one device.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax.core import distributed
from tests.conftest import needs_fashion_mnist
from tests.multidevice import ROOT, device_runs, env, finish, free_port, start, student_losses

_WORKER = r"""
import json, sys

from kd_jax.core import distributed
port, process_id, workdir, teachers, overrides, stop = sys.argv[1:]
assert distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id))
import jax
assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 4, 2)
from kd_jax.run.pipeline import run_experiment
from tests.conftest import tiny_config
try:
  run_experiment(tiny_config(**json.loads(overrides)), workdir, teacher_dir=teachers,
                 show_progress=False, stop_at_step=int(stop) if stop != "-" else None)
except KeyboardInterrupt:
  print("interrupted at step", stop)
"""


def _run_pair(workdir, teachers, overrides=None, stop_at_step=None, timeout=240):
  """Runs the tiny experiment as two processes × two CPU devices; returns their outputs."""
  port = free_port()
  args = (str(port), None, str(workdir), str(teachers), json.dumps(overrides or {}),
          "-" if stop_at_step is None else str(stop_at_step))
  processes = [start(_WORKER, 2, *(a if a is not None else str(i) for a in args))
               for i in range(2)]
  try:
    return [finish(p, timeout) for p in processes]
  finally:
    for p in processes:   # a failed peer leaves the other waiting in a collective
      if p.poll() is None:
        p.kill()


def _restore_on_one_device(state_dir):
  """Restores a checkpoint written on any mesh onto this process's single device."""
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(state_dir).item_metadata
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
    return checkpointer.restore(state_dir, target)


def _final_state_dir(workdir):
  directory = os.path.join(workdir, "student", "checkpoints")
  return os.path.join(directory, str(max(int(d) for d in os.listdir(directory))), "state")


@needs_fashion_mnist
def test_two_processes_match_one_process_and_their_checkpoint_restores_in_one(
    tmp_path, teacher_dir):
  reference = device_runs(teacher_dir)["4"]      # also puts the trained teacher in the cache
  _run_pair(tmp_path / "pair", teacher_dir)
  results_path = tmp_path / "pair" / "results.json"
  with open(results_path) as f:
    results = json.load(f)
  assert results["timing"]["processes"] == 2 and results["timing"]["devices"] == 4
  assert results["teacher"]["cached"] is True    # every process loaded the cached teacher
  losses = student_losses(str(tmp_path / "pair"))
  # Only process 0 logs: one record per step, not two.
  assert len(losses) == len(reference["losses"]) == 8
  np.testing.assert_allclose(losses, reference["losses"], rtol=2e-5)
  for phase in ("teacher", "student"):
    assert results[phase]["test_accuracy"] == reference["results"][phase]["test_accuracy"]
  pair_state = _restore_on_one_device(_final_state_dir(str(tmp_path / "pair")))
  one_state = _restore_on_one_device(_final_state_dir(reference["workdir"]))
  assert int(pair_state["step"]) == 8
  leaves = jax.tree.leaves(pair_state["params"])
  assert leaves and all(x.sharding.device_set == {jax.devices()[0]} for x in leaves)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               pair_state, one_state)


@pytest.mark.slow
@needs_fashion_mnist
def test_two_processes_train_and_cache_the_teacher_and_resume_together(tmp_path, teacher_dir):
  """The pair trains the teacher (a collective save), is interrupted, and resumes."""
  reference = device_runs(teacher_dir)["4"]
  teachers = tmp_path / "teachers"
  overrides = {"checkpoint.every_steps": 2}
  outputs = _run_pair(tmp_path / "pair", teachers, overrides, stop_at_step=5)
  assert all("interrupted at step 5" in out for out in outputs)
  assert sorted(os.listdir(tmp_path / "pair" / "student" / "checkpoints")) == ["2", "4"]
  (key,) = os.listdir(teachers)                  # saved once, atomically: no .tmp left
  assert sorted(os.listdir(teachers / key)) == ["logs", "teacher.json", "variables"]
  _run_pair(tmp_path / "pair", teachers, overrides)
  with open(tmp_path / "pair" / "results.json") as f:
    results = json.load(f)
  assert results["teacher"]["cached"] is True
  assert results["teacher"]["test_accuracy"] == reference["results"]["teacher"]["test_accuracy"]
  assert results["student"]["test_accuracy"] == reference["results"]["student"]["test_accuracy"]
  resumed = _restore_on_one_device(_final_state_dir(str(tmp_path / "pair")))
  straight = _restore_on_one_device(_final_state_dir(reference["workdir"]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               resumed, straight)


# --------------------------------------------------------------------------- command line

_TINY_CONFIG = """
from tests.conftest import tiny_config


def get_config():
  return tiny_config()
"""


def _run_commands(tmp_path, module, *args, timeout=300):
  """``python -m module args --coordinator_address=... --process_id=i`` as two processes × two
  CPU devices: the documented multi-process command (docs/scale_out.md)."""
  config = tmp_path / "tiny.py"
  config.write_text(_TINY_CONFIG)
  port = free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-m", module, f"--config={config}", *args, "--noprogress",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      env=env(2), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  try:
    return [finish(p, timeout) for p in processes]
  finally:
    for p in processes:
      if p.poll() is None:
        p.kill()


def _assert_matches_one_process(workdir, reference):
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert (results["timing"]["processes"], results["timing"]["devices"]) == (2, 4)
  np.testing.assert_allclose(student_losses(str(workdir)), reference["losses"], rtol=2e-5)
  for phase in ("teacher", "student"):
    assert results[phase]["test_accuracy"] == reference["results"][phase]["test_accuracy"]


@needs_fashion_mnist
def test_the_documented_two_process_command_matches_one_process(tmp_path, teacher_dir):
  reference = device_runs(teacher_dir)["4"]
  outputs = _run_commands(tmp_path, "kd_jax.main", f"--workdir={tmp_path / 'run'}",
                          f"--teacher_dir={teacher_dir}")
  _assert_matches_one_process(tmp_path / "run", reference)
  # Process 0 prints the results table, the other nothing of it.
  assert "student (kd)" in outputs[0] and "student (kd)" not in outputs[1]


@pytest.mark.slow
@needs_fashion_mnist
def test_the_two_process_sweep_command_matches_one_process(tmp_path, teacher_dir):
  reference = device_runs(teacher_dir)["4"]
  _run_commands(tmp_path, "kd_jax.sweep", f"--workdir={tmp_path / 'sweep'}",
                f"--teacher_dir={teacher_dir}", "--grid=divergence=kl")
  _assert_matches_one_process(tmp_path / "sweep" / "runs" / "divergence=kl" / "seed0",
                              reference)
  assert os.path.exists(tmp_path / "sweep" / "summary.md")


# --------------------------------------------------------------------------- start-up

@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"TPU_WORKER_HOSTNAMES": "t1k-w-0"}, False),            # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),   # a pod slice
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "8"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
])
def test_cluster_detection(environ, expected):
  assert distributed.cluster_detected(environ) is expected


def test_partial_explicit_settings_are_rejected():
  with pytest.raises(ValueError, match="must be given together"):
    distributed.initialize("127.0.0.1:1234", None, 0)


def test_nothing_to_initialize_on_a_single_process(monkeypatch):
  for name in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
               "JAX_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(name, raising=False)
  assert distributed.initialize() is False
  assert jax.process_count() == 1
