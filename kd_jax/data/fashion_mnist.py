"""Fashion-MNIST (Xiao et al. 2017, arXiv:1708.07747), offline.

Sources, tried in this order by `load` with `source="auto"`:

1. A prepared TFDS `fashion_mnist` dataset in `data_dir`, read back without
   TensorFlow through `builder.as_data_source()` (needs `array_record` and
   pillow; a dataset prepared as TFRecords is read with TensorFlow when it is
   importable). The decoded arrays are kept in `kd_jax_decoded/` inside the
   dataset's directory, keyed by the name, size and modification time of its
   files, so only the first process decodes the PNGs.
2. When it is not prepared and TensorFlow and TFDS are importable, it is prepared
   there (once) from the local IDX files, never from the
   internet: `_local_builder()` subclasses TFDS's own `FashionMNIST` builder and
   serves the URLs its `_split_generators` asks for from `idx_dir`. kd_jax
   prepares it with `disable_shuffling`, so records stay in IDX file order and
   both sources give identical arrays. (A copy prepared by plain TFDS online is
   stored in TFDS's hashed order: same examples, another order.)
3. The IDX files read with NumPy (`kd_jax.data.idx`).
4. Otherwise `DatasetNotFoundError`, naming the Debian package to install.

A TFDS failure (broken install, partial copy, concurrent preparation) is logged
as a warning and the IDX files are used; TFDS's traceback never reaches users.
TensorFlow and TFDS are imported only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import importlib.util
import json
import inspect
import os
import pathlib
import tempfile
import urllib.parse

from absl import logging
import numpy as np

from kd_jax.core import files
from kd_jax.data import core
from kd_jax.data import idx

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEFAULT_IDX_DIR = "/usr/share/datasets/fashion-mnist"
TFDS_NAME = "fashion_mnist"
DECODED_DIR = "kd_jax_decoded"   # decoded arrays, inside the TFDS dataset's directory
NUM_CLASSES = 10
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
               "Shirt", "Sneaker", "Bag", "Ankle boot")
# split -> (images file, labels file, number of examples), names as published.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}


class _TfdsUnavailable(Exception):
  """The TFDS route cannot be used here (an expected, non-error condition)."""


def not_found_message(idx_dir: str, data_dir: str | None = None) -> str:
  looked = f"Looked for IDX files in {idx_dir!r}"
  if data_dir is not None:
    looked += f" and for a prepared TFDS dataset in {data_dir!r}"
  return (
      f"Fashion-MNIST not found: install the Debian package `{DEBIAN_PACKAGE}`"
      f" (sudo apt-get install {DEBIAN_PACKAGE}) or set "
      "KD_JAX_FASHION_MNIST_DIR to a directory holding "
      f"{', '.join(f for s in IDX_FILES.values() for f in s[:2])} (.gz or "
      f"plain). {looked}."
  )


def _idx_path(idx_dir: str, filename: str) -> str | None:
  """The gzip or plain version of `filename` in `idx_dir`, if either exists."""
  for candidate in (filename + ".gz", filename):
    path = os.path.join(idx_dir, candidate)
    if os.path.isfile(path):
      return path
  return None


def has_idx_files(idx_dir: str) -> bool:
  return all(_idx_path(idx_dir, f) for s in IDX_FILES.values() for f in s[:2])


def load_idx(split: str, idx_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from IDX files: images uint8 [N,28,28,1], labels int32 [N]."""
  images_file, labels_file, num_examples = IDX_FILES[split]
  paths = [_idx_path(idx_dir, f) for f in (images_file, labels_file)]
  if None in paths:
    raise core.DatasetNotFoundError(not_found_message(idx_dir))
  images, labels = idx.read_idx(paths[0]), idx.read_idx(paths[1])
  if (images.shape != (num_examples, 28, 28) or images.dtype != np.uint8
      or labels.shape != (num_examples,) or labels.max() >= NUM_CLASSES):
    raise ValueError(
        f"corrupt Fashion-MNIST {split} files in {idx_dir!r}: images "
        f"{images.shape} {images.dtype}, labels {labels.shape} (expected "
        f"({num_examples}, 28, 28) uint8 and {num_examples} labels < "
        f"{NUM_CLASSES}); reinstall `{DEBIAN_PACKAGE}`"
    )
  return images[..., None], labels.astype(np.int32)


def _importable(module: str) -> bool:
  return importlib.util.find_spec(module) is not None


class _LocalDownloads:
  """Stands in for TFDS's DownloadManager: serves URLs from local IDX files.

  TFDS's MNIST builders call only `download_and_extract({key: url})`; the
  file name at the end of each URL is looked up in `idx_dir`, and TFDS's own
  `extract` un-gzips it into the (temporary) download directory.
  """

  def __init__(self, dl_manager, idx_dir: str):
    self._dl_manager = dl_manager
    self._idx_dir = idx_dir

  def download_and_extract(self, urls: dict[str, str]):
    local = {}
    for key, url in urls.items():
      filename = os.path.basename(urllib.parse.urlparse(url).path)
      local[key] = _idx_path(self._idx_dir, filename.removesuffix(".gz"))
    return self._dl_manager.extract(local)


@functools.cache
def _local_builder():
  """TFDS's FashionMNIST builder, fed from local files in IDX order."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  class LocalFashionMNIST(mnist.FashionMNIST, skip_registration=True):
    name = TFDS_NAME  # Same on-disk name/version: plain `tfds.load` reads it.
    # TFDS's `code_path` (used to find checksum files) needs the undeclared
    # dependency importlib_resources on Python >= 3.9 (tensorflow/datasets
    # #11212); the file of TFDS's own builder is the right answer anyway.
    code_path = epath.Path(inspect.getfile(mnist.FashionMNIST))

    def __init__(self, *, idx_dir: str, **kwargs):
      self._idx_dir = idx_dir
      super().__init__(**kwargs)

    def _info(self):
      info = super()._info()
      # Keep IDX file order so the TFDS and IDX sources give identical arrays.
      info.as_proto.disable_shuffling = True
      return info

    def _split_generators(self, dl_manager):
      return super()._split_generators(_LocalDownloads(dl_manager, self._idx_dir))

    # TFDS prints "Downloading and preparing dataset ..." to stdout, which is
    # wrong here (nothing is downloaded); say what happens instead, once, in the log.
    def _log_download_bytes(self):
      logging.info("Preparing TFDS %s in %s from the IDX files in %s (no download).",
                   TFDS_NAME, self.data_dir, self._idx_dir)

    def _log_download_done(self):
      logging.info("TFDS %s prepared in %s.", TFDS_NAME, self.data_dir)

  return LocalFashionMNIST


def prepare_tfds(data_dir: str, idx_dir: str) -> pathlib.Path:
  """Prepares TFDS `fashion_mnist` in `data_dir` from IDX files in `idx_dir`.

  Offline: no URL is fetched and GCS is not tried. Needs TensorFlow and TFDS.
  Writes ArrayRecord files so reading back needs no TensorFlow. Returns the
  dataset directory.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if not has_idx_files(idx_dir):
    raise core.DatasetNotFoundError(not_found_message(idx_dir, data_dir))
  builder = _local_builder()(idx_dir=idx_dir, data_dir=data_dir)
  logging.info("Preparing TFDS %s in %s from %s (one-off).",
               TFDS_NAME, data_dir, idx_dir)
  # Parallel runs (sweeps, pytest-xdist) would otherwise all prepare at once
  # and all but one fail; after the lock, TFDS reuses the finished copy.
  with _exclusive_lock(os.path.join(data_dir, f".{TFDS_NAME}.kd_jax.lock")):
    # The un-gzipped copies are only needed while preparing.
    with tempfile.TemporaryDirectory(prefix="kd_jax_fmnist_") as download_dir:
      builder.download_and_prepare(
          download_dir=download_dir,
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(try_download_gcs=False),
      )
  return pathlib.Path(builder.data_dir)


@contextlib.contextmanager
def _exclusive_lock(path: str):
  """An inter-process lock (POSIX flock); a no-op where fcntl is missing."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:  # Windows.
    yield
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _decoded_cache(builder, split: str) -> tuple[str, str]:
  """``(path, key)`` of the decoded arrays of ``split``, next to the TFDS files.

  The key hashes the name, size and modification time of every file of the
  split and of ``dataset_info.json``: re-preparing the dataset changes it.
  """
  data_dir = os.fspath(builder.data_dir)
  files = sorted(glob.glob(os.path.join(data_dir, f"{TFDS_NAME}-{split}.*")))
  files.append(os.path.join(data_dir, "dataset_info.json"))
  stats = [(os.path.basename(f), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
  key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]
  return os.path.join(data_dir, DECODED_DIR, f"{split}-{key}.npz"), key


def _decode_array_records(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Every record of ``split``, its PNG images decoded.

  The decoded arrays are kept next to the TFDS files (:func:`_decoded_cache`), so
  each process after the first reads them back instead of decoding again. A
  read-only data directory just skips the cache.
  """
  path, _ = _decoded_cache(builder, split)
  try:
    with np.load(path, allow_pickle=False) as f:
      return f["images"], f["labels"]
  except (OSError, KeyError, ValueError):
    pass    # absent or unreadable: decode
  with _absl_level(logging.ERROR):  # TFDS warns that OpenCV is missing; PIL decodes fine
    source = builder.as_data_source(split=split)
    records = source.__getitems__(range(len(source)))
  images = np.stack([r["image"] for r in records]).astype(np.uint8)
  labels = np.array([r["label"] for r in records]).astype(np.int32)
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for stale in glob.glob(os.path.join(os.path.dirname(path), f"{split}-*.npz")):
      os.remove(stale)
    with files.atomic_open(path, "wb") as f:    # readers never see a half-written file
      np.savez(f, images=images, labels=labels)
  except OSError as e:
    logging.info("Not caching decoded %s %s arrays in %s: %s", TFDS_NAME, split, path, e)
  return images, labels


@contextlib.contextmanager
def _absl_level(level: int):
  """Shows only absl logs at ``level`` or above for the duration (quiets third-party warnings).

  absl's verbosity grows with detail (ERROR = -2 < WARNING = -1 < INFO = 0), so
  the quieter of the two settings is the smaller.
  """
  previous = logging.get_verbosity()
  logging.set_verbosity(min(level, previous))
  try:
    yield
  finally:
    logging.set_verbosity(previous)


def _read_tfds(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  from tensorflow_datasets.core import file_adapters  # pylint: disable=g-import-not-at-top

  if builder.info.file_format == file_adapters.FileFormat.ARRAY_RECORD:
    images, labels = _decode_array_records(builder, split)
  elif _importable("tensorflow"):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    images, labels = arrays["image"], arrays["label"]
  else:
    raise _TfdsUnavailable(
        f"the prepared copy in {builder.data_dir} is "
        f"{builder.info.file_format.value}, which needs TensorFlow to read")
  return images.astype(np.uint8), labels.astype(np.int32)


def load_tfds(split: str, data_dir: str, idx_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split through TFDS, preparing it offline first if possible.

  Raises:
    _TfdsUnavailable: TFDS is not installed, or the dataset is not prepared and
      cannot be (no TensorFlow or no IDX files).
  """
  if not _importable("tensorflow_datasets"):
    raise _TfdsUnavailable("tensorflow_datasets is not installed")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(TFDS_NAME, data_dir=data_dir, try_gcs=False)
  # Checking the info file first avoids TFDS's warning about a missing folder.
  prepared = ((builder.data_path / "dataset_info.json").exists()
              and builder.is_prepared())
  if not prepared:
    if not _importable("tensorflow"):
      raise _TfdsUnavailable(
          f"{TFDS_NAME} is not prepared in {data_dir} and preparing it needs "
          "TensorFlow")
    if not has_idx_files(idx_dir):
      raise _TfdsUnavailable(
          f"{TFDS_NAME} is not prepared in {data_dir} and there are no IDX "
          f"files in {idx_dir} to prepare it from")
    prepare_tfds(data_dir, idx_dir)
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir, try_gcs=False)
  return _read_tfds(builder, split)


def resolve_local_dir() -> str:
  """`$KD_JAX_FASHION_MNIST_DIR`, else the Debian package's directory."""
  return os.environ.get("KD_JAX_FASHION_MNIST_DIR") or DEFAULT_IDX_DIR


def load(split: str, *, data_dir: str, local_dir: str,
         source: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
  """Loads one split as (images uint8 [N,28,28,1], labels int32 [N], source).

  Args:
    split: "train" or "test" (validated by the caller).
    data_dir: TFDS data directory.
    local_dir: directory of the IDX files (see `resolve_local_dir()`).
    source: "auto" (TFDS, else IDX), "tfds" or "idx" (only that source).

  Raises:
    DatasetNotFoundError: no source worked; the message says what to install.
  """
  if source in ("auto", "tfds"):
    try:
      return (*load_tfds(split, data_dir, local_dir), "tfds")
    except _TfdsUnavailable as e:
      reason = str(e)
      logging.info("Not using TFDS for Fashion-MNIST: %s.", reason)
    except Exception as e:  # pylint: disable=broad-except
      # TFDS raises many types from deep inside; none should reach users.
      reason = f"TFDS failed: {type(e).__name__}: {e}"
      if source == "auto":
        logging.warning("%s; falling back to the IDX files.", reason)
    if source == "tfds":
      raise core.DatasetNotFoundError(
          f"KD_JAX_DATA_SOURCE=tfds, but {reason}. "
          + not_found_message(local_dir, data_dir)) from None
  if has_idx_files(local_dir):
    return (*load_idx(split, local_dir), "idx")
  raise core.DatasetNotFoundError(not_found_message(local_dir, data_dir))
