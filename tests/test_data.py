"""Tests for kd_jax.data: the IDX reader, Fashion-MNIST loading, augmentation."""

import functools
import gzip
import importlib.util
import os
import struct
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import data
from kd_jax.data import augment
from kd_jax.data import fashion_mnist
from kd_jax.data import idx
from tests.conftest import skip_or_fail, skip_unless

HAVE_IDX = fashion_mnist.has_idx_files(fashion_mnist.DEFAULT_IDX_DIR)
requires_idx = skip_unless(
    HAVE_IDX, f"Fashion-MNIST IDX files absent from {fashion_mnist.DEFAULT_IDX_DIR}"
    " (sudo apt-get install dataset-fashion-mnist)")
HAVE_TF_TFDS = all(importlib.util.find_spec(m) is not None
                   for m in ("tensorflow", "tensorflow_datasets"))


# ---------------------------------------------------------------- IDX reader


def _write_idx(path, array, type_code, compress):
  """Writes IDX by the published layout, independently of the reader."""
  header = bytes([0, 0, type_code, array.ndim])
  header += struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
  with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
    f.write(payload)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("array,type_code", [
    (np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4), 0x08),
    (np.array([[-70000, 1], [2, 2**31 - 1]], dtype=np.int32), 0x0C),
    (np.array([1.5, -2.25, 1e300], dtype=np.float64), 0x0E),
    (np.array([-3, 300], dtype=np.int16), 0x0B),
])
def test_read_idx_round_trip(tmp_path, array, type_code, compress):
  path = tmp_path / "x.idx"
  _write_idx(path, array, type_code, compress)
  got = idx.read_idx(path)
  assert got.shape == array.shape
  assert got.dtype == array.dtype  # Native byte order, same kind and size.
  np.testing.assert_array_equal(got, array)
  got[...] = 0  # A writable copy, not a view of the file bytes.


def test_read_idx_rejects_bad_magic(tmp_path):
  path = tmp_path / "bad.idx"
  path.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x05")
  with pytest.raises(ValueError, match="not an IDX file"):
    idx.read_idx(path)
  path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x05")
  with pytest.raises(ValueError, match="not an IDX file"):
    idx.read_idx(path)


def test_read_idx_rejects_wrong_payload_size(tmp_path):
  path = tmp_path / "short.idx"
  path.write_bytes(b"\x00\x00\x08\x02" + struct.pack(">2I", 2, 3) + bytes(5))
  with pytest.raises(ValueError, match="payload has 5 bytes"):
    idx.read_idx(path)


# --------------------------------------------------------- load_split errors


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match="name='mnist'.*fashion_mnist"):
    data.load_split("mnist", "train")


def test_unknown_split_names_field_and_choices():
  with pytest.raises(ValueError, match=r"split='validation'.*'train', 'test'"):
    data.load_split("fashion_mnist", "validation")


def test_unknown_source_env_var(monkeypatch):
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "hub")
  with pytest.raises(ValueError, match="KD_JAX_DATA_SOURCE='hub'.*'idx'"):
    data.load_split("fashion_mnist", "test")


@pytest.mark.parametrize("source", ["auto", "idx", "tfds"])
def test_missing_dataset_names_debian_package(tmp_path, monkeypatch, source):
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("KD_JAX_FASHION_MNIST_DIR", str(empty))
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", source)
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load_split("fashion_mnist", "test", data_dir=tmp_path / "tfds")
  message = str(info.value)
  assert isinstance(info.value, FileNotFoundError)
  assert "install the Debian package `dataset-fashion-mnist`" in message
  assert "sudo apt-get install dataset-fashion-mnist" in message
  assert "KD_JAX_FASHION_MNIST_DIR" in message and str(empty) in message
  assert info.value.__cause__ is None  # No chained TFDS traceback.
  assert not (tmp_path / "tfds" / "fashion_mnist").exists()


# ------------------------------------------------------ Fashion-MNIST arrays


@requires_idx
@pytest.mark.usefixtures("idx_source")  # conftest.py: KD_JAX_DATA_SOURCE=idx
@pytest.mark.parametrize("split,count", [("train", 60_000), ("test", 10_000)])
def test_fashion_mnist_from_idx(split, count):
  ds = data.load_split("fashion_mnist", split)
  assert ds.source == "idx"
  assert ds.images.shape == (count, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (count,) and ds.labels.dtype == np.int32
  assert ds.num_classes == 10 and len(ds.class_names) == 10 and len(ds) == count
  # Fashion-MNIST is exactly balanced: count / 10 examples per class.
  np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10),
                                np.full(10, count // 10))
  assert ds.images.max() == 255 and ds.images.min() == 0
  assert not ds.images.flags.writeable and not ds.labels.flags.writeable
  assert data.load_split("fashion_mnist", split) is ds  # In-process cache.


@requires_idx
@pytest.mark.usefixtures("idx_source")
def test_plain_idx_files_and_env_dir(tmp_path, monkeypatch):
  """Un-gzipped files in KD_JAX_FASHION_MNIST_DIR give the same arrays."""
  for images_file, labels_file, _ in fashion_mnist.IDX_FILES.values():
    for name in (images_file, labels_file):
      with gzip.open(os.path.join(fashion_mnist.DEFAULT_IDX_DIR, name + ".gz")) as f:
        (tmp_path / name).write_bytes(f.read())
  reference = data.load_split("fashion_mnist", "test")
  monkeypatch.setenv("KD_JAX_FASHION_MNIST_DIR", str(tmp_path))
  plain = data.load_split("fashion_mnist", "test")
  assert plain is not reference
  np.testing.assert_array_equal(plain.images, reference.images)
  np.testing.assert_array_equal(plain.labels, reference.labels)


@requires_idx
@pytest.mark.usefixtures("idx_source")
def test_normalize_constants_are_training_set_moments():
  images = data.load_split("fashion_mnist", "train").images
  # Exact moments from the histogram of the 256 pixel values, in float64.
  counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
  values = np.arange(256) / 255.0
  mean = counts @ values / counts.sum()
  std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
  np.testing.assert_allclose([augment.FASHION_MNIST_MEAN, augment.FASHION_MNIST_STD],
                             [mean, std], rtol=1e-12)


@requires_idx
def test_tfds_failure_falls_back_to_idx_with_warning(monkeypatch, caplog):
  def broken(*args):
    raise RuntimeError("corrupt shard")
  monkeypatch.setattr(fashion_mnist, "load_tfds", broken)
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "auto")
  with caplog.at_level("WARNING"):
    ds = data.load_split("fashion_mnist", "test", data_dir="/nonexistent")
  assert ds.source == "idx"
  assert "corrupt shard" in caplog.text and "falling back" in caplog.text
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "tfds")
  with pytest.raises(data.DatasetNotFoundError, match="tfds, but TFDS failed: "
                     "RuntimeError: corrupt shard") as info:
    data.load_split("fashion_mnist", "test", data_dir="/nonexistent")
  assert info.value.__cause__ is None and info.value.__suppress_context__


def _hide_modules_prelude(hidden):
  """Python source making `hidden` top-level packages unimportable."""
  return textwrap.dedent(f"""
      import importlib.machinery, sys
      class _Hide(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, name, path=None, target=None):
          if name.split(".")[0] in {tuple(hidden)!r}:
            return None
          return super().find_spec(name, path, target)
      sys.meta_path[:] = [_Hide if f is importlib.machinery.PathFinder else f
                          for f in sys.meta_path]
      """)


def _run_python(source, **env):
  result = subprocess.run(
      [sys.executable, "-c", source], capture_output=True, text=True,
      timeout=240, env={**os.environ, "JAX_PLATFORMS": "cpu", **env})
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.strip().splitlines()[-1]


def test_import_does_not_import_tensorflow():
  out = _run_python(
      "import sys, kd_jax.data, kd_jax.data.augment\n"
      "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets')"
      " if m in sys.modules))")
  assert out == "[]"


@requires_idx
@pytest.mark.parametrize("hidden", [("tensorflow",),
                                    ("tensorflow", "tensorflow_datasets")])
def test_host_without_tensorflow_uses_idx(tmp_path, hidden):
  """A GPU host without TF (and maybe TFDS) and nothing prepared reads IDX."""
  out = _run_python(
      _hide_modules_prelude(hidden)
      + "from kd_jax import data\n"
      f"ds = data.load_split('fashion_mnist', 'test', data_dir={str(tmp_path)!r})\n"
      "print(ds.source, ds.images.shape, 'tensorflow' in sys.modules)",
      KD_JAX_DATA_SOURCE="auto")
  assert out == "idx (10000, 28, 28, 1) False"
  assert not (tmp_path / "fashion_mnist").exists()


# ------------------------------------------------------------ TFDS vs IDX


def _sorted_rows(images, labels):
  """The examples as a sorted multiset (TFDS may store them in hashed order)."""
  rows = np.concatenate([images.reshape(len(images), -1),
                         labels[:, None].astype(np.uint8)], axis=1)
  return np.sort(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))),
                 axis=0)


@requires_idx
@skip_unless(importlib.util.find_spec("tensorflow_datasets") is not None,
             "tensorflow_datasets not installed")
def test_already_prepared_tfds_matches_idx(monkeypatch):
  """Compares an existing TFDS copy in the default data dir (never prepares)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder("fashion_mnist", data_dir=data.default_data_dir())
  if not (builder.data_path / "dataset_info.json").exists():
    skip_or_fail(f"no prepared TFDS fashion_mnist in {data.default_data_dir()} (make data)")
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "tfds")
  from_tfds = data.load_split("fashion_mnist", "test")
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "idx")
  from_idx = data.load_split("fashion_mnist", "test")
  assert (from_tfds.source, from_idx.source) == ("tfds", "idx")
  if builder.info.disable_shuffling:  # Prepared by kd_jax: IDX order.
    np.testing.assert_array_equal(from_tfds.images, from_idx.images)
    np.testing.assert_array_equal(from_tfds.labels, from_idx.labels)
  else:
    np.testing.assert_array_equal(_sorted_rows(from_tfds.images, from_tfds.labels),
                                  _sorted_rows(from_idx.images, from_idx.labels))


@requires_idx
@skip_unless(importlib.util.find_spec("tensorflow_datasets") is not None,
             "tensorflow_datasets not installed")
def test_decoded_arrays_are_cached_next_to_the_tfds_files(tmp_path, monkeypatch):
  import shutil
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  prepared = tfds.builder("fashion_mnist", data_dir=data.default_data_dir()).data_path
  if not (prepared / "dataset_info.json").exists():
    skip_or_fail(f"no prepared TFDS fashion_mnist in {data.default_data_dir()} (make data)")
  version_dir = tmp_path / "fashion_mnist" / prepared.name
  shutil.copytree(prepared, version_dir,
                  ignore=shutil.ignore_patterns(fashion_mnist.DECODED_DIR))
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "tfds")
  load = lambda: data.load_split("fashion_mnist", "test", data_dir=tmp_path)
  decoded = load()
  cached = list((version_dir / fashion_mnist.DECODED_DIR).glob("test-*.npz"))
  assert len(cached) == 1
  # A second process reads the cache: nothing is decoded (decoding would fail here).
  data._load_cached.cache_clear()
  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again")
  with monkeypatch.context() as patch:
    patch.setattr(tfds.core.DatasetBuilder, "as_data_source", no_decoding)
    again = load()
  assert again.source == "tfds"
  np.testing.assert_array_equal(again.images, decoded.images)
  np.testing.assert_array_equal(again.labels, decoded.labels)
  # Re-preparing changes the source files: the cache is stale, decoded afresh and replaced.
  record = next(version_dir.glob("fashion_mnist-test.array_record*"))
  os.utime(record, ns=(record.stat().st_atime_ns, record.stat().st_mtime_ns + 10**9))
  data._load_cached.cache_clear()
  calls = []
  original = tfds.core.DatasetBuilder.as_data_source
  with monkeypatch.context() as patch:
    patch.setattr(tfds.core.DatasetBuilder, "as_data_source",
                  lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    fresh = load()
  assert calls and fresh.images.shape == decoded.images.shape
  renewed = list((version_dir / fashion_mnist.DECODED_DIR).glob("test-*.npz"))
  assert len(renewed) == 1 and renewed != cached


@pytest.mark.slow  # Preparing TFDS fashion_mnist takes ~25 s on 2 free cores.
@requires_idx
@skip_unless(HAVE_TF_TFDS, "needs TensorFlow and TFDS")
def test_offline_tfds_preparation_matches_idx(tmp_path, monkeypatch):
  data_dir = tmp_path / "tfds"
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "tfds")
  from_tfds = {s: data.load_split("fashion_mnist", s, data_dir=data_dir)
               for s in data.SPLITS}
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "idx")
  for split, ds in from_tfds.items():
    reference = data.load_split("fashion_mnist", split)
    assert ds.source == "tfds"
    np.testing.assert_array_equal(ds.images, reference.images)  # Same order.
    np.testing.assert_array_equal(ds.labels, reference.labels)
  prepared = sorted(p.name for p in (data_dir / "fashion_mnist" / "3.0.1").iterdir())
  assert "fashion_mnist-test.array_record-00000-of-00001" in prepared
  # Reading back needs neither TensorFlow nor the IDX files.
  out = _run_python(
      _hide_modules_prelude(("tensorflow",))
      + "from kd_jax import data\n"
      f"ds = data.load_split('fashion_mnist', 'test', data_dir={str(data_dir)!r})\n"
      "print(ds.source, ds.labels[:5].tolist())",
      KD_JAX_DATA_SOURCE="tfds", KD_JAX_FASHION_MNIST_DIR=str(tmp_path))
  assert out == f"tfds {from_tfds['test'].labels[:5].tolist()}"


# -------------------------------------------------------------- augmentation


def _distinct_images(batch, height, width, channels):
  """uint8 images whose pixels are all distinct and nonzero (pad value is 0)."""
  pixels = np.arange(1, height * width * channels + 1).reshape(height, width, channels)
  assert pixels.max() < 256
  return np.broadcast_to(pixels, (batch, height, width, channels)).astype(np.uint8)


def _crop_offsets(out, images, padding, pad_mode):
  """For each example, the (dy, dx) with out == pad(image)[dy:dy+H, dx:dx+W]."""
  _, height, width, _ = images.shape
  offsets = []
  for image, result in zip(images, np.asarray(out)):
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)),
                    mode=pad_mode)
    matches = [(dy, dx) for dy in range(2 * padding + 1)
               for dx in range(2 * padding + 1)
               if np.array_equal(result, padded[dy:dy + height, dx:dx + width])]
    assert len(matches) == 1, matches
    offsets.append(matches[0])
  return offsets


@pytest.mark.parametrize("pad_mode", ["constant", "edge"])
def test_random_crop_is_a_shifted_slice_of_the_padded_image(pad_mode):
  images = _distinct_images(64, 8, 6, 2)
  padding = 3
  crop = jax.jit(augment.random_crop, static_argnames=("padding", "pad_mode"))
  out = crop(jax.random.key(0), jnp.asarray(images), padding=padding,
             pad_mode=pad_mode)
  assert out.shape == images.shape and out.dtype == jnp.uint8
  offsets = _crop_offsets(out, images, padding, pad_mode)
  # One key, per-example offsets: not all examples move the same way.
  assert len(set(offsets)) > 1
  eager = augment.random_crop(jax.random.key(0), jnp.asarray(images), padding,
                              pad_mode=pad_mode)
  np.testing.assert_array_equal(eager, out)


def test_random_crop_padding_zero_is_identity_and_negative_fails():
  images = jnp.asarray(_distinct_images(4, 5, 5, 1))
  assert augment.random_crop(jax.random.key(1), images, 0) is images
  with pytest.raises(ValueError, match="padding must be >= 0"):
    augment.random_crop(jax.random.key(1), images, -1)


def test_random_flip_is_per_example_mirror_or_identity():
  images = _distinct_images(64, 5, 7, 3)
  out = np.asarray(jax.jit(augment.random_flip)(jax.random.key(2), jnp.asarray(images)))
  flipped = [np.array_equal(o, np.flip(x, axis=1)) for o, x in zip(out, images)]
  kept = [np.array_equal(o, x) for o, x in zip(out, images)]
  assert all(f != k for f, k in zip(flipped, kept))  # Exactly one holds.
  assert any(flipped) and any(kept)


def test_augment_combines_crop_and_flip_and_is_jittable():
  images = _distinct_images(64, 6, 6, 1)
  padding = 2
  run = jax.jit(functools.partial(augment.augment, crop_padding=padding, flip=True))
  out = np.asarray(run(jax.random.key(3), jnp.asarray(images)))
  # Undo the flip where there was one; what remains must be a plain crop.
  padded = np.pad(images[0], ((padding, padding), (padding, padding), (0, 0)))
  crops = [padded[dy:dy + 6, dx:dx + 6] for dy in range(2 * padding + 1)
           for dx in range(2 * padding + 1)]
  was_flipped = []
  for result in out:
    plain = any(np.array_equal(result, c) for c in crops)
    mirrored = any(np.array_equal(np.flip(result, axis=1), c) for c in crops)
    assert plain or mirrored
    was_flipped.append(mirrored and not plain)
  assert any(was_flipped) and not all(was_flipped)
  noop = jnp.asarray(images)
  assert augment.augment(jax.random.key(3), noop) is noop


def test_normalize_matches_float64_formula():
  images = np.array([[[[0, 10]], [[128, 255]]]], dtype=np.uint8)  # [1,2,1,2]
  mean, std = (0.25, 0.5), (0.2, 0.4)
  expected = (images.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)
  got = augment.normalize(jnp.asarray(images), mean, std)
  assert got.dtype == jnp.float32 and got.shape == images.shape
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  default = augment.normalize(jnp.asarray(images))
  np.testing.assert_allclose(
      default, (images / 255.0 - augment.FASHION_MNIST_MEAN) / augment.FASHION_MNIST_STD,
      rtol=1e-6)
