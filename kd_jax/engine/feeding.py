"""Feeding the step: example-index batches, padded to one shape, an epoch at a time.

Data stays on the devices; a batch is ``{"index": int32[B], "mask": bool[B]}``:
the examples to gather and which rows are real. The ragged last batch of an
epoch is padded with index 0 and masked out, so the step keeps one shape and
compiles once. An epoch's batches go to the devices in one transfer
(:class:`BatchFeeder`); each step then selects its own with one small jitted call.
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np

from kd_jax.core import parallel


def pad_batch(index: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """``(index, mask)`` of fixed size ``batch_size``: ``index`` padded with 0, masked out."""
  valid = len(index)
  mask = np.zeros(batch_size, bool)
  mask[:valid] = True
  return np.pad(index, (0, batch_size - valid)).astype(np.int32), mask


def padded_batches(num_examples: int, batch_size: int, order: np.ndarray | None = None):
  """Yields ``pad_batch`` batches over ``order`` (default ``range(num_examples)``)."""
  order = np.arange(num_examples) if order is None else order
  for start in range(0, num_examples, batch_size):
    yield pad_batch(order[start:start + batch_size], batch_size)


def eval_batch_size(requested: int, examples: int, mesh) -> int:
  """The evaluation batch: ``requested``, at most the split, a multiple of the data devices."""
  return round_up(min(requested, examples), mesh.shape[parallel.DATA_AXIS])


def round_up(value: int, multiple: int) -> int:
  return int(math.ceil(value / multiple) * multiple)


@functools.lru_cache(maxsize=None)
def _batch_selector(mesh):
  """``select(batches, position)``, compiled once per mesh: a sweep runs many fits in one process."""
  return jax.jit(lambda batches, position: jax.tree.map(lambda a: a[position], batches),
                 out_shardings=parallel.batch_sharding(mesh))


def replicated_key(seed: int, mesh) -> jax.Array:
  """The run's base key, placed on every device once (an uncommitted key is copied every step)."""
  return jax.random.wrap_key_data(
      parallel.put_replicated(jax.random.key_data(jax.random.key(seed)), mesh))


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of one epoch: a resumed run sees exactly the same batches."""
  return np.random.default_rng([seed, epoch]).permutation(n)


class BatchFeeder:
  """``feeder(step)``: the data-sharded ``{"index", "mask"}`` batch of a global step.

  At the first step of each epoch the whole epoch's padded batches,
  ``[steps_per_epoch, batch_size]``, go to the devices in one transfer (each
  process sends only its own rows); each step then selects its batch with one
  small jitted call, instead of padding and transferring every batch on its own
  (``make_array_from_process_local_data`` per step), whose host time can exceed
  a small model's step (benchmarks/overhead.py).
  """

  def __init__(self, num_examples: int, batch_size: int, seed: int, mesh):
    self.num_examples, self.batch_size, self.seed, self.mesh = num_examples, batch_size, seed, mesh
    self.steps_per_epoch = math.ceil(num_examples / batch_size)
    self._rows = parallel.process_rows(mesh, batch_size)
    self._epoch, self._batches = None, None
    self._select = _batch_selector(mesh)

  def __call__(self, step: int):
    epoch, position = divmod(step, self.steps_per_epoch)
    if epoch != self._epoch:
      self._epoch, self._batches = epoch, self._epoch_batches(epoch)
    return self._select(self._batches, position)

  def _epoch_batches(self, epoch: int):
    n, b = self.num_examples, self.batch_size
    index, mask = pad_batch(epoch_order(self.seed, epoch, n), self.steps_per_epoch * b)
    local = {"index": index.reshape(-1, b)[:, self._rows], "mask": mask.reshape(-1, b)[:, self._rows]}
    return parallel.global_batch(local, self.mesh, b, stacked=True)
