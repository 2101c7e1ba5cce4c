"""Image generation by diffusion as a task family of the engine (DESIGN §8, issue 24).

The data are Fashion-MNIST's images scaled to [−1, 1] (``dataset.name =
"fashion_mnist_diffusion"``), held on the devices as uint8 with their labels. A training
batch draws, per row, a time t ~ U(0, 1) and noise eps ~ N(0, I) and gives the denoiser
``(z_t, t, labels)`` with the target ``dataset.parameterization`` names: v = alpha·eps −
sigma·x (the default) or x (:mod:`kd_jax.objectives.diffusion`); the ``none`` method's
loss on a real-valued target is the squared error (kd_jax/methods/logit.py), unweighted
in the target's own space. With ``dataset.conditional`` the labels are the classes,
each replaced by the null label with probability ``dataset.label_dropout`` (so that one
network learns both halves of classifier-free guidance); without it the model takes
no labels (None).

Evaluation during training is the denoising loss on the test images at a fixed (t, eps)
per image (the headline ``test_loss``, lower is better), so its curve is comparable
step to step. The report of a trained model adds, per step count n of
``dataset.sample_steps``, its DDIM samples from ``dataset.samples`` fixed noise draws
(:mod:`kd_jax.tasks.diffusion_sampler`): ``results[phase]["steps_<n>"]`` with
``ms_per_image`` (batch 64); ``fd``, the Fréchet distance of the samples' features to
all the test images' in the cached classifier (:mod:`kd_jax.tasks.diffusion_quality`);
``precision`` and ``recall`` (k = 3) against as many test images as samples; and
``coverage_kl``, KL(the classifier's label histogram of the samples ‖ uniform)
(:mod:`kd_jax.tasks.image_quality`); for students also ``mse_to_teacher``, against
the teacher's samples from the same noise at its most steps. Students are sampled at
``dataset.student_sample_steps`` (empty: the teacher's ``sample_steps``), so a table of
1–4-step students need not run them for 256 steps. The teacher's report is computed once
per teacher and sample settings and cached (:mod:`kd_jax.tasks.diffusion_reference`).
The sample settings (``samples``, ``sample_steps``, ``student_sample_steps``,
``guidance``, ``classifier_examples``) change no trained weights and are not part of the teacher's cache key
(:data:`STUDENT_ONLY_FIELDS`). Each phase writes its samples to ``<phase dir>/samples/
steps_<n>.npz`` (uint8 ``images`` ``[N, 28, 28, 1]``, ``labels`` when conditional) and
``steps_<n>.png`` (a grid of the first 64): the teacher's in ``<workdir>/teacher``, the
student's in ``<workdir>/student``. The distillation methods are kd_jax/methods/
progressive.py, consistency.py, one_step_kd.py and adversarial.py.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import data as data_lib
from kd_jax import models
from kd_jax.config import checks
from kd_jax.core import files, parallel
from kd_jax.core.errors import ConfigError
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.objectives import diffusion
from kd_jax.tasks import (classification, diffusion_quality, diffusion_reference,
                          diffusion_sampler, image_quality)
from kd_jax.tasks.base import Prepared

NAME = "diffusion"
DATASETS = ("fashion_mnist_diffusion",)
KIND = "image-generation"
LANGUAGE = False
STUDENT_INITS = ("scratch", "teacher")     # "teacher": a copy of the trained teacher
SOURCE = {"fashion_mnist_diffusion": "fashion_mnist"}     # the images each dataset generates
TIMING_BATCH = 64       # ms_per_image is measured on batches of this many images
EVAL_KEY, SAMPLE_KEY = 0, 1      # folded into dataset.seed: the fixed test noise, the samples'
PR_NEIGHBOURS = 3       # k of precision/recall's k-NN manifolds (Kynkäänniemi et al.'s)
# How the models are sampled and reported, not how they train: outside the teacher's key.
STUDENT_ONLY_FIELDS = ("samples", "sample_steps", "student_sample_steps", "guidance",
                       "classifier_examples")


def _check_steps(field: str, steps, *, allow_empty: bool) -> None:
  if (not isinstance(steps, (tuple, list)) or (not steps and not allow_empty)
      or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in steps)):
    empty = " (or empty: the teacher's)" if allow_empty else ""
    raise ConfigError(field, f"{field} must be a non-empty tuple of step counts >= 1{empty}, "
                      f"got {steps!r}")


def check(config) -> None:
  """The diffusion dataset block's fields and the models (denoisers); raises ``ConfigError``."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples", "seed"))
  if "classifier_examples" in d:        # (absent from the records of older runs)
    checks.ints_at_least("dataset", d, ("classifier_examples",))
  checks.ints_at_least("dataset", d, ("samples",), 1)
  checks.choice("dataset.parameterization", d.parameterization, diffusion.PREDICTIONS)
  checks.in_unit_interval("dataset.label_dropout", d.label_dropout)
  _check_steps("dataset.sample_steps", d.sample_steps, allow_empty=False)
  _check_steps("dataset.student_sample_steps", d.get("student_sample_steps", ()),
               allow_empty=True)
  checks.nonnegative("dataset.guidance", d.guidance)
  if d.guidance and not d.conditional:
    raise ConfigError("dataset.guidance", "dataset.guidance > 0 needs a class-conditional "
                      "model: set dataset.conditional=True")
  for role in ("teacher", "student"):
    checks.choice(f"{role}.model", config[role].model, models.DENOISER_MODELS)


@device_split
class DeviceData(DeviceSplit):
  """A split on the devices (replicated): uint8 images ``[N, 28, 28, 1]``, int32 labels."""
  images: jax.Array
  labels: jax.Array


def to_unit_range(images):
  """uint8 pixels → float32 in [−1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images):
  """Images in [−1, 1] → uint8 pixels (rounded half to even, clipped); traceable, so the
  exported one-step generator (kd_jax/export/student.py) ends with it too."""
  return jnp.clip(jnp.round((jnp.asarray(images) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


@dataclasses.dataclass(frozen=True)
class Denoising:
  """The batch side of the task: noised images in, the parameterisation's target out."""
  parameterization: str = "v"
  num_classes: int | None = None    # class-conditional with this many classes; None: not
  label_dropout: float = 0.1
  dtype: Any = jnp.float32
  headline: ClassVar[str] = "test_loss"
  higher_is_better: ClassVar[bool] = False
  # Every step draws new (t, noise): the inputs are never the same twice, so a teacher's
  # outputs on them cannot be cached (the teacher-output cache reads this as "augments").
  augments: ClassVar[bool] = True

  def input_identity(self) -> dict:
    return {"parameterization": self.parameterization, "num_classes": self.num_classes,
            "dtype": jnp.dtype(self.dtype).name}

  def noised(self, images, labels, key, *, dropout: bool):
    """``((z_t, t, labels), target)`` for uint8 ``images`` at a time and noise drawn from ``key``."""
    x = to_unit_range(images)
    key_t, key_eps, key_drop = jax.random.split(key, 3)
    t = jax.random.uniform(key_t, (x.shape[0],))
    eps = jax.random.normal(key_eps, x.shape)
    z = diffusion.noise(x, eps, t)
    target = diffusion.v_target(x, eps, t) if self.parameterization == "v" else x
    labels = self.model_labels(labels, key_drop) if dropout else self.model_labels(labels)
    return (z.astype(self.dtype), t, labels), target

  def model_labels(self, labels, key=None):
    """What the model is given: None when unconditional; else the labels, each replaced
    by the null label with probability ``label_dropout`` when a ``key`` is given."""
    if self.num_classes is None:
      return None
    if key is None or not self.label_dropout:
      return labels
    null = jax.random.bernoulli(key, self.label_dropout, labels.shape)
    return jnp.where(null, self.num_classes, labels)

  def train_batch(self, data: DeviceData, index, mask, rng, policy=None, teacher=None):
    """``((z_t, t, labels), target, mask [B], {})`` of a training batch (inside the step)."""
    del policy, teacher
    inputs, target = self.noised(data.images[index], data.labels[index], rng, dropout=True)
    return inputs, target, mask, {}

  def train_metrics(self, prediction, target, mask) -> dict:
    del prediction, target, mask      # the loss is the metric: nothing else to log
    return {}

  def evaluator(self, graphdef, data: DeviceData, batch_size: int, mesh, seed: int = 0):
    """``evaluate(variables) -> ({"test_loss": l}, None)``: the mean squared error of the
    target on every test image, each at its own fixed (t, eps) (the same every call)."""
    del mesh
    size = data.size
    base = jax.random.fold_in(jax.random.key(seed), EVAL_KEY)

    @jax.jit
    def batch_loss(variables, images, labels, index, valid):
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
      # One key per image: its (t, eps) do not depend on the batch it falls in.
      inputs, target = jax.vmap(
          lambda im, lab, k: jax.tree.map(lambda a: a[0], self.noised(
              im[None], lab[None], k, dropout=False)))(images, labels, keys)
      model = nnx.merge(graphdef, *variables)
      prediction = model(*inputs)
      squared = jnp.square(prediction - target).reshape(prediction.shape[0], -1).mean(axis=1)
      return jnp.sum(jnp.where(valid, squared, 0.0))

    def evaluate(variables):
      total = 0.0
      for start in range(0, size, batch_size):
        index = np.arange(start, start + batch_size) % size     # padded: one compilation
        valid = np.arange(start, start + batch_size) < size
        total += float(batch_loss(variables, data.images[index], data.labels[index],
                                  jnp.asarray(index), jnp.asarray(valid)))
      return {"test_loss": total / size}, None

    return evaluate


def _load(config, mesh):
  d = config.dataset
  splits = {}
  for split, limit in (("train", d.train_examples), ("test", d.test_examples)):
    s = data_lib.load_split(SOURCE[d.name], split)
    images, labels = s.images, s.labels.astype(np.int32)
    if limit:
      images, labels = images[:limit], labels[:limit]
    splits[split] = DeviceData(*parallel.put_replicated((images, labels), mesh))
  return splits["train"], splits["test"], s.num_classes, s.images.shape[1:]


class SampleReport:
  """A trained denoiser's samples at each of its step counts (the teacher's
  ``dataset.sample_steps``, the students' ``student_sample_steps``) from fixed noise, and
  their quality in the cached feature classifier's space (once :meth:`use_classifier`)."""

  def __init__(self, config, num_classes: int, input_shape):
    d = config.dataset
    key = jax.random.fold_in(jax.random.key(d.seed), SAMPLE_KEY)
    self.noise = jax.random.normal(key, (d.samples, *input_shape))
    # Conditional samples cycle through the classes (the same labels for every model).
    self.labels = (jnp.arange(d.samples, dtype=jnp.int32) % num_classes
                   if d.conditional else None)
    self.seed, self.teacher_steps = int(d.seed), tuple(d.sample_steps)
    self.classifier_examples = int(d.get("classifier_examples", 0))    # FD's ruler
    self.student_steps = tuple(d.get("student_sample_steps", ())) or self.teacher_steps
    self.guidance = float(d.guidance)
    self.parameterization = d.parameterization
    self.num_classes = num_classes
    self.classifier = self.real_features = None
    self.teacher_dir = None        # where the teacher's samples go (use_run_dirs sets it)
    self.cache_root = None         # where the teacher's report is cached (use_run_dirs)

  def settings(self, dataset: str, test_examples: int, dtype) -> dict:
    """What the teacher's report depends on besides the teacher's weights and the code:
    the samples' noise and steps, the reference images, the precision the teacher runs
    in, and the kind of device (the report holds its timings)."""
    return {"noise": [int(len(self.noise)), *map(int, self.noise.shape[1:])],
            "seed": self.seed, "steps": list(self.teacher_steps),
            "labels": self.labels is not None, "guidance": self.guidance,
            "parameterization": self.parameterization, "dataset": dataset,
            "test_examples": test_examples, "dtype": jnp.dtype(dtype).name,
            "classifier_examples": self.classifier_examples,
            "device": f"{jax.default_backend()}:{jax.devices()[0].device_kind}"}

  def use_classifier(self, classifier, test_images: np.ndarray) -> None:
    """Measures quality with ``classifier`` against the features of ``test_images`` (uint8)."""
    self.classifier = classifier
    self.real_features, _ = classifier.features_and_labels(to_unit_range(test_images))
    # Precision and recall compare sets of one size (the samples' and as many test images).
    count = min(len(self.noise), len(self.real_features))
    self.recall_real = self.real_features[:count]
    self.real_radii = image_quality.knn_radii(self.recall_real, PR_NEIGHBOURS)

  def quality(self, images: np.ndarray) -> dict:
    """FD to the test images, precision and recall, and class coverage of ``images``."""
    if self.classifier is None:
      return {}
    # The images as saved (uint8 pixels), as the test images are.
    features, labels = self.classifier.features_and_labels(to_unit_range(to_uint8(images)))
    return {"fd": image_quality.frechet_distance(features, self.real_features),
            **image_quality.precision_recall(self.recall_real, features, PR_NEIGHBOURS,
                                             real_radii=self.real_radii),
            "coverage_kl": image_quality.coverage_kl(labels, self.num_classes)}

  def images(self, module, steps: int) -> tuple[np.ndarray, float]:
    """``(images [N, H, W, C] in [−1, 1], ms per image)``: batches of TIMING_BATCH, timed
    after the first (which compiles)."""
    graphdef, state = nnx.split(module)

    def batch_from(start):
      """The samples of the batch at ``start`` and the seconds it took."""
      began = time.perf_counter()
      batch = jax.block_until_ready(diffusion_sampler.sample(
          graphdef, state, self.noise[start:start + TIMING_BATCH], steps=steps,
          labels=None if self.labels is None else self.labels[start:start + TIMING_BATCH],
          guidance=self.guidance, parameterization=self.parameterization))
      return np.asarray(batch), time.perf_counter() - began

    out, seconds, timed = [], 0.0, 0
    for start in range(0, len(self.noise), TIMING_BATCH):
      batch, took = batch_from(start)
      if start and len(batch) == TIMING_BATCH:
        seconds, timed = seconds + took, timed + len(batch)
      out.append(batch)
    if not timed:         # one batch only: time it again, compiled
      batch, seconds = batch_from(0)
      timed = len(batch)
    return np.concatenate(out), 1000.0 * seconds / timed

  def report(self, module, steps_list, reference: np.ndarray | None = None, *,
             directory: str | None = None) -> tuple[dict, dict]:
    """``({"steps_<n>": {metrics}}, {n: images})`` for every step count of ``steps_list``;
    ``mse_to_teacher`` is against ``reference``, when given; the samples go to
    ``directory``/samples/."""
    result, images_by_steps = {}, {}
    for steps in steps_list:
      images, ms = self.images(module, steps)
      entry = {"ms_per_image": ms, **self.quality(images)}
      if reference is not None:
        entry["mse_to_teacher"] = float(np.mean(np.square(images - reference)))
      result[f"steps_{steps}"], images_by_steps[steps] = entry, images
      if directory and jax.process_index() == 0:
        self.write(os.path.join(directory, "samples"), f"steps_{steps}", images)
    return result, images_by_steps

  def write(self, directory: str, name: str, images: np.ndarray) -> None:
    """``name.npz`` (``images`` uint8 ``[N, H, W, C]``, ``labels`` when conditional) and
    ``name.png``, a grid of the first 64, in ``directory`` (DESIGN §8)."""
    import matplotlib  # noqa: PLC0415  (slow to import; only reports need it)
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415
    os.makedirs(directory, exist_ok=True)
    pixels = np.asarray(to_uint8(images))
    arrays = {"images": pixels}
    if self.labels is not None:
      arrays["labels"] = np.asarray(self.labels)
    with files.atomic_open(os.path.join(directory, f"{name}.npz"), "wb") as f:
      np.savez(f, **arrays)
    side = int(np.ceil(np.sqrt(min(64, len(pixels)))))
    grid = np.zeros((side * pixels.shape[1], side * pixels.shape[2]), np.uint8)
    for i, image in enumerate(pixels[:side * side]):
      r, c = divmod(i, side)
      grid[r * pixels.shape[1]:(r + 1) * pixels.shape[1],
           c * pixels.shape[2]:(c + 1) * pixels.shape[2]] = image[..., 0]
    plt.imsave(os.path.join(directory, f"{name}.png"), grid, cmap="gray", vmin=0, vmax=255)


def prepare(config, mesh, dtype) -> Prepared:
  """The diffusion experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`)."""
  d = config.dataset
  train_data, test_data, num_classes, input_shape = _load(config, mesh)
  task = Denoising(d.parameterization, num_classes if d.conditional else None,
                   float(d.label_dropout), dtype)
  samples = SampleReport(config, num_classes, input_shape)

  def use_run_dirs(workdir, cache_root):
    # One ruler for every run: the classifier of the whole training split, whatever
    # subset this run's denoisers train on (smoke runs: of the first classifier_examples).
    classifier = diffusion_quality.obtain(cache_root, mesh,
                                          train_examples=int(d.get("classifier_examples", 0)))
    samples.use_classifier(classifier, np.asarray(test_data.images))
    samples.teacher_dir = os.path.join(workdir, "teacher")
    samples.cache_root = cache_root

  def build(spec, seed, role="student"):
    return classification.build_model(spec, num_classes=task.num_classes,
                                      input_shape=input_shape, seed=seed, dtype=dtype, role=role)

  def evaluate(graphdef, variables, batch_size):
    return task.evaluator(graphdef, test_data, batch_size, mesh, seed=d.seed)(variables)[0]

  def evaluate_teacher(graphdef, variables, batch_size):
    def compute(directory):
      # The students' reference: the teacher's samples at its largest step count.
      report, images = samples.report(nnx.merge(graphdef, *variables), samples.teacher_steps,
                                      directory=directory)
      return ({**evaluate(graphdef, variables, batch_size), **report},
              images[max(samples.teacher_steps)])

    if samples.cache_root is None:      # (no run directories: nothing to cache in)
      return compute(samples.teacher_dir)
    key = diffusion_reference.key(variables, samples.settings(d.name, test_data.size, dtype))
    return diffusion_reference.obtain(samples.cache_root, key, compute, samples.teacher_dir)

  def student_report(fit, module, reference, batch_size):
    del batch_size
    return {**fit.final, **samples.report(module, samples.student_steps, reference,
                                          directory=fit.workdir)[0]}

  return Prepared(task, train_data, train_data, test_data, task.num_classes or 0, build,
                  evaluate_teacher, student_report, mesh=mesh, use_run_dirs=use_run_dirs)
