"""The training loop's host side: batches fed an epoch at a time, the step's own key, TensorBoard."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.core import parallel
from kd_jax import engine
from kd_jax.tasks import classification


def _mesh():
  return parallel.make_mesh(1, 1, jax.devices()[:1])


def test_each_epoch_feeds_every_example_once_in_the_seeded_order():
  n, b, seed = 10, 4, 3              # 3 steps an epoch, the last holding 2 examples
  feeder = engine.BatchFeeder(n, b, seed, _mesh())
  assert feeder.steps_per_epoch == 3
  for epoch in range(2):
    order = engine.epoch_order(seed, epoch, n)
    batches = [feeder(epoch * 3 + position) for position in range(3)]
    index = np.concatenate([np.asarray(x["index"]) for x in batches])
    mask = np.concatenate([np.asarray(x["mask"]) for x in batches])
    np.testing.assert_array_equal(mask, np.arange(12) < n)
    np.testing.assert_array_equal(index[:n], order)     # batch k = order[k*b:(k+1)*b]
    np.testing.assert_array_equal(index[n:], 0)         # padding rows point at example 0
  assert not np.array_equal(engine.epoch_order(seed, 0, n), engine.epoch_order(seed, 1, n))


def test_a_fresh_feeder_resumes_mid_epoch_with_the_same_batch():
  running = engine.BatchFeeder(50, 8, 0, _mesh())
  for step in range(13):
    expected = running(step)
  resumed = engine.BatchFeeder(50, 8, 0, _mesh())(12)
  for key in ("index", "mask"):
    np.testing.assert_array_equal(np.asarray(resumed[key]), np.asarray(expected[key]))
  # Step 12 is epoch 1's sixth batch (7 steps an epoch): the seeded order's rows 40..47.
  np.testing.assert_array_equal(np.asarray(resumed["index"]), engine.epoch_order(0, 1, 50)[40:48])


def test_fed_batches_are_sharded_over_data():
  mesh = _mesh()
  batch = engine.BatchFeeder(20, 4, 0, mesh)(0)
  assert batch["index"].shape == (4,) and batch["index"].dtype == np.int32
  assert batch["index"].sharding.spec == jax.sharding.PartitionSpec("data")


def test_stacked_global_batch_splits_the_second_axis():
  mesh = _mesh()
  stacked = np.arange(12, dtype=np.int32).reshape(3, 4)
  batches = parallel.global_batch({"index": stacked}, mesh, 4, stacked=True)["index"]
  assert batches.sharding.spec == jax.sharding.PartitionSpec(None, "data")
  np.testing.assert_array_equal(np.asarray(batches), stacked)


def test_replicated_key_is_the_seed_key_on_every_device():
  key = engine.replicated_key(7, _mesh())
  np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(7)))


def test_tensorboard_writer_does_not_import_torch(tmp_path):
  # A stand-in torch package that records being imported: tensorboardX would import
  # the real one the same way when it is installed.
  fake = tmp_path / "fake" / "torch"
  fake.mkdir(parents=True)
  (fake / "__init__.py").write_text(
      f"open({str(tmp_path / 'imported')!r}, 'w').close()\n__version__ = 'fake'\n")
  code = ("import sys; from kd_jax.engine import run_log; "
          f"w = run_log._summary_writer({str(tmp_path / 'tb')!r}, 0); w.add_scalar('x', 1.0, 0); "
          "w.close(); "
          "assert 'torch' not in sys.modules, 'torch was imported'; "
          "import torch; print('torch importable afterwards', torch.__version__)")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "fake"), train_root()]))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=env)
  assert out.returncode == 0, out.stderr
  assert "torch importable afterwards fake" in out.stdout
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def train_root():
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit_mlp(tmp_path, objective, *, epochs, log_every_steps=1):
  from flax import nnx
  from kd_jax import config as config_lib
  from kd_jax import methods, models
  mesh = _mesh()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (80, 4, 4, 1), dtype=np.uint8)
  labels = rng.integers(0, 3, 80).astype(np.int32)
  data = classification.DeviceData(*parallel.put_replicated((images, labels), mesh))
  t = config_lib.base_config().train
  t.batch_size, t.epochs, t.optimizer = 8, epochs, "sgd"
  module = methods.Student(models.create("mlp", num_classes=3, rngs=nnx.Rngs(0), hidden=(4,),
                                         input_shape=(4, 4, 1)), {}, {}, rngs=nnx.Rngs(1))
  return engine.fit(name="t", module=module, objective=objective, train_config=t,
                   train_data=data, test_data=data, task=classification.Classification(0.0, 255.0),
                   mesh=mesh, workdir=str(tmp_path), seed=0, show_progress=False,
                   log_every_steps=log_every_steps)


def _cross_entropy_until(bad_step):
  """Cross-entropy whose value is NaN from ``bad_step`` on (its gradient stays finite)."""
  from kd_jax import losses

  def objective(step, student_out, teacher_out, labels, mask):
    loss = losses.cross_entropy(student_out[0], labels, mask)
    loss = loss + jax.lax.stop_gradient(jnp.where(step >= bad_step, jnp.nan, 0.0))
    return loss, {"loss": loss}
  return objective


def test_nan_loss_is_reported_at_its_exact_step(tmp_path):
  # 10 steps an epoch: step 45 is away from the end-of-epoch reads; the error names it.
  with pytest.raises(engine.NonFiniteLossError, match=r"loss became nan at step 45\b"):
    _fit_mlp(tmp_path, _cross_entropy_until(45), epochs=6)
  # The checkpoint after epoch 4 (step 40) is kept; nothing after the NaN was saved.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["30", "40"]


def test_every_due_step_is_logged_once_in_order(tmp_path):
  _fit_mlp(tmp_path, _cross_entropy_until(10**9), epochs=7, log_every_steps=4)  # 70 steps
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  steps = [r["step"] for r in records if "loss" in r]
  assert steps == list(range(0, 70, 4)) + [69]   # and the last step
  # One eval record after each of the 7 epochs, in order among the train records.
  assert [r["step"] for r in records if "test_accuracy" in r] == list(range(10, 71, 10))
  assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def test_log_only_metrics_are_computed_on_exactly_the_logged_steps(tmp_path):
  # The step computes grad_norm and the task's accuracy only on the steps the loop logs
  # (engine.logs_at): logged with every 4th step (and the last, 69, which is not a
  # multiple of 4), they equal the run that computes them every step, and none is NaN.
  objective = _cross_entropy_until(10**9)
  read = lambda path: {r["step"]: r for r in map(json.loads, open(path)) if "loss" in r}
  _fit_mlp(tmp_path / "every", objective, epochs=7, log_every_steps=1)
  _fit_mlp(tmp_path / "fourth", objective, epochs=7, log_every_steps=4)
  every, fourth = read(tmp_path / "every" / "metrics.jsonl"), read(tmp_path / "fourth" / "metrics.jsonl")
  assert sorted(fourth) == list(range(0, 70, 4)) + [69]
  for step, record in fourth.items():
    assert set(record) == {"step", "loss", "accuracy", "grad_norm"}
    assert all(np.isfinite(v) for v in record.values()), (step, record)
    for key in ("loss", "accuracy", "grad_norm"):
      np.testing.assert_allclose(record[key], every[step][key], rtol=1e-6, err_msg=f"{key}@{step}")


def test_a_step_that_is_not_logged_leaves_its_log_only_metrics_nan():
  from flax import nnx
  from kd_jax import config as config_lib
  from kd_jax import losses, methods, models
  mesh = _mesh()
  rng = np.random.default_rng(0)
  data = classification.DeviceData(*parallel.put_replicated(
      (rng.integers(0, 256, (8, 4, 4, 1), dtype=np.uint8), np.zeros(8, np.int32)), mesh))
  module = methods.Student(models.create("mlp", num_classes=3, rngs=nnx.Rngs(0), hidden=(4,),
                                         input_shape=(4, 4, 1)), {}, {}, rngs=nnx.Rngs(1))
  objective = lambda step, s, t, labels, mask: (lambda l: (l, {"loss": l}))(
      losses.cross_entropy(s[0], labels, mask))
  optimizer = engine.make_optimizer(config_lib.base_config().train, total_steps=10)
  graphdef, params, model_state = engine.split_module(module)
  state = parallel.put_replicated(engine.TrainState(
      step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
      opt_state=optimizer.init(params)), mesh)
  train_step = engine.make_train_step(graphdef, objective, optimizer,
                                      classification.Classification(0.0, 255.0), None, data,
                                      mesh, log_every_steps=3, total_steps=5)
  batch = engine.BatchFeeder(8, 8, 0, mesh)(0)
  logged = []
  for step in range(5):
    state, metrics = train_step(state, batch, engine.replicated_key(0, mesh))
    assert np.isfinite(float(metrics["loss"]))
    finite = [np.isfinite(float(metrics[k])) for k in ("grad_norm", "accuracy")]
    assert finite[0] == finite[1]
    logged.append(finite[0])
  assert logged == [True, False, False, True, True]     # steps 0 and 3, and the last (4)
