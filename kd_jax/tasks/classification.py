"""Image classification as a task of the engine (:mod:`kd_jax.tasks`).

The split lives on the devices as uint8 images and int32 labels
(:class:`DeviceData`). A step gathers its examples by index, augments the
training views on the device (random crop, flip) and normalises them; the
targets are the labels and the loss mask is the batch's validity mask ``[B]``.
Evaluation predicts the whole test split and reports its accuracy (the headline
``test_accuracy``); :func:`phase_report` adds agreement with the teacher,
KL to the teacher and calibration.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import data as data_lib
from kd_jax.tasks import metrics as metrics_lib
from kd_jax import models
from kd_jax.core import parallel
from kd_jax.engine import step
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.data import augment as augment_lib
from kd_jax.objectives import losses
from kd_jax.core.errors import ConfigError
from kd_jax.objectives.masked import masked_mean
from kd_jax.tasks.base import Prepared
from kd_jax.config import checks

NAME = "classification"
DATASETS = data_lib.NAMES
KIND = "image"
LANGUAGE = False
STUDENT_INITS = ("scratch", "baseline")


# Only the students' training depends on these dataset fields (not the teacher's cache key:
# the teacher trains without mixing, Prepared.teacher_task).
STUDENT_ONLY_FIELDS = ("mixup", "cutmix")


def check(config) -> None:
  """An image dataset's fields and models, and the caches augmentation allows."""
  checks.ints_at_least("dataset", config.dataset, ("train_examples", "test_examples",
                                                   "crop_padding"))
  omit = config.dataset.omit_classes
  if not isinstance(omit, (tuple, list)) or not all(
      isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in omit):
    raise ConfigError("dataset.omit_classes",
                      f"dataset.omit_classes must be a tuple of class ids >= 0, got {omit!r}")
  for role in ("teacher", "student"):
    checks.choice(f"{role}.model", config[role].model, models.IMAGE_MODELS)
  d = config.dataset
  mixup, cutmix = d.get("mixup", 0.0), d.get("cutmix", 0.0)
  checks.nonnegative("dataset.mixup", mixup)
  checks.nonnegative("dataset.cutmix", cutmix)
  mixes = mixup > 0 or cutmix > 0
  if mixup > 0 and cutmix > 0:
    raise ConfigError("dataset.cutmix", "dataset.mixup and dataset.cutmix are both > 0: "
                      "choose one (the other 0)")
  if mixes and config.teacher_fixed_views:
    raise ConfigError("teacher_fixed_views", "teacher_fixed_views=True shows the teacher the "
                      "un-augmented image, but with dataset.mixup/cutmix the student's view is "
                      "two images mixed: the teacher must read that same view (function "
                      "matching, Beyer et al. 2022); set teacher_fixed_views=False")
  augmented = d.crop_padding > 0 or d.flip or mixes
  if (augmented and config.teacher_cache in ("memory", "disk", "shared")
      and not config.teacher_fixed_views):
    raise ConfigError("teacher_cache",
        f"teacher_cache={config.teacher_cache!r} with augmentation (dataset.crop_padding/"
        "flip/mixup/cutmix): the teacher must see the same random view as the student "
        "(consistent teaching, Beyer et al. 2022), so its outputs cannot be cached. "
        "Use teacher_cache='none' or 'auto', turn augmentation off, or set "
        "teacher_fixed_views=True (the teacher then sees the un-augmented image).")


@device_split
class DeviceData(DeviceSplit):
  """A split held on the devices (replicated): uint8 images, int32 labels.

  ``teacher_logits`` / ``teacher_features`` hold the teacher's outputs for
  every example when the teacher is cached (fixed, un-augmented inputs).
  """
  images: jax.Array
  labels: jax.Array


@dataclasses.dataclass(frozen=True)
class Classification:
  """The batch side of the task: uint8 → normalised float, plus on-device augmentation.

  ``mean``/``std`` normalise pixels scaled to [0, 1]; ``crop_padding`` and ``flip``
  augment the training views (never the evaluation inputs); ``mixup`` / ``cutmix`` > 0
  (a Beta concentration) then mix each view with another example's, and the labels
  become :class:`~kd_jax.objectives.losses.MixedLabels` (a method that reads no labels,
  ``kd`` at α = 0, is unaffected by them). The teacher, live in the step, reads the
  same mixed view as the student. ``dtype`` is the model's compute dtype.
  """
  mean: float
  std: float
  crop_padding: int = 0
  flip: bool = False
  dtype: Any = jnp.float32
  mixup: float = 0.0
  cutmix: float = 0.0
  headline: ClassVar[str] = "test_accuracy"

  def preprocess(self, images, rng=None):
    if rng is not None and self.augments:
      # On raw pixels, so that crop padding is black background, not the normalised mean.
      images = augment_lib.augment(rng, images, crop_padding=self.crop_padding, flip=self.flip)
    return augment_lib.normalize(images, self.mean, self.std).astype(self.dtype)

  @property
  def augments(self) -> bool:
    return bool(self.crop_padding or self.flip or self.mixup or self.cutmix)

  def input_identity(self) -> dict:
    """What turns the stored images into model inputs (for caches of teacher outputs)."""
    return {"mean": float(self.mean), "std": float(self.std),
            "dtype": jnp.dtype(self.dtype).name}

  def train_batch(self, data: DeviceData, index, mask, rng, policy=None, teacher=None):
    """``(images [B, H, W, C], labels [B], mask [B], {})`` of a training batch (inside the step)."""
    del policy, teacher
    images, labels = self.preprocess(data.images[index], rng), data.labels[index]
    if rng is not None and (self.mixup or self.cutmix):
      # (its own key: the crop and flip draws stay those of a run without mixing)
      mix = augment_lib.mixup if self.mixup else augment_lib.cutmix
      images, weight = mix(jax.random.fold_in(rng, 1), images, self.mixup or self.cutmix)
      labels = losses.MixedLabels(labels, labels[augment_lib.mix_partners(len(index))], weight)
    return images, labels, mask, {}

  def eval_inputs(self, data: DeviceData, index):
    return self.preprocess(data.images[index])

  def train_metrics(self, logits, labels, mask) -> dict:
    if isinstance(labels, losses.MixedLabels):
      labels = labels.dominant()
    correct = jnp.argmax(logits, -1) == labels
    return {"accuracy": masked_mean(correct.astype(jnp.float32), mask)}

  def evaluator(self, graphdef, data: DeviceData, batch_size: int, mesh):
    """``evaluate(variables) -> ({"test_accuracy": a}, logits [N, C])`` on the whole split."""
    predict = step.make_predict(graphdef, self, mesh)
    labels = np.asarray(data.labels)

    def evaluate(variables):
      logits, _ = step.predict_all(predict, variables, data, batch_size, mesh)
      return {"test_accuracy": metrics_lib.accuracy(logits, labels)}, logits

    return evaluate


def load_data(config, mesh):
  """Both splits on the devices, plus the host labels, the class count and the image shape."""
  d = config.dataset
  splits = {}
  for split, limit in (("train", d.train_examples), ("test", d.test_examples)):
    s = data_lib.load_split(d.name, split)
    images, labels = s.images, s.labels
    if limit:
      images, labels = images[:limit], labels[:limit]
    splits[split] = (images, labels, s.num_classes)
  num_classes = splits["train"][2]
  to_device = lambda images, labels: DeviceData(
      *parallel.put_replicated((images, labels.astype(np.int32)), mesh))
  return (to_device(*splits["train"][:2]), to_device(*splits["test"][:2]),
          splits["test"][1].astype(np.int64), num_classes, splits["train"][0].shape[1:])


def transfer_set(config, train_data: DeviceData, num_classes: int) -> DeviceData:
  """The students' training data: ``train_data`` less ``dataset.omit_classes``.

  Raises:
    ConfigError: naming ``dataset.omit_classes`` when a class id is out of range.
  """
  omit = tuple(config.dataset.omit_classes)
  if not omit:
    return train_data
  if max(omit) >= num_classes:
    raise ConfigError("dataset.omit_classes", f"dataset.omit_classes: class ids must be in "
                      f"[0, {num_classes}), got {omit}")
  labels = np.asarray(train_data.labels.addressable_data(0))
  keep = np.flatnonzero(~np.isin(labels, omit))
  return DeviceData(train_data.images[keep], train_data.labels[keep])


def build_model(spec, *, num_classes: int | None, input_shape, seed: int, dtype,
                role: str = "student") -> nnx.Module:
  """Builds ``spec.model`` with ``spec.kwargs`` (``num_classes`` None: an unconditional
  denoiser, kd_jax/tasks/diffusion.py).

  Raises:
    ConfigError: the kwargs do not fit the model (an unknown name or a bad value),
      naming ``<role>.kwargs``.
  """
  kwargs = spec.kwargs.to_dict()
  try:
    return models.create(spec.model, num_classes=num_classes, rngs=nnx.Rngs(seed), dtype=dtype,
                         input_shape=tuple(input_shape), **kwargs)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{role}.kwargs",
                      f"{role}.kwargs={kwargs} do not fit model {spec.model!r}: {e}") from None


def prepare(config, mesh, dtype) -> Prepared:
  """The classification experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`)."""
  train_data, test_data, test_labels, num_classes, input_shape = load_data(config, mesh)
  mean, std = data_lib.normalization(config.dataset.name)
  d = config.dataset
  task = Classification(mean, std, d.crop_padding, d.flip, dtype, mixup=float(d.get("mixup", 0)),
                        cutmix=float(d.get("cutmix", 0)))

  def build(spec, seed, role="student"):
    return build_model(spec, num_classes=num_classes, input_shape=input_shape, seed=seed,
                       dtype=dtype, role=role)

  def evaluate_teacher(graphdef, variables, batch_size):
    _, logits = task.evaluator(graphdef, test_data, batch_size, mesh)(variables)
    return metrics_lib.classification_report(logits, test_labels), logits

  def student_report(fit, module, teacher_test_logits, batch_size):
    del batch_size
    return phase_report(fit.test_outputs, test_labels, teacher_test_logits,
                        config.dataset.omit_classes)

  # The teacher trains on its own recipe: the students' mixing is theirs alone.
  teacher_task = (dataclasses.replace(task, mixup=0.0, cutmix=0.0)
                  if task.mixup or task.cutmix else None)
  return Prepared(task, train_data, transfer_set(config, train_data, num_classes),
                  test_data, num_classes, build, evaluate_teacher, student_report, mesh=mesh,
                  teacher_task=teacher_task)


def phase_report(logits, labels, teacher_test_logits, omitted_classes=()) -> dict:
  """A student's classification metrics from its final test logits (docs/results.md)."""
  report = metrics_lib.classification_report(logits, labels, teacher_test_logits)
  if omitted_classes:
    report["omitted_classes"] = metrics_lib.bias_corrected(logits, labels, omitted_classes)
    report["per_class_accuracy"] = metrics_lib.per_class_accuracy(logits, labels,
                                                                  logits.shape[-1])
  return report
