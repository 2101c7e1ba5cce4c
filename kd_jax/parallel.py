"""Device mesh and shardings.

kd_jax runs every step under ``jax.jit`` with explicit shardings over a 2-D mesh
``("data", "model")``:

* ``data``  — the batch is split over it (data parallelism); the student's
  parameters and optimiser state are replicated over it.
* ``model`` — a large teacher's parameters can be split over it (FSDP-style);
  with ``model=1`` (the default) every parameter is replicated.

One device is the trivial 1×1 mesh, so the same code path runs on a laptop, a
multi-GPU host, and (after ``jax.distributed.initialize()``) a TPU pod slice.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def mesh_shape(data: int = -1, model: int = 1, num_devices: int | None = None) -> tuple[int, int]:
  """Resolves ``(data, model)`` sizes; ``-1`` means "all the devices that are left".

  Raises:
    ValueError: naming ``mesh.data``/``mesh.model`` when the sizes do not
      multiply to the device count.
  """
  n = jax.device_count() if num_devices is None else num_devices
  if data == -1 and model == -1:
    raise ValueError("mesh.data and mesh.model cannot both be -1")
  for name, value in (("mesh.data", data), ("mesh.model", model)):
    if value == 0 or value < -1:
      raise ValueError(f"{name} must be a positive int or -1 (the rest), got {value}")
  if data == -1:
    if n % model:
      raise ValueError(f"mesh.model={model} does not divide the {n} devices")
    data = n // model
  if model == -1:
    if n % data:
      raise ValueError(f"mesh.data={data} does not divide the {n} devices")
    model = n // data
  if data * model != n:
    raise ValueError(f"mesh.data × mesh.model = {data}×{model} must equal the {n} devices")
  return data, model


def make_mesh(data: int = -1, model: int = 1) -> jax.sharding.Mesh:
  """A ``("data", "model")`` mesh over all devices of all processes."""
  shape = mesh_shape(data, model)
  return jax.make_mesh(shape, (DATA_AXIS, MODEL_AXIS),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``; the rest replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def fsdp_spec(shape: tuple[int, ...], model_size: int) -> P:
  """Splits the largest axis that ``model_size`` divides over ``model``.

  Small arrays (biases, norms, anything under 2**14 elements) stay replicated:
  splitting them saves nothing and costs a collective each.
  """
  if model_size == 1 or math.prod(shape) < 2**14:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % model_size == 0:
      spec = [None] * len(shape)
      spec[axis] = MODEL_AXIS
      return P(*spec)
  return P()


def teacher_shardings(mesh, params):
  """Shardings for a frozen teacher: FSDP over ``model``, replicated over ``data``."""
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
  # make_array_from_callback works for one and many processes alike: each process
  # materialises only the shards its own devices hold.
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])
