"""Datasets for kd_jax, offline-first, as NumPy arrays held in host memory.

    >>> from kd_jax import data
    >>> train = data.load_split("fashion_mnist", "train")
    >>> train.images.shape, train.images.dtype, train.labels.dtype, train.source
    ((60000, 28, 28, 1), dtype('uint8'), dtype('int32'), 'tfds')

Small datasets fit on the accelerator: the training loop puts the whole split
on device and batches and augments there (`kd_jax.data.augment`).

Environment variables (read at each call; the in-process cache is keyed by
their resolved values):

- `KD_JAX_DATA_DIR`: TFDS data directory (else `TFDS_DATA_DIR`, else
  `~/tensorflow_datasets`); the `data_dir` argument overrides both.
- `KD_JAX_FASHION_MNIST_DIR`: directory of the Fashion-MNIST IDX files (default
  `/usr/share/datasets/fashion-mnist`, from the Debian package
  `dataset-fashion-mnist`).
- `KD_JAX_DATA_SOURCE`: `auto` (default: a prepared TFDS dataset, preparing it
  offline from the IDX files when TensorFlow is importable, else the IDX files),
  `tfds` (TFDS only) or `idx` (NumPy IDX reader only; skips TFDS entirely).

Importing this package imports neither TensorFlow nor TFDS.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from kd_jax.data import augment
from kd_jax.data import fashion_mnist
from kd_jax.data.core import DatasetNotFoundError
from kd_jax.data.core import Split

# name -> module with `load(split, *, data_dir, local_dir, source)`,
# `resolve_local_dir()`, `NUM_CLASSES` and `CLASS_NAMES`.
_DATASETS = {"fashion_mnist": fashion_mnist}
NAMES = tuple(_DATASETS)
SPLITS = ("train", "test")
SOURCES = ("auto", "tfds", "idx")

__all__ = ["NAMES", "SPLITS", "SOURCES", "DatasetNotFoundError", "Split",
           "augment", "load_split", "default_data_dir", "normalization"]


def normalization(name: str) -> tuple[float, float]:
  """The training split's pixel mean and standard deviation on the [0, 1] scale."""
  from kd_jax.data import augment
  means = {"fashion_mnist": (augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD)}
  if name not in means:
    raise ValueError(f"unknown dataset name={name!r}; valid names: {NAMES}")
  return means[name]


def default_data_dir() -> str:
  """`$KD_JAX_DATA_DIR`, else `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.path.expanduser(
      os.environ.get("KD_JAX_DATA_DIR")
      or os.environ.get("TFDS_DATA_DIR")
      or "~/tensorflow_datasets")


def load_split(name: str, split: str, *,
               data_dir: str | os.PathLike | None = None) -> Split:
  """Loads a whole split of a dataset into host memory (cached per process).

  Args:
    name: dataset name, one of `NAMES`.
    split: "train" or "test".
    data_dir: TFDS data directory; default `default_data_dir()`.

  Returns:
    A `Split` with images uint8 [N, H, W, C] (NHWC), labels int32 [N] and
    `source` "tfds" or "idx". Fashion-MNIST: 60000 / 10000 images of 28x28x1,
    10 classes. Repeated calls with the same arguments and environment return
    the same object; its arrays are read-only, so copy before modifying.

  Raises:
    ValueError: unknown `name`, `split` or `KD_JAX_DATA_SOURCE`.
    DatasetNotFoundError: the dataset is not available offline; the message
      names the Debian package to install.
  """
  if name not in NAMES:
    raise ValueError(f"unknown dataset name={name!r}; valid names: {NAMES}")
  if split not in SPLITS:
    raise ValueError(f"unknown split={split!r} for dataset {name!r}; valid "
                     f"splits: {SPLITS}")
  source = os.environ.get("KD_JAX_DATA_SOURCE", "auto").strip().lower() or "auto"
  if source not in SOURCES:
    raise ValueError(f"KD_JAX_DATA_SOURCE={source!r}; valid values: {SOURCES}")
  data_dir = (os.path.expanduser(os.fspath(data_dir)) if data_dir
              else default_data_dir())
  local_dir = _DATASETS[name].resolve_local_dir()
  return _load_cached(name, split, data_dir, local_dir, source)


@functools.lru_cache(maxsize=8)
def _load_cached(name: str, split: str, data_dir: str, local_dir: str,
                 source: str) -> Split:
  dataset = _DATASETS[name]
  images, labels, used = dataset.load(
      split, data_dir=data_dir, local_dir=local_dir, source=source)
  # The cache hands out the same arrays to every caller: make them immutable.
  images, labels = np.ascontiguousarray(images), np.ascontiguousarray(labels)
  images.flags.writeable = False
  labels.flags.writeable = False
  return Split(images=images, labels=labels,
               num_classes=dataset.NUM_CLASSES, source=used,
               class_names=dataset.CLASS_NAMES)
