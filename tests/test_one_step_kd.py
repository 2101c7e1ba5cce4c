"""One-step KD (kd_jax/methods/one_step_kd.py): the teacher's cached pairs and the regression batch."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.core import parallel
from kd_jax.methods import one_step_kd as kd1
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion, diffusion_sampler
from tests import multidevice
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import _cli, assert_refused_field, cli_load

SMOKE = "experiments/diffusion/one_step_kd.py:smoke"


def _teacher():
  model = models.create("unet", rngs=nnx.Rngs(0), widths=(8, 16), embed_dim=32)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(1), model.out.kernel.shape))
  return model


@needs_fashion_mnist
def test_the_pairs_are_the_teachers_samples_and_are_made_once(tmp_path):
  c = cli_load(SMOKE)
  c.one_step_kd.pairs = 10
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  teacher = _teacher()
  noise, samples, labels = kd1.teacher_pairs(c, prepared, teacher, {"t": 1},
                                                           str(tmp_path))
  graphdef, state = nnx.split(teacher)
  want = diffusion_sampler.sample(graphdef, state, jnp.asarray(noise),
                                  steps=c.one_step_kd.teacher_steps)
  np.testing.assert_allclose(samples, want, rtol=1e-5, atol=1e-6)
  assert noise.shape == (10, 28, 28, 1) and labels.shape == (10,)
  (path,) = [p for p in os.listdir(tmp_path) if p.startswith("diffusion_pairs-")]
  written = os.path.getmtime(tmp_path / path)
  again = kd1.teacher_pairs(c, prepared, teacher, {"t": 1}, str(tmp_path))
  np.testing.assert_array_equal(again[1], samples)
  assert os.path.getmtime(tmp_path / path) == written            # read back, not remade
  # Another teacher (its identity) is another set.
  kd1.teacher_pairs(c, prepared, teacher, {"t": 2}, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 2


@needs_fashion_mnist
def test_a_batch_asks_for_the_teachers_sample_from_its_noise_in_one_step():
  c = cli_load(SMOKE)
  prepared = diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)
  task = kd1._one_step_task(c, prepared)
  noise = jax.random.normal(jax.random.key(3), (4, 28, 28, 1))
  samples = jax.random.uniform(jax.random.key(4), (4, 28, 28, 1), minval=-1, maxval=1)
  data = kd1.PairData(noise, samples, jnp.zeros(4, jnp.int32))
  (z, t, labels), target, _, _ = task.train_batch(data, jnp.arange(4), jnp.ones(4, bool),
                                                  jax.random.key(0))
  np.testing.assert_array_equal(z, noise)
  np.testing.assert_array_equal(t, 1.0)
  assert labels is None
  x_hat, _ = df.to_x_eps(target, z, t)
  np.testing.assert_allclose(x_hat, samples, atol=1e-5)


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.one_step_kd, "pairs", 0), "one_step_kd.pairs"),
    (lambda c: setattr(c.one_step_kd, "teacher_steps", 0), "one_step_kd.teacher_steps"),
])
def test_bad_one_step_settings_are_named(edit, field):
  assert_refused_field(cli_load(SMOKE), edit, field)


@needs_fashion_mnist
def test_the_one_step_smoke_run_records_its_pairs(tmp_path, teacher_dir):
  out = _cli(f"--config={SMOKE}", f"--workdir={tmp_path / 'k'}", f"--teacher_dir={teacher_dir}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "k" / "results.json") as f:
    results = json.load(f)
  assert results["teacher_pairs"] == {"pairs": 64, "teacher_steps": 4}
  assert results["student"]["steps_1"]["fd"] > 0
  # The one-step student exports: float32 noise in, uint8 images out, checked against JAX.
  exported = _cli(f"--workdir={tmp_path / 'k'}", "--format=onnx", module="kd_jax.export",
                  timeout=600)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert "max |Δpixel|" in exported.stdout
  with open(tmp_path / "k" / "export" / "report.json") as f:
    parity = json.load(f)["student.onnx"]["parity"]
  assert parity["max_abs_pixel_difference"] <= 1 and parity["equal_pixels"] > 0.99
  with open(tmp_path / "k" / "export" / "samples.json") as f:
    web = json.load(f)
  assert web["kind"] == "denoiser" and np.array(web["noise"]).shape == (4, 28 * 28)
  refused = _cli(f"--workdir={tmp_path / 'k'}", "--format=tflite", module="kd_jax.export")
  assert refused.returncode == 2 and "float32 ONNX so far" in refused.stderr
