"""Consistent views with mixup and cutmix (issue 27, Beyer et al. 2022): teacher and student
read the same mixed view in a step, the mixing follows its Beta distribution, the labels are
mixed alike (and unused by kd at α = 0), and a cache of teacher outputs is refused."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import engine, methods
from kd_jax.core import parallel
from kd_jax.core.errors import ConfigError
from kd_jax.data import augment
from kd_jax.objectives import losses
from kd_jax.run import validation
from kd_jax.tasks import classification
from tests.conftest import tiny_config


def test_mixup_mixes_each_image_with_its_partner_by_a_beta_share():
  images = jax.random.normal(jax.random.key(0), (6, 4, 4, 1))
  mixed, weight = augment.mixup(jax.random.key(1), images, 0.4)
  partner = images[::-1]
  w = np.asarray(weight)[:, None, None, None]
  np.testing.assert_allclose(mixed, w * images + (1 - w) * partner, rtol=1e-6, atol=1e-6)
  # λ ~ Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
  a = 0.4
  draws = np.asarray(augment.mixup(jax.random.key(2), jnp.zeros((20000, 1, 1, 1)), a)[1])
  assert abs(draws.mean() - 0.5) < 5 * math.sqrt(1 / (4 * (2 * a + 1)) / 20000)
  assert abs(draws.var() - 1 / (4 * (2 * a + 1))) < 0.01


def test_cutmix_pastes_a_box_of_the_partner_and_weighs_by_the_pixels_kept():
  images = jnp.broadcast_to(jnp.arange(6.0)[:, None, None, None], (6, 8, 8, 1))
  mixed, weight = augment.cutmix(jax.random.key(3), images, 1.0)
  mixed = np.asarray(mixed)[..., 0]
  for i in range(6):
    own = mixed[i] == i
    partner = mixed[i] == 5 - i
    assert np.all(own | partner)
    if i != 5 - i:         # (the same image on both sides for an odd batch's middle)
      np.testing.assert_allclose(weight[i], own.mean(), rtol=1e-6)
      rows, cols = np.nonzero(partner)
      if len(rows):         # the pasted pixels form one rectangle
        assert partner[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()


class _Recording(nnx.Module):
  """A linear classifier that hands each input it reads to ``record``."""

  def __init__(self, name: str, record, rngs: nnx.Rngs):
    self.name, self.record = name, record
    self.linear = nnx.Linear(28 * 28, 10, rngs=rngs)

  def __call__(self, x, *, train=False, return_features=False):
    jax.debug.callback(functools.partial(self.record, self.name), x)
    logits = self.linear(x.reshape(x.shape[0], -1))
    return (logits, {}) if return_features else logits


@pytest.mark.parametrize("mix", ["mixup", "cutmix"])
def test_teacher_and_student_read_the_same_mixed_view_in_a_step(mix):
  seen = {}
  record = lambda name, x: seen.setdefault(name, []).append(np.asarray(x))
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  config = tiny_config(alpha=0.0)
  student, teacher = _Recording("student", record, nnx.Rngs(0)), _Recording("teacher", record,
                                                                            nnx.Rngs(1))
  graphdef, params, model_state = engine.split_module(student)
  t_graphdef, t_params, t_state = engine.split_module(teacher)
  optimizer = engine.make_optimizer(config.train, 8)
  state = engine.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                            model_state=model_state, opt_state=optimizer.init(params))
  images = jax.random.randint(jax.random.key(4), (16, 28, 28, 1), 0, 256).astype(jnp.uint8)
  data = classification.DeviceData(images, jnp.arange(16, dtype=jnp.int32) % 10)
  task = classification.Classification(0.3, 0.35, crop_padding=2, flip=True,
                                       **{mix: 1.0})
  step = engine.make_train_step(graphdef, methods.make_objective(config, {}), optimizer, task,
                                engine.Teacher(t_graphdef, (t_params, t_state)), data, mesh)
  batch = {"index": jnp.arange(8, dtype=jnp.int32), "mask": jnp.ones(8, bool)}
  jax.block_until_ready(step.jitted(state, (t_params, t_state), data, batch, jax.random.key(0)))
  (seen_by_student,), (seen_by_teacher,) = seen["student"], seen["teacher"]
  np.testing.assert_array_equal(seen_by_student, seen_by_teacher)        # bit-identical
  plain = np.asarray(augment.normalize(images[:8], 0.3, 0.35))
  assert not np.allclose(seen_by_student, plain)       # augmented and mixed, not the images


def test_the_labels_are_mixed_alike_and_kd_at_alpha_0_does_not_read_them():
  task = classification.Classification(0.3, 0.35, mixup=0.5)
  images = jax.random.randint(jax.random.key(5), (6, 28, 28, 1), 0, 256).astype(jnp.uint8)
  data = classification.DeviceData(images, jnp.arange(6, dtype=jnp.int32))
  inputs, labels, _, _ = task.train_batch(data, jnp.arange(6), jnp.ones(6, bool),
                                          jax.random.key(6))
  assert isinstance(labels, losses.MixedLabels)
  np.testing.assert_array_equal(labels.first, np.arange(6))
  np.testing.assert_array_equal(labels.second, np.arange(6)[::-1])
  mixed, weight = augment.mixup(jax.random.fold_in(jax.random.key(6), 1),
                                task.preprocess(images, jax.random.key(6)), 0.5)
  np.testing.assert_array_equal(inputs, mixed)
  np.testing.assert_array_equal(labels.weight, weight)
  # The mixed CE is the CE of the mixed one-hot target.
  logits = jax.random.normal(jax.random.key(7), (6, 10))
  log_p = np.asarray(jax.nn.log_softmax(logits))
  w = np.asarray(weight)
  expected = -np.mean(w * log_p[np.arange(6), np.arange(6)]
                      + (1 - w) * log_p[np.arange(6), np.arange(6)[::-1]])
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), expected, rtol=1e-5)
  # kd at α = 0: the objective is the same whatever the labels say.
  objective = methods.make_objective(tiny_config(alpha=0.0), {})
  teacher = jax.random.normal(jax.random.key(8), (6, 10))
  mask = jnp.ones(6, bool)
  mixed_loss, metrics = objective(0, (logits, {}), (teacher, {}), labels, mask)
  plain_loss, _ = objective(0, (logits, {}), (teacher, {}), jnp.zeros(6, jnp.int32), mask)
  assert float(mixed_loss) == float(plain_loss) and "ce" not in metrics


def test_a_teacher_cache_and_fixed_views_are_refused_with_mixing():
  with pytest.raises(ConfigError, match="teacher must see the same random view"):
    validation.validate(tiny_config(**{"dataset.mixup": 0.2, "teacher_cache": "memory"}))
  with pytest.raises(ConfigError, match="teacher_fixed_views=True shows the teacher"):
    validation.validate(tiny_config(**{"dataset.cutmix": 1.0, "teacher_fixed_views": True}))
  with pytest.raises(ConfigError, match="choose one"):
    validation.validate(tiny_config(**{"dataset.cutmix": 1.0, "dataset.mixup": 1.0}))
  with pytest.raises(ConfigError, match="dkd splits the logits at the gold class"):
    validation.validate(tiny_config("dkd", **{"dataset.mixup": 1.0}))
  validation.validate(tiny_config(**{"dataset.mixup": 0.2}))


@pytest.mark.usefixtures("idx_source")
def test_the_teacher_trains_without_the_students_mixing():
  from kd_jax.run import teachers
  from tests.conftest import MISSING_FASHION_MNIST, have_fashion_mnist, skip_or_fail
  mixed = tiny_config(**{"dataset.mixup": 0.4})
  assert teachers.teacher_key(mixed) == teachers.teacher_key(tiny_config())
  if not have_fashion_mnist():
    skip_or_fail(MISSING_FASHION_MNIST)
  prepared = classification.prepare(mixed, parallel.make_mesh(1, 1), jnp.float32)
  assert prepared.task.mixup == 0.4 and prepared.teacher_task.mixup == 0.0
