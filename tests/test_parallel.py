"""Data and model parallelism on forced CPU devices, and mixed precision.

The multi-device runs happen in one 8-device subprocess (`tests.multidevice.device_runs`)
on meshes over 1, 4 and 8 of its devices and on a 2×2 (data × model) mesh; the
tests below compare what those runs wrote.
"""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from kd_jax.run import validation
from kd_jax import methods, models
from kd_jax.core import parallel
from kd_jax import engine
from kd_jax.tasks import classification
from kd_jax.run.pipeline import run_experiment
from tests.conftest import needs_fashion_mnist, tiny_config
from tests import multidevice
from tests.multidevice import device_runs, student_losses

# Float32 sums over 64 examples split 4 or 8 ways are added in another order:
# the losses agree to a few float32 ulps (~1e-7 relative), far inside this bound.
LOSS_RTOL = 2e-5
# bf16 vs fp32 training losses, step by step (see test_bf16_loss_curve_tracks_fp32).
BF16_LOSS_RTOL = 5e-3


# --------------------------------------------------------------------------- mesh shape

@pytest.mark.parametrize("data, model, devices, expected", [
    (-1, 1, 8, (8, 1)), (-1, 2, 8, (4, 2)), (2, -1, 8, (2, 4)), (1, 1, 1, (1, 1)),
    (2, 4, 8, (2, 4)), (1, -1, 4, (1, 4)),
])
def test_mesh_shape_resolves_minus_one_to_the_rest(data, model, devices, expected):
  assert parallel.mesh_shape(data, model, devices) == expected


@pytest.mark.parametrize("data, model, devices, message", [
    (-1, -1, 8, "cannot both be -1"),
    (0, 1, 8, "mesh.data must be a positive int"),
    (-2, 1, 8, "mesh.data must be a positive int"),
    (2, 0, 8, "mesh.model must be a positive int"),
    (2.0, 1, 8, "mesh.data must be a positive int"),
    (-1, 3, 8, "mesh.model=3 does not divide the 8 devices"),
    (3, -1, 8, "mesh.data=3 does not divide the 8 devices"),
    (2, 2, 8, "must equal the 8 devices"),
])
def test_mesh_shape_rejects_bad_sizes_naming_the_field(data, model, devices, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    parallel.mesh_shape(data, model, devices)


@pytest.mark.parametrize("field", ["data", "model"])
def test_config_validation_rejects_bad_mesh_sizes(field):
  with pytest.raises(ValueError, match=f"mesh.{field}"):
    validation.validate(tiny_config(**{f"mesh.{field}": 0}))


def test_make_mesh_on_a_subset_of_devices():
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  assert dict(mesh.shape) == {"data": 1, "model": 1}
  with pytest.raises(ValueError, match="must equal the 1 devices"):
    parallel.make_mesh(2, 1, jax.devices()[:1])


# --------------------------------------------------------------------------- shardings

@pytest.mark.parametrize("shape, model_size, expected", [
    ((3, 3, 64, 128), 2, P(None, None, None, "model")),   # the largest axis
    ((256, 96), 4, P("model", None)),
    ((3, 3, 130, 127), 2, P(None, None, "model", None)),  # the largest *divisible* axis
    ((129, 127), 2, P()),                                 # no divisible axis
    ((3, 3, 64, 128), 1, P()),                            # model axis of size 1
    ((128,), 2, P()),                                     # under FSDP_MIN_SIZE
])
def test_fsdp_spec(shape, model_size, expected):
  assert parallel.fsdp_spec(shape, model_size) == expected


def test_one_process_holds_every_row_and_global_batch_round_trips():
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  np.testing.assert_array_equal(parallel.process_rows(mesh, 6), np.arange(6))
  index = np.arange(6, dtype=np.int32) * 3
  batch = parallel.global_batch({"index": index}, mesh, 6)
  assert batch["index"].sharding == parallel.batch_sharding(mesh)
  np.testing.assert_array_equal(np.asarray(batch["index"]), index)


# --------------------------------------------------------------------------- 1 / 4 / 8 devices

@needs_fashion_mnist
@pytest.mark.parametrize("devices", ["4", "8"])
def test_data_parallel_training_matches_one_device(devices, teacher_dir):
  runs = device_runs(teacher_dir)
  one, many = runs["1"], runs[devices]
  assert many["results"]["timing"]["devices"] == int(devices)
  assert many["results"]["timing"]["mesh"] == {"data": int(devices), "model": 1}
  assert len(one["losses"]) == 8   # 2 epochs of 4 steps, every step logged
  np.testing.assert_allclose(many["losses"], one["losses"], rtol=LOSS_RTOL)


@needs_fashion_mnist
def test_evaluation_is_exact_whatever_the_device_count(teacher_dir):
  # 150 test examples in batches of 64 (the last one padded with 42 masked rows),
  # split over 1, 4 and 8 devices: every count sees every example exactly once.
  runs = device_runs(teacher_dir)
  for name in ("4", "8", "2x2"):
    for phase in ("teacher", "student"):
      assert runs[name]["results"][phase]["test_accuracy"] == \
          runs["1"]["results"][phase]["test_accuracy"], (name, phase)
    np.testing.assert_allclose(runs[name]["results"]["student"]["kl_to_teacher"],
                               runs["1"]["results"]["student"]["kl_to_teacher"], rtol=1e-5)
  for phase in ("teacher", "student"):
    correct = runs["8"]["results"][phase]["test_accuracy"] * 150
    assert correct == pytest.approx(round(correct), abs=1e-9)   # a fraction of the 150


# --------------------------------------------------------------------------- model axis

@needs_fashion_mnist
def test_teacher_parameters_are_sharded_over_model(teacher_dir):
  placement = device_runs(teacher_dir)["teacher_sharding"]
  assert set(placement) >= {"['convs'][0]['kernel'].value", "['head']['kernel'].value"}
  for name, p in placement.items():
    assert p["mesh"] == {"data": 2, "model": 2}
    assert p["spec"].count("model") == 1, name
    split = p["spec"].index("model")
    local = list(p["shape"])
    local[split] //= 2
    # Four devices, each holding one half along the split axis (replicated over data).
    assert p["shard_shapes"] == [local] * 4, name


@needs_fashion_mnist
def test_sharded_teacher_outputs_match_the_unsharded_teacher(teacher_dir):
  logits = device_runs(teacher_dir)["teacher_logits"]
  assert logits["one"].shape == (150, 10)
  np.testing.assert_allclose(logits["sharded"], logits["one"], rtol=1e-5, atol=1e-6)


@needs_fashion_mnist
def test_distilling_from_a_model_sharded_teacher_matches_one_device(teacher_dir):
  runs = device_runs(teacher_dir)
  assert runs["2x2"]["results"]["timing"]["mesh"] == {"data": 2, "model": 2}
  assert runs["2x2"]["results"]["student"]["teacher_cached"] is False  # teacher ran in each step
  np.testing.assert_allclose(runs["2x2"]["losses"], runs["1"]["losses"], rtol=LOSS_RTOL)


# --------------------------------------------------------------------------- bf16

def _lowered_kd_step(dtype) -> str:
  """StableHLO of the KD train step (teacher + student cnn) computing in ``dtype``."""
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  config = tiny_config()
  build = lambda widths: models.create("cnn", num_classes=10, rngs=nnx.Rngs(0), dtype=dtype,
                                       widths=widths)
  graphdef, params, model_state = engine.split_module(build((4, 4)))
  t_graphdef, t_params, t_state = engine.split_module(build((4, 8)))
  optimizer = engine.make_optimizer(config.train, 8)
  state = engine.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           model_state=model_state, opt_state=optimizer.init(params))
  data = classification.DeviceData(jnp.zeros((16, 28, 28, 1), jnp.uint8), jnp.zeros((16,), jnp.int32))
  step = engine.make_train_step(graphdef, methods.make_objective(config, {}), optimizer,
                               classification.Classification(0.3, 0.35, dtype=dtype),
                               engine.Teacher(t_graphdef, (t_params, t_state)), data, mesh)
  batch = {"index": jnp.arange(8, dtype=jnp.int32), "mask": jnp.ones(8, bool)}
  return step.jitted.lower(state, (t_params, t_state), data, batch, jax.random.key(0)).as_text()


@pytest.mark.parametrize("precision, dtype", [("fp32", jnp.float32), ("bf16", jnp.bfloat16)])
def test_convolutions_and_matmuls_run_in_the_configured_precision(precision, dtype):
  hlo = _lowered_kd_step(dtype)
  ops = re.findall(r"stablehlo\.(?:convolution|dot_general).*", hlo)
  # Teacher forward (2 convs + head), student forward and backward: 3 + 3 + 5 at least.
  assert len(ops) >= 11, precision
  wanted = "bf16" if precision == "bf16" else "f32"
  for op in ops:
    result_type = op.rsplit("->", 1)[-1]
    assert f"x{wanted}>" in result_type, op


@needs_fashion_mnist
@pytest.mark.usefixtures("idx_source")
def test_bf16_loss_curve_tracks_fp32(tmp_path, teacher_dir):
  fp32 = run_experiment(tiny_config(), str(tmp_path / "fp32"), teacher_dir=teacher_dir,
                        show_progress=False)
  # The same (fp32-trained) teacher, so that only the precision of the steps differs.
  bf16 = run_experiment(tiny_config(precision="bf16",
                                    **{"teacher.checkpoint": fp32["teacher"]["source"]}),
                        str(tmp_path / "bf16"), teacher_dir=teacher_dir, show_progress=False)
  losses_fp32 = np.array(student_losses(str(tmp_path / "fp32")))
  losses_bf16 = np.array(student_losses(str(tmp_path / "bf16")))
  assert len(losses_bf16) == len(losses_fp32) == 8
  # bf16 keeps 8 significant bits (relative spacing 2**-8 ≈ 0.4%): the loss, computed
  # in float32 from bf16 activations, stays within 0.5% of fp32's at every step.
  np.testing.assert_allclose(losses_bf16, losses_fp32, rtol=BF16_LOSS_RTOL)
  assert not np.array_equal(losses_bf16, losses_fp32)   # bf16 really computed something else
  assert bf16["config"]["precision"] == "bf16" and bf16["teacher"]["cached"]
  # Parameters and optimiser state stay float32.
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(tmp_path / "bf16" / "student" / "checkpoints" / "8" / "state")
  floats = [x for x in jax.tree.leaves((state["params"], state["opt_state"]))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == np.float32 for x in floats)


@pytest.mark.slow
@needs_fashion_mnist
@pytest.mark.usefixtures("idx_source")
def test_bf16_loss_curve_tracks_fp32_on_the_smoke_config(tmp_path, teacher_dir):
  from experiments.fashion_mnist import kd
  fp32 = run_experiment(kd.get_config("smoke"), str(tmp_path / "fp32"), teacher_dir=teacher_dir,
                        show_progress=False)
  config = kd.get_config("smoke")
  config.precision = "bf16"
  config.teacher.checkpoint = fp32["teacher"]["source"]
  bf16 = run_experiment(config, str(tmp_path / "bf16"), teacher_dir=teacher_dir,
                        show_progress=False)
  losses_fp32 = np.array(student_losses(str(tmp_path / "fp32")))
  losses_bf16 = np.array(student_losses(str(tmp_path / "bf16")))
  assert len(losses_fp32) == len(losses_bf16) > 5
  # 32 steps: rounding differences compound through the optimiser, so allow 2%
  # (measured: at most 0.4%, and test accuracies 0.6 points apart).
  np.testing.assert_allclose(losses_bf16, losses_fp32, rtol=0.02)
  assert abs(bf16["student"]["test_accuracy"] - fp32["student"]["test_accuracy"]) <= 0.02


def test_subprocess_environment_turns_on_the_shared_compilation_cache():
  # JAX reads JAX_<OPTION> for each option: a misspelt name is silently ignored.
  code = ("import jax; c = jax.config; print(c.jax_compilation_cache_dir, "
          "c.jax_persistent_cache_min_compile_time_secs, "
          "c.jax_persistent_cache_min_entry_size_bytes, jax.device_count())")
  out = subprocess.run([sys.executable, "-c", code], env=multidevice.env(3), capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == [multidevice.CACHE, "0.0", "0", "3"]
