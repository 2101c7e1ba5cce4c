"""Sweep launchers (issue 26, DESIGN §10): the same sweep, run locally, on a Ray instance the
test starts on 127.0.0.1, and as a submitit job array, gives the same summary; a killed Ray
worker's run resumes from its checkpoint; the sbatch script carries the resources."""

import functools
import json
import os
import signal
import stat
import threading
import time

import ml_collections
import pytest

from kd_jax import sweep
from kd_jax.core.errors import ConfigError
from kd_jax.run import launchers
from kd_jax.run.launchers import jobs as jobs_lib
from kd_jax.run.launchers import on_ray, on_slurm
from tests.conftest import MISSING_FASHION_MNIST, have_fashion_mnist, skip_or_fail, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = ["temperature.init=1,4"]


# ----------------------------------------------------------------- settings and checks


def test_relative_and_node_local_paths_are_refused_where_workers_cannot_see_them():
  with pytest.raises(ConfigError, match="--workdir=runs/x is relative.*--workdir=\\$PWD/runs/x"):
    jobs_lib.check_shared_storage("ray", {"--workdir": "runs/x"}, several_machines=False)
  with pytest.raises(ConfigError, match="--teacher_dir=/tmp/t is under /tmp.*several machines"):
    jobs_lib.check_shared_storage("slurm", {"--workdir": "/shared/x", "--teacher_dir": "/tmp/t"},
                                  several_machines=True)
  # One machine (a local Ray instance) sees its own /tmp; unset paths are not checked.
  jobs_lib.check_shared_storage("ray", {"--workdir": "/tmp/x", "--teacher_dir": None},
                                several_machines=False)


def _flags(**values):
  defaults = dict(cpus_per_run=None, gpus_per_run=None, processes_per_run=None, max_parallel=0,
                  slurm_time=60, no_wait=False, launcher="local", ray_address=None,
                  slurm_partition=None, slurm_cluster="slurm")
  return ml_collections.ConfigDict({**defaults, **values})


def test_resources_come_from_the_sweep_block_and_the_flags_override_them():
  config = ml_collections.ConfigDict({"sweep": {"resources": {"cpus": 4, "gpus": 0.5}}})
  got = sweep.launch_settings(config, "/w", _flags(launcher="ray"))
  assert (got.cpus, got.gpus, got.folder, got.wait) == (4.0, 0.5, "/w/slurm", True)
  got = sweep.launch_settings(config, "/w", _flags(gpus_per_run=1.0, launcher="slurm",
                                                   no_wait=True))
  assert (got.cpus, got.gpus, got.wait) == (4.0, 1.0, False)
  assert sweep.launch_settings(ml_collections.ConfigDict(), "/w", _flags()).cpus == 1.0
  with pytest.raises(ConfigError, match="--no_wait.*needs --launcher=slurm"):
    sweep.launch_settings(config, "/w", _flags(no_wait=True))
  with pytest.raises(ConfigError, match="sweep.resources: unknown keys \\['memory'\\]"):
    sweep.launch_settings(ml_collections.ConfigDict({"sweep": {"resources": {"memory": 1}}}),
                          "/w", _flags())
  with pytest.raises(ConfigError, match="CPUs per run must be > 0"):
    sweep.launch_settings(config, "/w", _flags(cpus_per_run=0.0))


def test_several_processes_per_run_need_ray():
  config = ml_collections.ConfigDict({"sweep": {"resources": {"processes": 2}}})
  assert sweep.launch_settings(config, "/w", _flags(launcher="ray")).processes == 2
  for launcher in ("local", "slurm"):
    settings = sweep.launch_settings(config, "/w", _flags(launcher=launcher))
    with pytest.raises(ConfigError, match=f"--launcher={launcher} runs each point as one"):
      launchers.check(launcher, settings, {})
  with pytest.raises(ConfigError, match="processes per run must be >= 1"):
    sweep.launch_settings(config, "/w", _flags(processes_per_run=0))


def test_tasks_get_the_drivers_kd_jax_variables_and_share_a_gpu_without_preallocation():
  environ = {"KD_JAX_DATA_SOURCE": "idx", "HOME": "/h"}
  assert on_ray.task_environment(0.0, environ) == {"KD_JAX_DATA_SOURCE": "idx"}
  assert on_ray.task_environment(0.25, environ) == {"KD_JAX_DATA_SOURCE": "idx",
                                                    "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in on_ray.task_environment(1.0, environ)


def test_slurm_refuses_a_fraction_of_a_gpu_an_unknown_cluster_and_no_sbatch(tmp_path,
                                                                          monkeypatch):
  monkeypatch.setenv("PATH", str(tmp_path))        # no sbatch
  with pytest.raises(ConfigError, match="sbatch, which is not on PATH.*--slurm_cluster=local"):
    on_slurm.check(launchers.Settings(slurm_cluster="slurm"))
  settings = launchers.Settings(gpus=0.5, slurm_cluster="local", folder=str(tmp_path))
  with pytest.raises(ConfigError, match="whole GPUs"):
    on_slurm.executor(settings, 4)
  with pytest.raises(ConfigError, match="--slurm_cluster='pbs': valid choices: slurm, local"):
    on_slurm.executor(launchers.Settings(slurm_cluster="pbs", folder=str(tmp_path)), 4)


def test_the_sbatch_script_carries_the_configured_resources(tmp_path, monkeypatch):
  """A stand-in ``sbatch`` on PATH records what submitit submits: the array script."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  fake = bin_dir / "sbatch"
  fake.write_text("#!/bin/sh\ncp \"$1\" \"$(dirname \"$0\")/submitted.sh\"\n"
                  "echo x >> \"$(dirname \"$0\")/submissions\"\n"
                  "echo 'Submitted batch job 4242'\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  srun = bin_dir / "srun"                     # (submitit looks for it to know it is on SLURM)
  srun.write_text("#!/bin/sh\n")
  srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  config = tiny_config()
  points = sweep.parse_grid(GRID, config)
  settings = launchers.Settings(max_parallel=3, cpus=4, gpus=1, slurm_partition="gpu",
                                slurm_time_min=90, wait=False, folder="")
  # /tmp is local to each SLURM node: refused before anything is submitted.
  with pytest.raises(ConfigError, match="--workdir=.* is under /tmp"):
    sweep.run_sweep(config, str(tmp_path / "sweep"), points, num_seeds=2, launcher="slurm",
                    settings=settings, run_fn=_run_fn())
  shared = os.path.join(REPO, ".pytest_slurm", str(os.getpid()))
  try:
    settings = launchers.Settings(**{**settings.__dict__, "folder": f"{shared}/slurm"})
    record = sweep.run_sweep(config, shared, points, num_seeds=2, launcher="slurm",
                             settings=settings, run_fn=_run_fn())
    script = (bin_dir / "submitted.sh").read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=90",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --gpus-per-node=1"):
      assert line in script, script
    # Not waited for: every run is recorded as submitted to its array task.
    assert [r["where"] for r in record["runs"]] == [f"slurm:4242_{i}" for i in range(4)]
    assert {r["status"] for r in record["runs"]} == {"running"}
    # The same command again, while sacct says the tasks are running (task 2: timed out):
    # only the run whose task ended without results is submitted again.
    sacct = bin_dir / "sacct"
    sacct.write_text("#!/bin/sh\necho 'JobID|State|NodeList'\n"
                     + "".join(f"echo '4242_{i}|{'TIMEOUT' if i == 2 else 'RUNNING'}|n{i}'\n"
                               for i in range(4)))
    sacct.chmod(sacct.stat().st_mode | stat.S_IEXEC)
    again = sweep.run_sweep(config, shared, points, num_seeds=2, launcher="slurm",
                            settings=settings, run_fn=_run_fn())
    assert (bin_dir / "submissions").read_text().count("x") == 2
    assert [r["where"] for r in again["runs"]] == ["slurm:4242_0", "slurm:4242_1", "slurm:4242",
                                                   "slurm:4242_3"]
  finally:
    import shutil
    shutil.rmtree(os.path.dirname(shared), ignore_errors=True)


# ----------------------------------------------------------------- real sweeps


def _run_fn():
  from kd_jax.run import pipeline
  return functools.partial(pipeline.execute_run, show_progress=False)


def _summary(workdir):
  with open(os.path.join(workdir, "summary.csv")) as f:
    return f.read()


@pytest.fixture(scope="module")
def fashion_mnist():
  if not have_fashion_mnist():
    skip_or_fail(MISSING_FASHION_MNIST)
  old = os.environ.get("KD_JAX_DATA_SOURCE")
  os.environ["KD_JAX_DATA_SOURCE"] = "idx"
  yield
  if old is None:
    os.environ.pop("KD_JAX_DATA_SOURCE")
  else:
    os.environ["KD_JAX_DATA_SOURCE"] = old


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, teacher_dir, fashion_mnist):
  """The 2-point × 2-seed sweep with the local launcher: the reference summary."""
  del fashion_mnist
  workdir = str(tmp_path_factory.mktemp("local"))
  config = tiny_config()
  sweep.run_sweep(config, workdir, sweep.parse_grid(GRID, config), num_seeds=2,
                  teacher_dir=teacher_dir, run_fn=_run_fn())
  return workdir


@pytest.fixture(scope="module")
def ray_instance():
  """A Ray instance on 127.0.0.1 only, with this machine's 2 CPUs, stopped at the end."""
  ray = pytest.importorskip("ray")
  ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False,
           object_store_memory=80 * 2**20, log_to_driver=False, configure_logging=False)
  yield ray
  ray.shutdown()


@pytest.mark.slow
def test_a_ray_sweep_gives_the_local_summary(local_sweep, ray_instance, teacher_dir, tmp_path,
                                             capsys):
  config = tiny_config()
  record = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(GRID, config), num_seeds=2,
                           teacher_dir=teacher_dir, run_fn=_run_fn(), launcher="ray",
                           settings=launchers.Settings(max_parallel=2))
  assert _summary(str(tmp_path)) == _summary(local_sweep)
  assert [r["status"] for r in record["runs"]] == ["done"] * 4
  assert {r["where"] for r in record["runs"]} == {"ray"}
  # Progress as runs finish: four "n/4 done" lines, the last one 4/4.
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("[sweep ") and
           " done, " in l and "] " in l]
  assert any(l.startswith("[sweep 4/4 done, 0 failed]") for l in lines)
  # Run again: everything is done, nothing is submitted.
  again = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(GRID, config), num_seeds=2,
                          teacher_dir=teacher_dir, run_fn=_run_fn(), launcher="ray")
  assert [r["where"] for r in again["runs"]] == ["ray"] * 4


def _kill_once_checkpointed(run_dir, killed, timeout=240):
  """Kills (SIGKILL) the worker of ``run_dir`` once its student has saved a checkpoint."""
  deadline = time.time() + timeout
  checkpoints = os.path.join(run_dir, "student", "checkpoints")
  while time.time() < deadline:
    worker = os.path.join(run_dir, jobs_lib.WORKER_FILE)
    if os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints)) \
        and os.path.exists(worker):
      with open(worker) as f:
        pid = json.load(f)["pid"]
      os.kill(pid, signal.SIGKILL)
      killed.append(pid)
      return
    time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_ray_worker_resumes_its_run_from_the_checkpoint(ray_instance, teacher_dir,
                                                                 fashion_mnist, tmp_path):
  config = tiny_config(**{"train.epochs": 30, "checkpoint.every_steps": 8})
  points = sweep.parse_grid(["temperature.init=4"], config)
  reference = str(tmp_path / "local")
  sweep.run_sweep(config, reference, points, num_seeds=1, teacher_dir=teacher_dir,
                  run_fn=_run_fn())
  workdir = str(tmp_path / "ray")
  run_dir = os.path.join(workdir, "runs", "temperature.init=4", f"seed{config.seed}")
  killed = []
  killer = threading.Thread(target=_kill_once_checkpointed, args=(run_dir, killed))
  killer.start()
  record = sweep.run_sweep(config, workdir, points, num_seeds=1, teacher_dir=teacher_dir,
                           run_fn=_run_fn(), launcher="ray",
                           settings=launchers.Settings(max_parallel=1, retries=2))
  killer.join()
  assert killed, "the run finished before a checkpoint was seen"
  assert record["runs"][0]["status"] == "done"
  with open(os.path.join(run_dir, "worker.json")) as f:
    assert json.load(f)["pid"] != killed[0]      # a new worker finished it
  with open(os.path.join(run_dir, "results.json")) as f:
    assert json.load(f)["student"]["resumed_from_step"] > 0
  assert _summary(workdir) == _summary(reference)


@pytest.mark.slow
def test_a_slurm_array_on_submitits_local_executor_gives_the_local_summary(
    local_sweep, teacher_dir, tmp_path):
  config = tiny_config()
  settings = launchers.Settings(slurm_cluster="local", folder=str(tmp_path / "slurm"))
  record = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(GRID, config), num_seeds=2,
                           teacher_dir=teacher_dir, run_fn=_run_fn(), launcher="slurm",
                           settings=settings)
  assert [r["status"] for r in record["runs"]] == ["done"] * 4
  assert all(r["where"].startswith("slurm:") for r in record["runs"])
  assert _summary(str(tmp_path)) == _summary(local_sweep)


@pytest.mark.slow
def test_a_failed_run_the_sweep_did_not_wait_for_is_summarised_as_failed(tmp_path):
  """--no_wait: the array's runs record how they ended in their own directories, and the
  later --summarize_only reads it (here a run that raises, on submitit's local executor)."""
  def broken(config, workdir, *, teacher_dir=None):
    raise RuntimeError(f"diverged at T={config.temperature.init}")
  config = tiny_config()
  settings = launchers.Settings(slurm_cluster="local", folder=str(tmp_path / "slurm"),
                                wait=False)
  record = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(["temperature.init=4"], config),
                           num_seeds=1, run_fn=broken, launcher="slurm", settings=settings)
  run_dir = os.path.join(str(tmp_path), record["runs"][0]["workdir"])
  deadline = time.time() + 120
  while launchers.read_outcome(run_dir) is None and time.time() < deadline:
    time.sleep(0.2)
  assert launchers.read_outcome(run_dir)["status"] == "failed"
  sweep.write_summary(str(tmp_path))
  with open(os.path.join(str(tmp_path), "summary.md")) as f:
    assert "RuntimeError: diverged at T=4.0" in f.read()


def _hold(path, log, seconds):
  """Enters files.exclusive(path), notes when, sleeps, notes when it leaves."""
  from kd_jax.core import files
  with files.exclusive(path):
    with open(log, "a") as f:
      f.write(f"enter {time.time()}\n")
    time.sleep(seconds)
    with open(log, "a") as f:
      f.write(f"leave {time.time()}\n")


def test_an_exclusive_entry_is_held_by_one_process_at_a_time(tmp_path):
  import multiprocessing
  context = multiprocessing.get_context("spawn")
  log = str(tmp_path / "log")
  workers = [context.Process(target=_hold, args=(str(tmp_path / "teacher"), log, 0.5))
             for _ in range(2)]
  for w in workers:
    w.start()
  for w in workers:
    w.join(60)
  events = [line.split() for line in open(log)]
  # enter, leave, enter, leave: never two holders at once.
  assert [e[0] for e in events] == ["enter", "leave", "enter", "leave"]
  assert float(events[2][1]) >= float(events[1][1])


@pytest.mark.slow
def test_parallel_runs_that_need_one_teacher_train_it_once(ray_instance, fashion_mnist,
                                                           tmp_path):
  config = tiny_config()
  teachers = str(tmp_path / "teachers")       # empty: the first run to get the lock trains it
  sweep.run_sweep(config, str(tmp_path / "sweep"), sweep.parse_grid(GRID, config),
                  num_seeds=1, teacher_dir=teachers, run_fn=_run_fn(), launcher="ray",
                  settings=launchers.Settings(max_parallel=2))
  cached = []
  for temperature in (1, 4):
    with open(tmp_path / "sweep" / "runs" / f"temperature.init={temperature}" /
              f"seed{config.seed}" / "results.json") as f:
      cached.append(json.load(f)["teacher"]["cached"])
  assert sorted(cached) == [False, True]


def test_the_command_line_refuses_a_launcher_it_cannot_use_before_writing_anything(tmp_path):
  import subprocess
  import sys
  config = os.path.join(REPO, "experiments", "fashion_mnist", "kd.py:smoke")
  def sweep_cli(*args):
    return subprocess.run([sys.executable, "-m", "kd_jax.sweep", f"--config={config}", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
  out = sweep_cli("--workdir=runs/x", "--launcher=ray")
  assert out.returncode == 2 and "--workdir=runs/x is relative" in out.stderr, out.stderr[-2000:]
  out = sweep_cli(f"--workdir={tmp_path / 'x'}", "--launcher=slurm")
  assert out.returncode == 2 and "is under /tmp, which is local to each machine" in out.stderr
  out = sweep_cli(f"--workdir={tmp_path / 'x'}", "--no_wait")
  assert out.returncode == 2 and "--no_wait" in out.stderr and "needs --launcher=slurm" in out.stderr
  assert not os.path.exists(tmp_path / "runs") and not os.path.exists(tmp_path / "x")


@pytest.mark.slow
def test_a_ray_sweep_point_can_be_a_two_process_run(ray_instance, teacher_dir, fashion_mnist,
                                                    tmp_path):
  """Two Ray tasks placed together start jax.distributed (gloo on CPU) and train one run."""
  import jax
  config = tiny_config()
  record = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(["temperature.init=4"], config),
                           num_seeds=1, teacher_dir=teacher_dir, run_fn=_run_fn(),
                           launcher="ray", settings=launchers.Settings(processes=2))
  assert record["runs"][0]["status"] == "done", record["runs"][0].get("error")
  with open(os.path.join(str(tmp_path), record["runs"][0]["workdir"], "results.json")) as f:
    timing = json.load(f)["timing"]
  assert timing["processes"] == 2 and timing["devices"] == 2 * jax.local_device_count()
