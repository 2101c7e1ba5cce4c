"""Teacher-output caching: same step as uncached, disk reuse and invalidation, refusal under augmentation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax.run import validation
from kd_jax import methods, models
from kd_jax.run import pipeline as experiment
from kd_jax.core import parallel
from kd_jax.engine import teacher_cache
from kd_jax.run import teachers
from kd_jax import engine
from kd_jax.tasks import classification
from kd_jax.data import augment
from tests.conftest import needs_fashion_mnist, tiny_config

pytestmark = [needs_fashion_mnist, pytest.mark.usefixtures("idx_source")]

MEAN, STD = augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD


def _config(method="kd", **overrides):
  # Plain SGD without weight decay: one step's update is exactly -lr * gradient.
  overrides = {"train.optimizer": "sgd", "train.weight_decay": 0.0,
               "train.lr_schedule": "constant", "train.learning_rate": 0.5, **overrides}
  return tiny_config(method, **overrides)


def _teacher(config, mesh, num_classes, input_shape, feature_names=(), seed=None):
  module = classification.build_model(config.teacher, num_classes=num_classes, input_shape=input_shape,
                                  seed=config.teacher.seed if seed is None else seed,
                                  dtype=jnp.float32)
  graphdef, params, state = engine.split_module(module)
  return engine.Teacher(graphdef, parallel.put_replicated((params, state), mesh),
                       tuple(feature_names))


def _preprocess(config):
  return classification.Classification(MEAN, STD, config.dataset.crop_padding, config.dataset.flip)


def _setup(config):
  mesh = parallel.make_mesh()
  train_data, _, _, num_classes, input_shape = classification.load_data(config, mesh)
  return mesh, train_data, num_classes, input_shape


@pytest.mark.parametrize("method", ["kd", "at"])
def test_cached_and_uncached_steps_give_the_same_loss_and_gradients(method, tmp_path):
  config = _config(method, teacher_cache="memory")
  mesh, train_data, num_classes, input_shape = _setup(config)
  student_model = classification.build_model(config.student, num_classes=num_classes,
                                         input_shape=input_shape, seed=1, dtype=jnp.float32)
  s_shapes = models.feature_shapes(student_model)
  t_model = classification.build_model(config.teacher, num_classes=num_classes,
                                   input_shape=input_shape, seed=0, dtype=jnp.float32)
  pairs = methods.feature_pairs(config, s_shapes, models.feature_shapes(t_model))
  assert bool(pairs) == (method == "at")      # "at" exercises cached feature maps too
  teacher = _teacher(config, mesh, num_classes, input_shape, sorted(set(pairs.values())))
  student = methods.Student(student_model, pairs, {}, rngs=nnx.Rngs(2))
  objective = methods.make_objective(config, pairs)
  optimizer = engine.make_optimizer(config.train, total_steps=8)
  preprocess = _preprocess(config)

  cached_data = teacher_cache.attach(config, teacher, train_data, preprocess, mesh, str(tmp_path),
                                     teacher_name=teachers.teacher_key(config))
  assert cached_data.teacher_logits.shape == (train_data.size, num_classes)
  assert set(cached_data.teacher_features) == set(pairs.values())

  graphdef, params, model_state = engine.split_module(student)
  host = jax.device_get((params, model_state))

  def fresh_state():   # the step donates its state: each run gets its own copy
    p, s = host
    return parallel.put_replicated(
        engine.TrainState(step=jnp.zeros((), jnp.int32), params=p, model_state=s,
                         opt_state=optimizer.init(p)), mesh)

  # A ragged batch: 40 real rows, 24 padded ones masked out.
  index = np.random.default_rng(0).permutation(train_data.size)[:64].astype(np.int32)
  mask = np.arange(64) < 40
  batch = parallel.put_sharded({"index": index, "mask": mask},
                               {"index": parallel.batch_sharding(mesh),
                                "mask": parallel.batch_sharding(mesh)})
  rng = jax.random.key(0)
  uncached = engine.make_train_step(graphdef, objective, optimizer, preprocess, teacher,
                                   train_data, mesh)
  cached = engine.make_train_step(graphdef, objective, optimizer, preprocess, None, cached_data,
                                 mesh)
  state_u, metrics_u = jax.device_get(uncached(fresh_state(), batch, rng))
  state_c, metrics_c = jax.device_get(cached(fresh_state(), batch, rng))

  assert set(metrics_u) == set(metrics_c)
  for name in metrics_u:
    np.testing.assert_allclose(metrics_c[name], metrics_u[name], rtol=1e-5, atol=1e-7,
                               err_msg=name)
  # SGD: gradient = (params_before - params_after) / lr, leaf by leaf.
  lr = config.train.learning_rate
  grads_u = jax.tree.map(lambda a, b: (a - b) / lr, host[0], state_u.params)
  grads_c = jax.tree.map(lambda a, b: (a - b) / lr, host[0], state_c.params)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_u)) > 0
  jax.tree.map(lambda c, u: np.testing.assert_allclose(c, u, rtol=1e-4, atol=1e-6),
               grads_c, grads_u)


def _mlp_teacher_reference(teacher, images_uint8):
  """float64 NumPy forward of an MLP teacher on normalised, flattened images."""
  params = jax.device_get(teacher.variables[0])
  layers = [params["layers"][i] for i in sorted(params["layers"])] + [params["head"]]
  h = ((images_uint8.astype(np.float64) / 255.0 - MEAN) / STD).reshape(len(images_uint8), -1)
  for i, layer in enumerate(layers):
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(layers) - 1:
      h = np.maximum(h, 0.0)
  return h


@pytest.mark.parametrize("fixed_views", [False, True])
def test_cached_logits_are_the_teachers_outputs_on_unaugmented_images(fixed_views, tmp_path):
  overrides = {"teacher.model": "mlp", "teacher.kwargs": {"hidden": (16,)}, "teacher_cache": "memory"}
  if fixed_views:   # the student's views are augmented; the teacher's stay fixed
    overrides.update({"dataset.crop_padding": 2, "dataset.flip": True,
                      "teacher_fixed_views": True})
  config = _config(**overrides)
  validation.validate(config)
  mesh, train_data, num_classes, input_shape = _setup(config)
  teacher = _teacher(config, mesh, num_classes, input_shape)
  data = teacher_cache.attach(config, teacher, train_data, _preprocess(config), mesh, str(tmp_path))
  expected = _mlp_teacher_reference(teacher, np.asarray(train_data.images))
  np.testing.assert_allclose(np.asarray(data.teacher_logits), expected, rtol=1e-4, atol=1e-4)
  assert data.teacher_logits.dtype == jnp.float32


def test_augmentation_refuses_memory_and_disk_caching_with_a_clear_message(tmp_path):
  for mode in ("memory", "disk"):
    config = _config(teacher_cache=mode, **{"dataset.crop_padding": 2})
    with pytest.raises(ValueError, match="consistent teaching") as info:
      validation.validate(config)
    assert "teacher_fixed_views=True" in str(info.value)
    assert f"teacher_cache={mode!r}" in str(info.value)
    mesh, train_data, num_classes, input_shape = _setup(config)
    teacher = _teacher(config, mesh, num_classes, input_shape)
    # attach refuses too, for callers that skip validation.
    with pytest.raises(ValueError, match="consistent teaching"):
      teacher_cache.attach(config, teacher, train_data, _preprocess(config), mesh, str(tmp_path),
                           teacher_name="teacher")
  # auto leaves augmented runs uncached: the teacher runs on the student's view each step.
  config = _config(teacher_cache="auto", **{"dataset.flip": True})
  validation.validate(config)
  data = teacher_cache.attach(config, teacher, train_data, _preprocess(config), mesh, str(tmp_path))
  assert data.teacher_logits is None
  assert not os.path.exists(tmp_path / teacher_cache.CACHE_FILE)
  # Fixed views exist only to be cached.
  with pytest.raises(ValueError, match="teacher_fixed_views=True needs cached"):
    validation.validate(_config(teacher_cache="none", teacher_fixed_views=True))


@pytest.fixture
def count_teacher_passes(monkeypatch):
  """Counts full passes of a teacher over the training set."""
  calls = []
  original = engine.predict_all

  def counting(*args, **kwargs):
    calls.append(1)
    return original(*args, **kwargs)

  monkeypatch.setattr(engine.step, "predict_all", counting)   # what teacher_cache calls
  return calls


def _stored_identity(workdir):
  with np.load(os.path.join(workdir, teacher_cache.CACHE_FILE)) as f:
    return json.loads(str(f["identity"]))


def test_disk_cache_is_reused_and_invalidated_when_teacher_or_data_change(tmp_path,
                                                                          count_teacher_passes):
  workdir = str(tmp_path)
  config = _config(teacher_cache="disk")
  mesh, train_data, num_classes, input_shape = _setup(config)
  preprocess = _preprocess(config)

  def attach(config, teacher, data):
    # The pipeline hands down the teacher's name: its cache key (kd_jax.run.teachers).
    return teacher_cache.attach(config, teacher, data, preprocess, mesh, workdir,
                                teacher_name=teachers.teacher_key(config))

  teacher = _teacher(config, mesh, num_classes, input_shape)
  first = attach(config, teacher, train_data)
  assert len(count_teacher_passes) == 1
  assert os.path.exists(tmp_path / teacher_cache.CACHE_FILE)

  # Rerun with the same teacher and data: read back, not recomputed, bit for bit.
  again = attach(config, _teacher(config, mesh, num_classes, input_shape), train_data)
  assert len(count_teacher_passes) == 1
  np.testing.assert_array_equal(np.asarray(again.teacher_logits), np.asarray(first.teacher_logits))

  # Other teacher weights under the same config (e.g. a replaced teacher.checkpoint).
  other = _teacher(config, mesh, num_classes, input_shape, seed=7)
  changed = attach(config, other, train_data)
  assert len(count_teacher_passes) == 2
  assert not np.allclose(np.asarray(changed.teacher_logits), np.asarray(first.teacher_logits))
  assert _stored_identity(workdir)["teacher_variables"] == teacher_cache.fingerprint(other.variables)

  # Another teacher config (its key changes) with the same weights.
  retrained = _config(teacher_cache="disk", **{"teacher.train.epochs": 2})
  attach(retrained, other, train_data)
  assert len(count_teacher_passes) == 3

  # Another dataset subset.
  smaller = _config(teacher_cache="disk", **{"teacher.train.epochs": 2,
                                             "dataset.train_examples": 150})
  _, small_data, _, _ = _setup(smaller)
  cut = attach(smaller, other, small_data)
  assert len(count_teacher_passes) == 4
  assert cut.teacher_logits.shape == (150, num_classes)
  assert _stored_identity(workdir)["examples"] == 150

  # Other requested features.
  with_features = engine.Teacher(other.graphdef, other.variables, ("embedding",))
  out = attach(smaller, with_features, small_data)
  assert len(count_teacher_passes) == 5
  assert out.teacher_features["embedding"].shape[0] == 150
  attach(smaller, with_features, small_data)
  assert len(count_teacher_passes) == 5


def test_fingerprint_sees_values_and_positions_but_not_placement():
  a = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
  assert teacher_cache.fingerprint({"a": a}) == teacher_cache.fingerprint({"a": np.asarray(a)})
  assert teacher_cache.fingerprint({"a": a}) != teacher_cache.fingerprint({"a": a.at[0, 0].add(1e-6)})
  # Same multiset of values, other order: plain sums agree, the position-weighted one does not.
  assert teacher_cache.fingerprint({"a": a}) != teacher_cache.fingerprint({"a": a[::-1]})
  assert teacher_cache.fingerprint({"a": a}) != teacher_cache.fingerprint({"a": a.reshape(4, 3)})
  assert teacher_cache.fingerprint({"a": a}) != teacher_cache.fingerprint({"a": a.astype(jnp.int32)})


def test_experiment_with_disk_cache_matches_the_uncached_run(tmp_path, teacher_dir):
  cached = experiment.run_experiment(tiny_config(teacher_cache="disk"), str(tmp_path / "disk"),
                                     teacher_dir=teacher_dir, show_progress=False)
  plain = experiment.run_experiment(tiny_config(teacher_cache="none"), str(tmp_path / "none"),
                                    teacher_dir=teacher_dir, show_progress=False)
  assert cached["student"]["teacher_cached"] is True
  assert plain["student"]["teacher_cached"] is False
  assert os.path.exists(tmp_path / "disk" / teacher_cache.CACHE_FILE)
  for key in ("test_accuracy", "agreement", "kl_to_teacher"):
    np.testing.assert_allclose(cached["student"][key], plain["student"][key], rtol=1e-4, atol=1e-6)
