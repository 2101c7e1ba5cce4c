"""The feature classifier behind the diffusion task's sample-quality metrics (DESIGN §8).

FD-FMNIST, precision/recall and class coverage (:mod:`kd_jax.tasks.image_quality`) are
computed in the features of one Fashion-MNIST classifier, trained once on the training
images and cached, so that every row of a table is measured by the same ruler: the
strided CNN of experiments/fashion_mnist/kd.py's teacher (about 92% test accuracy after
its six epochs), whose 256-wide hidden layer (``"embedding"``) gives the features. It
trains on the engine like any classifier (kd_jax/tasks/classification.py's task, cross-
entropy) and is cached in ``<cache root>/fd_classifiers/<key>``, the key a digest of
its spec, its training images and the code fingerprint (DESIGN §5.6). Written by one
process (the diffusion task runs single-host).
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import data as data_lib
from kd_jax import engine
from kd_jax import models
from kd_jax.core import fingerprint as source_code
from kd_jax.core import identity as identity_lib
from kd_jax.core import parallel
from kd_jax.objectives import losses
from kd_jax.tasks import classification

DATASET = "fashion_mnist"
SPEC = {"model": "cnn", "kwargs": {"widths": [32, 64], "first_kernel": 5, "first_stride": 2,
                                   "head": "flatten", "hidden": 256}}
FEATURE = "embedding"
INFO_FILE = "classifier.json"
BATCH = 500


def _train_config(epochs: int):
  train = config_lib.base_config().train
  train.epochs, train.batch_size, train.learning_rate = epochs, 128, 2e-3
  train.eval_batch_size = 1000
  return train


def identity(train_examples: int, epochs: int) -> dict:
  """What determines the classifier's weights: its spec, training and images, and the code."""
  return {"spec": SPEC, "train": _train_config(epochs).to_dict(), "dataset": DATASET,
          "train_examples": train_examples, "code": source_code.fingerprint()}


def _cross_entropy(step, student_out, teacher_out, labels, mask):
  del step, teacher_out
  loss = losses.cross_entropy(student_out[0], labels, mask)
  return loss, {"loss": loss}      # (the engine logs the objective's "loss")


class FeatureClassifier:
  """``features(images)`` ``[N, 256]`` and ``labels(images)`` ``[N]`` of images in [−1, 1]."""

  def __init__(self, module: nnx.Module, info: dict):
    self.info = info
    self._graphdef, self._state = nnx.split(module)
    self._mean, self._std = data_lib.normalization(DATASET)

  def _outputs(self, images):
    # The classifier was trained on pixels scaled to [0, 1] and normalised.
    x = ((jnp.asarray(images, jnp.float32) + 1.0) / 2.0 - self._mean) / self._std
    logits, feats = nnx.merge(self._graphdef, self._state)(x, return_features=True)
    return feats[FEATURE], jnp.argmax(logits, -1)

  def features_and_labels(self, images) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64) and predicted classes of ``images`` ``[N, 28, 28, 1]`` in [−1, 1]."""
    run = jax.jit(self._outputs)
    feats, labels = [], []
    for start in range(0, len(images), BATCH):
      f, label = run(images[start:start + BATCH])
      feats.append(np.asarray(f, np.float64))
      labels.append(np.asarray(label))
    return np.concatenate(feats), np.concatenate(labels)


def obtain(cache_root: str, mesh, *, train_examples: int = 0, epochs: int = 6
           ) -> FeatureClassifier:
  """The cached classifier for ``train_examples`` training images (0: all), trained here
  (and cached) the first time."""
  key = identity_lib.digest(identity(train_examples, epochs))
  directory = os.path.join(cache_root, "fd_classifiers", f"cnn-{key}")
  module = models.create(SPEC["model"], num_classes=10, rngs=nnx.Rngs(0), **{
      k: tuple(v) if isinstance(v, list) else v for k, v in SPEC["kwargs"].items()})
  info_path = os.path.join(directory, INFO_FILE)
  if os.path.exists(info_path):
    abstract = nnx.state(module)
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(os.path.join(directory, "variables"), abstract)
    nnx.update(module, restored)
    with open(info_path) as f:
      return FeatureClassifier(module, json.load(f))
  splits = {}
  for split, limit in (("train", train_examples), ("test", 0)):
    s = data_lib.load_split(DATASET, split)
    images, labels = s.images[:limit or None], s.labels[:limit or None].astype(np.int32)
    splits[split] = classification.DeviceData(*parallel.put_replicated((images, labels), mesh))
  mean, std = data_lib.normalization(DATASET)
  task = classification.Classification(mean, std)
  fit = engine.fit(name="fd_classifier", module=module, objective=_cross_entropy,
                   train_config=_train_config(epochs), train_data=splits["train"],
                   test_data=splits["test"], task=task, mesh=mesh,
                   workdir=directory + ".train", seed=0, show_progress=False,
                   identity=identity(train_examples, epochs))
  nnx.update(module, nnx.state(fit.module))
  info = {"spec": SPEC, "test_accuracy": fit.final["test_accuracy"], "key": key,
          "train_examples": train_examples, "epochs": epochs}
  tmp = directory + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(tmp, "variables"), nnx.state(module))
  with open(os.path.join(tmp, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)            # complete or absent: never half-written
  shutil.rmtree(directory + ".train", ignore_errors=True)
  return FeatureClassifier(module, info)
