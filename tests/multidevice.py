"""Helpers for tests that need several (forced CPU) devices or several processes.

JAX fixes its device count when its backend starts, so multi-device runs happen
in subprocesses started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
and ``JAX_PLATFORMS=cpu``. The subprocesses of one test session share a
persistent XLA compilation cache, so a program compiled by one (the models'
initialisers, say) is not compiled again by the next.
"""

import functools
import json
import os
import socket
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(tempfile.gettempdir(), f"kd_jax_test_xla_cache_{os.getuid()}")


def env(devices: int, **extra) -> dict:
  """The environment of a subprocess with ``devices`` CPU devices."""
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", KD_JAX_DATA_SOURCE="idx", PYTHONPATH=ROOT,
              JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **extra)


def start(script: str, devices: int, *args: str) -> subprocess.Popen:
  """Starts ``python -c script args...`` with ``devices`` CPU devices."""
  return subprocess.Popen([sys.executable, "-c", script, *args], env=env(devices), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
  """Waits for ``process``; raises with its output if it failed."""
  try:
    output, _ = process.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    output, _ = process.communicate()
    raise AssertionError(f"subprocess timed out after {timeout} s:\n{output[-5000:]}") from None
  if process.returncode:
    raise AssertionError(f"subprocess failed ({process.returncode}):\n{output[-5000:]}")
  return output


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def student_losses(workdir: str) -> list[float]:
  with open(os.path.join(workdir, "student", "metrics.jsonl")) as f:
    return [record["loss"] for line in f if "loss" in (record := json.loads(line))]


_DEVICE_RUNS = r"""
import json, sys
import jax, numpy as np

from kd_jax.core import parallel
from kd_jax.run.pipeline import run_experiment
from tests.conftest import tiny_config
from tests.multidevice import student_losses

root, teachers = sys.argv[1], sys.argv[2]
devices = jax.devices()
assert len(devices) == 8, devices
out = {}

def run(name, mesh, **overrides):
  results = run_experiment(tiny_config(**overrides), f"{root}/{name}", teacher_dir=teachers,
                           show_progress=False, mesh=mesh)
  out[name] = {"losses": student_losses(f"{root}/{name}"), "results": results}

run("1", parallel.make_mesh(1, 1, devices[:1]))
run("4", parallel.make_mesh(4, 1, devices[:4]))
run("8", parallel.make_mesh(8, 1, devices))
# Shard even the tiny teacher's arrays over `model`, and run it inside every step
# (no cached outputs), so that the step really distils from a split teacher.
parallel.FSDP_MIN_SIZE = 1
mesh = parallel.make_mesh(2, 2, devices[:4])
run("2x2", mesh, teacher_cache="none")

# The trained teacher placed FSDP-style on the 2×2 mesh, against the same teacher on one device.
from kd_jax.run import pipeline as experiment
from kd_jax.run import teachers
from kd_jax import engine
from kd_jax.tasks import classification
from kd_jax.data import augment
config = tiny_config()
one = parallel.make_mesh(1, 1, devices[:1])
_, test_data, _, num_classes, input_shape = classification.load_data(config, mesh)
_, test_data_one, _, _, _ = classification.load_data(config, one)
module = classification.build_model(config.teacher, num_classes=num_classes, input_shape=input_shape,
                                seed=0, dtype=np.float32)
teachers.load(out["2x2"]["results"]["teacher"]["source"], module, num_classes=num_classes)
graphdef, params, model_state = engine.split_module(module)
sharded = (parallel.put_sharded(params, parallel.teacher_shardings(mesh, params)),
           parallel.put_replicated(model_state, mesh))
preprocess = classification.Classification(augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD)
logits_sharded, _ = engine.predict_all(engine.make_predict(graphdef, preprocess, mesh), sharded,
                                      test_data, 64, mesh)
logits_one, _ = engine.predict_all(engine.make_predict(graphdef, preprocess, one),
                                  parallel.put_replicated((params, model_state), one),
                                  test_data_one, 64, one)
np.savez(f"{root}/teacher_logits.npz", sharded=logits_sharded, one=logits_one)
out["teacher_sharding"] = {
    jax.tree_util.keystr(path): {
        "spec": [None if a is None else str(a) for a in x.sharding.spec],
        "mesh": dict(x.sharding.mesh.shape), "shape": list(x.shape),
        "shard_shapes": sorted(list(s.data.shape) for s in x.addressable_shards)}
    for path, x in jax.tree_util.tree_flatten_with_path(sharded[0])[0]}
with open(f"{root}/runs.json", "w") as f:
  json.dump(out, f, default=float)
"""


@functools.cache
def device_runs(teacher_dir: str) -> dict:
  """The tiny experiment on 1, 4 and 8 devices (data-parallel) and on a 2×2 (data×model) mesh.

  One 8-device subprocess runs all four on meshes over subsets of its devices;
  returns ``{"1" | "4" | "8" | "2x2": {"losses": [...], "results": results.json, "workdir"}}``,
  plus ``"teacher_sharding"`` (per teacher parameter: the spec, global and shard shapes
  when placed on the 2×2 mesh) and ``"teacher_logits"`` (``"sharded"`` on 2×2 and
  ``"one"`` on one device, for the full test split). Cached for the session.
  """
  root = teacher_dir.rstrip("/") + "_runs"
  finish(start(_DEVICE_RUNS, 8, root, teacher_dir))
  with open(os.path.join(root, "runs.json")) as f:
    runs = json.load(f)
  for name in ("1", "4", "8", "2x2"):
    runs[name]["workdir"] = os.path.join(root, name)
  runs["teacher_logits"] = dict(np.load(os.path.join(root, "teacher_logits.npz")))
  return runs
