"""Device mesh, shardings, and how host data becomes global arrays.

kd_jax runs every step under ``jax.jit`` with explicit shardings over a 2-D mesh
``("data", "model")`` that spans every device of every process:

* ``data``  — the batch is split over it (data parallelism); the student's
  parameters and optimiser state are replicated over it, and XLA all-reduces
  the gradients across it.
* ``model`` — a large teacher's parameters are split over it (FSDP-style,
  :func:`teacher_shardings`), so a teacher bigger than one device's memory can
  still distil; with ``model=1`` (the default) every parameter is replicated.

One device is the trivial 1×1 mesh, so the same code path runs on a laptop, a
multi-GPU host and (after :func:`kd_jax.core.distributed.initialize`) a TPU pod slice
or a multi-node GPU cluster. ``mesh.data`` / ``mesh.model`` in the config set the
shape; ``-1`` means "all the devices that are left"::

    mesh = make_mesh(data=-1, model=2)      # 8 devices -> data=4, model=2

**Where the data lives (a deliberate choice).** kd_jax's datasets are small
(Fashion-MNIST is 47 MB as uint8), so every process loads the whole split and
places it, replicated, on every device once (:func:`put_replicated`); a batch is
then a vector of example indices (plus a validity mask) and the gather,
normalisation and augmentation run inside the jitted step. Each epoch, every
process derives the same permutation from the seed, keeps only the batch rows
its own devices hold (:func:`process_rows`) and builds the global, data-sharded
batches of the whole epoch from that process-local share with
``jax.make_array_from_process_local_data`` (:func:`global_batch`) — the
multi-host input pattern, where no process ever materialises another's shard.
(:class:`kd_jax.engine.BatchFeeder` does this once an epoch rather than once a
step: a transfer per step costs more host time than a small step's compute.)
A dataset too large to replicate would keep the same step and sharding: each
host would load only its ``process_rows`` examples and pass them to
:func:`global_batch` instead of indices.

Arrays that leave the devices (logits for evaluation, metrics, parameters to
save) are replicated first, inside the compiled function, because NumPy cannot
read an array whose shards live on another host; a replicated array can be read
on every process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from kd_jax.core.errors import ConfigError

DATA_AXIS = "data"
MODEL_AXIS = "model"
# Teacher arrays with fewer elements stay replicated under FSDP: splitting a bias
# or a norm scale saves nothing and costs an all-gather.
FSDP_MIN_SIZE = 2**14


def mesh_shape(data: int = -1, model: int = 1, num_devices: int | None = None) -> tuple[int, int]:
  """Resolves ``(data, model)`` sizes; ``-1`` means "all the devices that are left".

  Example: ``mesh_shape(-1, 2, num_devices=8) == (4, 2)``.

  Raises:
    ConfigError: naming ``mesh.data``/``mesh.model`` when a size is not a
      positive int or -1, both are -1, or they do not multiply to the device count.
  """
  n = jax.device_count() if num_devices is None else num_devices
  for name, value in (("mesh.data", data), ("mesh.model", model)):
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
      raise ConfigError(name, f"{name} must be a positive int or -1 (the rest), got {value!r}")
  if data == -1 and model == -1:
    raise ConfigError("mesh", "mesh.data and mesh.model cannot both be -1 (the rest)")
  if data == -1:
    if n % model:
      raise ConfigError("mesh.model", f"mesh.model={model} does not divide the {n} devices")
    data = n // model
  if model == -1:
    if n % data:
      raise ConfigError("mesh.data", f"mesh.data={data} does not divide the {n} devices")
    model = n // data
  if data * model != n:
    raise ConfigError("mesh", f"mesh.data × mesh.model = {data}×{model} must equal the {n} devices")
  return data, model


def make_mesh(data: int = -1, model: int = 1,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ``("data", "model")`` mesh over ``devices`` (default: all devices of all processes).

  ``jax.make_mesh`` orders the devices so that a process's devices are
  neighbours (and, on TPUs, so that the ``model`` axis uses the fastest links).
  """
  shape = mesh_shape(data, model, None if devices is None else len(devices))
  return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2, devices=devices)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh, *, stacked: bool = False) -> NamedSharding:
  """Batch axis split over ``data``; the rest replicated (also over ``model``).

  The batch axis is the leading one, or the second with ``stacked=True`` (arrays
  holding many batches, ``[steps, batch, ...]``).
  """
  return NamedSharding(mesh, P(None, DATA_AXIS) if stacked else P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], model_size: int) -> P:
  """Splits the largest axis that ``model_size`` divides over ``model``.

  Arrays under :data:`FSDP_MIN_SIZE` elements, or with no divisible axis, stay
  replicated. Example: ``fsdp_spec((3, 3, 64, 128), 2) == P(None, None, None, "model")``.
  """
  if model_size == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % model_size == 0:
      spec = [None] * len(shape)
      spec[axis] = MODEL_AXIS
      return P(*spec)
  return P()


def teacher_shardings(mesh, params):
  """Shardings for a frozen teacher: FSDP over ``model``, replicated over ``data``.

  Each device stores ``1/model`` of every large teacher array; inside the step
  XLA gathers what a layer needs (or computes on the shards) — the teacher is
  only run forward, so no gradient or optimiser state of it ever exists.
  """
  model_size = mesh.shape[MODEL_AXIS]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), model_size)), params)


def put_replicated(tree, mesh):
  """Places a host pytree on every device of the mesh (all processes pass the same values)."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _global_array(np.asarray(x), sharding), tree)


def put_sharded(tree, shardings):
  """Places a host pytree (the same full values on every process) with the given shardings."""
  return jax.tree.map(lambda x, s: _global_array(np.asarray(x), s), tree, shardings)


def _global_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  # The callback runs only for this process's devices: each process copies just
  # the shards it holds, whatever the number of processes.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def process_rows(mesh, global_batch: int) -> np.ndarray:
  """The rows of a ``global_batch``-row batch that this process's devices hold, ascending.

  With one process: every row. With 2 processes of 2 devices each and
  ``data=4``: rows ``[0, B/2)`` on process 0 and ``[B/2, B)`` on process 1.
  With ``model > 1`` the devices of one ``data`` slice hold the same rows.
  """
  sharding = batch_sharding(mesh)
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(global_batch)[index[0]])
  return np.array(sorted(rows), dtype=np.int64)


def global_batch(local_tree, mesh, global_size: int, *, stacked: bool = False):
  """A data-sharded global batch from this process's rows (see :func:`process_rows`).

  Args:
    local_tree: host arrays whose batch axis holds exactly this process's
      rows, in ascending order.
    mesh: the mesh; the batch is split over ``data``.
    global_size: the batch size summed over all processes.
    stacked: the arrays hold many batches, ``[steps, rows, ...]``; the batch
      axis is then the second.
  """
  sharding = batch_sharding(mesh, stacked=stacked)
  axis = 1 if stacked else 0

  def make(x):
    x = np.asarray(x)
    shape = x.shape[:axis] + (global_size,) + x.shape[axis + 1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return jax.tree.map(make, local_tree)
