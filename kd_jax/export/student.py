"""A finished run's trained student, as a function of the raw inputs its users have.

:func:`load` rebuilds the run's student from its ``results.json`` config and loads
its last checkpoint (the module the run trained, adapters included, then the bare
model), and returns it with the held-out split as host arrays. Only image
classifiers are exportable so far: the function takes ``uint8`` images and applies
the task's normalisation itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from kd_jax import data as data_lib
from kd_jax import methods, models, parallel, tasks, train
from kd_jax import workdir as workdir_lib
from kd_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Exportable:
  """What an exporter needs: ``function(uint8 images [B, H, W, C]) -> logits [B, C]`` f32, the
  input's per-example shape, and held-out and training examples (host arrays)."""
  function: Callable
  input_shape: tuple
  test_inputs: np.ndarray
  test_labels: np.ndarray
  train_inputs: np.ndarray
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]


def load(workdir: str, *, calibration_examples: int = 256) -> Exportable:
  """The student of the finished run in ``workdir``.

  Raises:
    ConfigError: no finished run there, or a model that cannot be exported yet.
  """
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if not os.path.exists(path):
    raise ConfigError(None, f"--workdir={workdir}: no finished run ({workdir_lib.RESULTS_FILE} "
                      "is missing); run kd_jax.main there first")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  if config.student.model not in models.IMAGE_MODELS:
    raise ConfigError(None, f"--workdir={workdir}: its student is a {config.student.model!r}; "
                      f"only image classifiers ({', '.join(models.IMAGE_MODELS)}) export so far")
  mesh = parallel.make_mesh(1, 1)
  prepared = tasks.prepare(config, mesh, jnp.float32)
  student = prepared.build(config.student, config.seed)
  teacher = nnx.eval_shape(lambda: prepared.build(config.teacher, config.teacher.seed, "teacher"))
  module, _ = methods.trainable_student(config, student, teacher)
  train.load_trained(module, config.train, os.path.join(workdir, "student"),
                     workdir_lib.result_fields(config))
  model, task = getattr(module, "model", module), prepared.task   # train=False: eval mode

  def function(images):
    return model(task.preprocess(images)).astype(jnp.float32)

  host = lambda x: np.asarray(jax.device_get(x))
  return Exportable(function, tuple(model.input_shape), host(prepared.test_data.images),
                    host(prepared.test_data.labels),
                    host(prepared.train_data.images[:calibration_examples]), config,
                    tuple(data_lib.load_split(config.dataset.name, "test").class_names))
