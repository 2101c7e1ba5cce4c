"""Config validation: bad values fail before anything is built, naming the field and the choices."""

import pytest

from kd_jax.run import validation
from kd_jax import config as config_lib
from kd_jax.run.pipeline import run_experiment
from tests.conftest import needs_fashion_mnist, tiny_config


def _with(**overrides):
  return tiny_config(**overrides)


@pytest.mark.parametrize("overrides, message", [
    ({"method": "distill"}, r"method: unknown value 'distill'; valid choices: none, kd, dkd"),
    ({"divergence": "hellinger"}, r"divergence: unknown value 'hellinger'; valid choices: kl"),
    ({"temperature": {"schedule": "constant", "init": 0.0}}, r"temperature.init must be > 0"),
    ({"temperature": {"schedule": "step", "init": 4.0}}, r"temperature.schedule: unknown schedule"),
    ({"alpha": 1.5}, r"alpha.* must be in \[0, 1\]"),
    ({"alpha": -0.1}, r"alpha.* must be in \[0, 1\]"),
    ({"student.model": "vgg"}, r"student.model: unknown value 'vgg'; valid choices: mlp, cnn"),
    ({"teacher.model": "swin"}, r"teacher.model: unknown value 'swin'"),
    ({"dataset.name": "cifar10"}, r"dataset.name: unknown value 'cifar10'; valid choices: fashion_mnist"),
    ({"train.optimizer": "lion"}, r"train.optimizer: unknown value 'lion'; valid choices: sgd"),
    ({"train.batch_size": 0}, r"train.batch_size must be a positive int"),
    ({"teacher.train.epochs": -1.0}, r"teacher.train.epochs must be a positive number"),
    ({"precision": "fp16"}, r"precision: unknown value 'fp16'; valid choices: fp32, bf16"),
    ({"teacher_cache": "gpu"}, r"teacher_cache: unknown value 'gpu'"),
    ({"dataset.crop_padding": 2, "teacher_cache": "memory"}, r"teacher_cache='memory' with augmentation"),
    ({"dataset.omit_classes": ("3",)}, r"dataset.omit_classes must be a tuple of class ids"),
    ({"mesh.data": 0}, r"mesh.data must be a positive int or -1"),
    ({"student_init": "pretrained"},
     r"student_init: unknown value 'pretrained'; valid choices: scratch"),
    ({"student_init": "baseline", "baseline": False}, r"student_init='baseline' .* baseline=True"),
    ({"train.eval_every_steps": -5}, r"train.eval_every_steps must be an int >= 0"),
    ({"baseline_steps": -1}, r"baseline_steps must be an int >= 0"),
    ({"baseline_steps": 4, "baseline": False}, r"baseline_steps is the trained baseline's budget"),
    # Without a warm start the baseline is the same-budget control (or the run itself).
    ({"baseline_steps": 4, "baseline": True}, r"baseline_steps .* set student_init to one of baseline, seqkd"),
])
def test_bad_values_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    validation.validate(_with(**overrides))


def test_defaults_and_tiny_config_are_valid():
  validation.validate(config_lib.base_config())
  validation.validate(tiny_config())


@needs_fashion_mnist
@pytest.mark.usefixtures("idx_source")
@pytest.mark.parametrize("overrides, message", [
    # Checked on shapes alone (jax.eval_shape) before the teacher is trained or anything compiles.
    ({"method": "fitnets", "feature_layers": {"conv9": "conv2"}},
     r"feature_layers: student layer 'conv9' does not exist; valid: conv1, conv2, embedding"),
    ({"method": "fitnets", "feature_layers": {"conv2": "block3"}},
     r"feature_layers: teacher layer 'block3' does not exist"),
    ({"method": "at", "student.model": "mlp", "student.kwargs": {"hidden": (8,)}},
     r"method='at' needs spatial feature maps"),
    ({"dataset.omit_classes": (10,)}, r"dataset.omit_classes: class ids must be in \[0, 10\)"),
])
def test_shape_errors_before_any_training(overrides, message, tmp_path):
  teachers = tmp_path / "teachers"
  with pytest.raises(ValueError, match=message):
    run_experiment(tiny_config(**overrides), str(tmp_path / "run"), teacher_dir=str(teachers),
                   show_progress=False)
  assert not teachers.exists() or not any(teachers.iterdir())   # no teacher was trained


def test_cache_keys_ignore_only_fields_that_change_no_result():
  from kd_jax.run import teachers
  from kd_jax.config import records
  base = tiny_config()
  neutral = tiny_config(log_every_steps=9, **{"train.eval_batch_size": 7,
                                              "teacher.train.eval_batch_size": 7,
                                              "checkpoint.every_steps": 3})
  assert teachers.teacher_key(neutral) == teachers.teacher_key(base)
  assert teachers.baseline_key(neutral) == teachers.baseline_key(base)
  assert records.result_fields(neutral) == records.result_fields(base)
  for field, value in (("teacher.train.epochs", 3.0), ("teacher.seed", 1),
                       ("dataset.train_examples", 100), ("precision", "bf16")):
    changed = tiny_config(**{field: value})
    assert teachers.teacher_key(changed) != teachers.teacher_key(base), field
    assert records.result_fields(changed) != records.result_fields(base), field
  for field, value in (("train.epochs", 3.0), ("seed", 1), ("student.kwargs", {"widths": (4, 8)})):
    assert teachers.baseline_key(tiny_config(**{field: value})) != teachers.baseline_key(base)
  # The baseline's own budget keys it; set to the students' budget it is that budget.
  steps = tiny_config(**{"train.steps": 5, "baseline": True})
  assert teachers.baseline_key(tiny_config(**{"train.steps": 5, "baseline": True,
                                              "baseline_steps": 5})) == teachers.baseline_key(steps)
  assert teachers.baseline_key(tiny_config(**{"train.steps": 5, "baseline": True,
                                              "baseline_steps": 3})) != teachers.baseline_key(steps)
  # The method's settings do not change the teacher or the baseline, only the run.
  kd_settings = tiny_config(alpha=0.9, divergence="js")
  assert teachers.teacher_key(kd_settings) == teachers.teacher_key(base)
  assert teachers.baseline_key(kd_settings) == teachers.baseline_key(base)
  assert records.differences(records.result_fields(base), records.result_fields(kd_settings)) == [
      'alpha: 0.5 → 0.9', 'divergence: "kl" → "js"']


def test_a_method_block_at_its_defaults_added_to_a_finished_runs_config_is_no_difference():
  from kd_jax import config as config_lib
  from kd_jax.config import records
  recorded = records.result_fields(config_lib.base_config())        # a run from before `rl`
  with_block = config_lib.base_config()
  with_block.rl = config_lib.rl_config()
  assert records.differences(recorded, records.result_fields(with_block)) == []
  with_block.rl.kl_coef = 0.5
  assert records.differences(recorded, records.result_fields(with_block)) == [
      "rl.kl_coef: (absent) → 0.5"]


def test_transfer_set_leaves_out_exactly_the_omitted_classes():
  import jax
  import numpy as np
  from kd_jax import config as config_lib
  from kd_jax.core import parallel
  from kd_jax import engine
  from kd_jax.tasks import classification
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  labels = np.array([0, 3, 1, 3, 2, 0, 3], np.int32)
  images = np.arange(7, dtype=np.uint8).reshape(7, 1, 1, 1)
  data = classification.DeviceData(*parallel.put_replicated((images, labels), mesh))
  config = config_lib.base_config()
  config.dataset.omit_classes = (3, 0)
  kept = classification.transfer_set(config, data, num_classes=4)
  np.testing.assert_array_equal(np.asarray(kept.labels), [1, 2])
  np.testing.assert_array_equal(np.asarray(kept.images)[:, 0, 0, 0], [2, 4])  # rows kept in order
  config.dataset.omit_classes = (4,)
  with pytest.raises(ValueError, match=r"dataset.omit_classes: class ids must be in \[0, 4\)"):
    classification.transfer_set(config, data, num_classes=4)
