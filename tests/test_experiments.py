"""Experiment modules: every config is valid, and the CLI runs the smoke path end to end."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import methods, models
from tests import multidevice
from tests.conftest import needs_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(ROOT, "experiments", "fashion_mnist", "*.py")) if not p.endswith("__init__.py"))


def _module(name):
  return importlib.import_module(f"experiments.fashion_mnist.{name}")


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_is_valid_and_feature_layers_exist(name, arg):
  c = _module(name).get_config(arg)
  config_lib.validate(c)
  build = lambda spec: models.create(spec.model, num_classes=10, rngs=nnx.Rngs(0),
                                     **spec.kwargs.to_dict())
  student, teacher = jax.eval_shape(lambda: (build(c.student), build(c.teacher)))
  methods.feature_pairs(c, models.feature_shapes(student), models.feature_shapes(teacher))
  doc = _module(name).__doc__
  assert f"--config=experiments/fashion_mnist/{name}.py" in doc   # the exact command


def test_unknown_config_argument_is_rejected():
  with pytest.raises(ValueError, match="valid: smoke"):
    _module("kd").get_config("fast")


def _run_cli(tmp_path, module, *extra, compilation_cache=multidevice.CACHE):
  env = dict(os.environ, KD_JAX_DATA_SOURCE="idx", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "kd_jax.main",
         f"--config=experiments/fashion_mnist/{module}.py:smoke",
         f"--workdir={tmp_path / module}", f"--teacher_dir={tmp_path / 'teachers'}",
         f"--compilation_cache_dir={compilation_cache}", "--noprogress", *extra]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / module / "results.json") as f:
    return out.stdout, json.load(f)


@needs_fashion_mnist
def test_cli_smoke_run_prints_the_table_and_writes_results(tmp_path):
  stdout, results = _run_cli(tmp_path, "kd", "--config.divergence=js",
                             "--config.temperature.init=2",
                             compilation_cache=tmp_path / "xla")
  assert results["config"]["divergence"] == "js"
  assert results["config"]["temperature"]["init"] == 2.0
  assert results["experiment"] == "fashion_mnist/kd"
  for phase in ("teacher", "baseline", "student"):
    assert 0 <= results[phase]["test_accuracy"] <= 1
  assert "KD gain" in stdout and "student (kd)" in stdout
  assert os.path.exists(tmp_path / "kd" / "student" / "metrics.jsonl")
  assert glob.glob(str(tmp_path / "kd" / "student" / "tb" / "events.out.tfevents.*"))
  # The persistent compilation cache is on by default and holds the run's programs,
  # the train steps included.
  cached = os.listdir(tmp_path / "xla")
  assert any("step_fn" in name for name in cached), cached[:20]


@needs_fashion_mnist
def test_cli_rejects_bad_flag_value_before_compiling(tmp_path):
  env = dict(os.environ, KD_JAX_DATA_SOURCE="idx", JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "kd_jax.main", "--config=experiments/fashion_mnist/kd.py:smoke",
       f"--workdir={tmp_path / 'w'}", f"--teacher_dir={tmp_path / 't'}",
       "--config.divergence=hellinger"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert out.returncode != 0
  assert "divergence: unknown value 'hellinger'; valid choices" in out.stderr
  assert not os.path.exists(tmp_path / "t")


@needs_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MODULES if m not in ("kd", "temperature_sweep")])
def test_every_module_smoke_run(name, tmp_path):
  _, results = _run_cli(tmp_path, name)
  assert 0 <= results["student"]["test_accuracy"] <= 1
