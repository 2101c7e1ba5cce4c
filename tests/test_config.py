"""Config validation: bad values fail before anything is built, naming the field and the choices."""

import pytest

from kd_jax import config as config_lib
from kd_jax.experiment import run_experiment
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
    ({"teacher.model": "vit"}, r"teacher.model: unknown value 'vit'"),
    ({"dataset.name": "cifar10"}, r"dataset.name: unknown value 'cifar10'; valid choices: fashion_mnist"),
    ({"train.optimizer": "lion"}, r"train.optimizer: unknown value 'lion'; valid choices: sgd"),
    ({"train.batch_size": 0}, r"train.batch_size must be a positive int"),
    ({"teacher.train.epochs": -1.0}, r"teacher.train.epochs must be a positive number"),
    ({"precision": "fp16"}, r"precision: unknown value 'fp16'; valid choices: fp32, bf16"),
    ({"teacher_cache": "gpu"}, r"teacher_cache: unknown value 'gpu'"),
    ({"dataset.crop_padding": 2, "teacher_cache": "memory"}, r"teacher_cache='memory' with augmentation"),
    ({"dataset.omit_classes": ("3",)}, r"dataset.omit_classes must be a tuple of class ids"),
    ({"mesh.data": 0}, r"mesh.data must be a positive int or -1"),
])
def test_bad_values_name_the_field(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(_with(**overrides))


def test_defaults_and_tiny_config_are_valid():
  config_lib.validate(config_lib.base_config())
  config_lib.validate(tiny_config())


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
