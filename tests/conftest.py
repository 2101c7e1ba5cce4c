"""Shared fixtures: a tiny experiment config on real Fashion-MNIST (skipped when it is absent)."""

import os

import jax
import pytest

from tests import multidevice

# One persistent XLA cache for the session and its subprocesses: the tiny models'
# initialisers and steps recur across tests, and compiling dominates their run time.
jax.config.update("jax_compilation_cache_dir", multidevice.CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

FASHION_MNIST = os.environ.get("KD_JAX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def have_fashion_mnist() -> bool:
  return os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte.gz")) or \
      os.path.exists(os.path.join(FASHION_MNIST, "train-images-idx3-ubyte"))


# In CI (CI=true, as .ci/run's runners set it) nothing may be skipped for a missing
# dataset or package: the run fails instead, so that it cannot go green by skipping.
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
MISSING_FASHION_MNIST = "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"


def skip_unless(condition: bool, reason: str):
  """``pytest.mark.skipif(not condition)``, except in CI, where the test runs (and fails)."""
  return pytest.mark.skipif(not condition and not IN_CI, reason=reason)


def skip_or_fail(reason: str):
  """Skips the running test, or fails it in CI."""
  if IN_CI:
    pytest.fail(f"CI=true: {reason}")
  pytest.skip(reason)


def pytest_sessionstart(session):
  if IN_CI and not have_fashion_mnist():
    pytest.exit(f"CI=true and {MISSING_FASHION_MNIST} (make data installs it)", returncode=1)


needs_fashion_mnist = skip_unless(have_fashion_mnist(), MISSING_FASHION_MNIST)
needs_fortunes = skip_unless(os.path.isdir("/usr/share/games/fortunes"),
                             "the fortunes corpus is missing (sudo apt-get install fortunes)")


def tiny_config(method="kd", **overrides):
  """Seconds-long runs: 256 training and 200 test images, tiny models."""
  from kd_jax.config import base_config
  c = base_config()
  c.experiment = "test"
  c.dataset.train_examples = 200     # 4 steps of 64: the last one ragged (8 real rows)
  c.dataset.test_examples = 150
  c.teacher.model = "cnn"
  c.teacher.kwargs = dict(widths=(4, 8))
  c.teacher.train.epochs = 1
  c.teacher.train.batch_size = 64
  c.student.model = "cnn"
  c.student.kwargs = dict(widths=(4, 4))
  c.method = method
  c.train.epochs = 2
  c.train.batch_size = 64
  c.train.eval_batch_size = 64
  c.baseline = False
  c.log_every_steps = 1
  from kd_jax.config import resolve_field
  for key, value in overrides.items():
    resolve_field(c, key)      # a misspelt key fails instead of adding a field nobody reads
    target = c
    *path, last = key.split(".")
    for part in path:
      target = target[part]
    target[last] = value
  return c


@pytest.fixture
def idx_source(monkeypatch):
  """Reads the IDX files directly (TFDS's own path is covered in test_data.py)."""
  monkeypatch.setenv("KD_JAX_DATA_SOURCE", "idx")


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
  """One teacher cache for the whole session: the tiny teacher trains once."""
  return str(tmp_path_factory.mktemp("teachers"))
