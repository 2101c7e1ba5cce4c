"""Teacher-output caching: the teacher's forward pass once per dataset, not once per step.

A KD step costs a student step plus one teacher forward pass; with a teacher
``F_t`` FLOPs per example and a student ``F_s``, the ratio to a student-only step
is ``1 + F_t / (3 F_s)`` (forward + backward ≈ 3 forwards). When the teacher's
input is fixed — no augmentation, or ``teacher_fixed_views=True`` — its outputs
for the whole training set are computed once, held next to the images on the
devices, and gathered by example index inside the step, so the KD step costs
what a student-only step costs.

``config.teacher_cache``:

* ``"none"``   — the teacher runs inside every step on the student's view.
* ``"memory"`` — outputs computed once at start-up and held on the devices.
* ``"disk"``   — as ``memory``, and also stored in ``workdir/teacher_outputs.npz``
  so a rerun or resume with the same teacher and data skips the computation.
  The file records an identity (:func:`cache_identity`): the teacher (its key
  and a fingerprint of its variables), the dataset (name, subset size, a
  fingerprint of its arrays: images and labels, or token rows), the requested
  feature names and what the task does to the data before the teacher sees it
  (``task.input_identity()``). Any difference recomputes and overwrites it.
* ``"shared"`` — as ``disk``, in a directory every run shares
  (``<cache root>/teacher_outputs/<identity hash>.npz``): the seeds and methods of a
  sweep with the same teacher, data and features compute the outputs once.
* ``"auto"``   — ``memory`` when the inputs are fixed and the outputs fit in
  :data:`AUTO_CACHE_MAX_BYTES`, else ``none``.

``config.topk.k`` > 0 (language models, ``method="kd"``): the teacher's outputs are
cached in their top-k form (:mod:`kd_jax.objectives.topk`: the k largest raw logits, their
ids and the full logsumexp per token), made on the devices batch by batch so that
full ``[N, L - 1, V]`` logits never exist; the file is kept in a directory shared
by every run (``<cache root>/teacher_outputs/topk-<identity hash>.npz``, the
identity including k), so the seeds and modes of a sweep compute it once.
:func:`topk_report` says what it costs and how far its loss is from the full one.

With augmentation the teacher should see the student's random view
(consistent teaching, Beyer et al. 2022, "Knowledge distillation: A good
teacher is patient and consistent"), so ``memory``/``disk`` are refused there
unless ``teacher_fixed_views=True``: the teacher then sees the un-augmented
image (its outputs are the targets for every augmented view of it), which is
what makes them cacheable — cheaper, but weaker targets for long augmented runs.

Example (fixed views, outputs held on the devices)::

    data = teacher_cache.attach(config, teacher, train_data, task, mesh, workdir)
    data.teacher_logits.shape    # (N, num_classes) float32; (N, L - 1, V) for token rows
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kd_jax.core import fingerprint as source_code
from kd_jax.engine import feeding, step
from kd_jax.objectives import losses
from kd_jax.core import parallel
from kd_jax.objectives import topk
from kd_jax.core import files
from kd_jax.core import identity as identity_lib
from kd_jax.core.errors import ConfigError

# Cached teacher outputs above this size stay uncached under teacher_cache="auto".
AUTO_CACHE_MAX_BYTES = 1 << 30
CACHE_FILE = "teacher_outputs.npz"
# Bump when the file layout or the identity fields change: old files are then recomputed.
FORMAT_VERSION = 2


def refusal_message(mode: str) -> str:
  return (f"teacher_cache={mode!r} with augmentation (dataset.crop_padding/dataset.flip): "
          "the teacher must see the same random view as the student (consistent teaching, "
          "Beyer et al. 2022), so its outputs cannot be cached. Use teacher_cache='none' or "
          "'auto', turn augmentation off, or set teacher_fixed_views=True (the teacher then "
          "sees the un-augmented image).")


def resolve_mode(config, task) -> str:
  """``"none"``, ``"memory"``, ``"disk"`` or ``"shared"`` for this run (``auto`` before its
  size check).

  Raises:
    ValueError: ``memory``/``disk`` requested while the student's views are
      augmented and ``teacher_fixed_views`` is off.
  """
  mode = config.teacher_cache
  if not getattr(task, "teacher_outputs_cacheable", True):
    # e.g. preference pairs: two rows per example, which the cache's layout cannot hold.
    if mode in ("memory", "disk", "shared"):
      raise ConfigError("teacher_cache", f"teacher_cache={mode!r}: this method's batches "
                        "cannot be cached (the teacher runs live): use 'auto' or 'none'")
    return "none"
  fixed = not task.augments or config.get("teacher_fixed_views", False)
  if mode in ("memory", "disk", "shared") and not fixed:
    raise ConfigError("teacher_cache", refusal_message(mode))
  if mode == "auto":
    return "memory" if fixed else "none"
  return mode


def fingerprint(tree) -> str:
  """A 16-hex-digit digest of every array in ``tree``, computed where the arrays live.

  Each leaf's bits, read as uint32 words ``w_i``, give two sums modulo 2³²:
  ``Σ w_i`` and ``Σ w_i·h(i)`` with ``h`` a multiplicative hash of the position,
  so changed values and moved values both change the digest. Integer sums wrap
  exactly, so the result does not depend on the reduction order, the device
  count or the sharding; only two scalars per leaf leave the devices.

  Example::

    >>> fingerprint({"w": jnp.ones(3)}) == fingerprint({"w": jnp.ones(3)})
    True
  """
  leaves = jax.tree.leaves(tree)
  sums = jax.device_get(_all_sums(leaves))
  described = [(list(np.shape(x)), str(x.dtype), [int(s) for s in pair])
               for x, pair in zip(leaves, sums)]
  return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


def _leaf_sums(x):
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    words = x.astype(jnp.uint32)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  words = words.reshape(-1)
  position = jnp.arange(words.shape[0], dtype=jnp.uint32) * jnp.uint32(2654435761) + 1
  return jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * position, dtype=jnp.uint32)


_all_sums = jax.jit(lambda leaves: [_leaf_sums(x) for x in leaves])


def cache_identity(config, teacher: step.Teacher, train_data, task, teacher_name: str) -> dict:
  """What the cached outputs depend on; the disk cache is reused only on an exact match.

  ``teacher_name`` names the teacher: the run's pipeline hands down its resolved checkpoint
  path or its cache key (:func:`kd_jax.run.teachers.teacher_key`).
  """
  d = config.dataset
  return {
      "format": FORMAT_VERSION,
      "teacher": teacher_name,
      "teacher_variables": fingerprint(teacher.variables),
      # The compute dtype changes the outputs (the variables' fingerprint is float32 either way).
      "precision": config.precision,
      "dataset": d.name,
      "train_examples": d.train_examples,
      "examples": train_data.size,
      "data": fingerprint(inputs_of(train_data)),
      "features": sorted(teacher.feature_names),
      # How the task turns the data into the teacher's inputs (never the augmentation).
      "inputs": task.input_identity(),
      **({"topk": topk_k(config)} if topk_k(config) else {}),
      # The code that computed them (DESIGN §5.6).
      "code": source_code.fingerprint(),
  }


def topk_k(config) -> int:
  """``topk.k`` of the config (0: full logits, also when the block is absent)."""
  return int((config.get("topk") or {}).get("k", 0))


def inputs_of(data):
  """The arrays of a split, without any cached teacher outputs."""
  return dataclasses.replace(data, teacher_logits=None, teacher_features=None)


def attach(config, teacher: step.Teacher, train_data,
           task, mesh, workdir: str, shared_dir: str | None = None, *,
           teacher_name: str | None = None):
  """``train_data`` with the teacher's logits (and features) cached, or unchanged.

  Args:
    config: the experiment config (``teacher_cache``, ``teacher_fixed_views``,
      ``dataset``, ``teacher``, ``train.eval_batch_size``).
    teacher: the frozen teacher, with the feature names the method needs.
    train_data: the training split on the devices.
    task: the task (:mod:`kd_jax.tasks`); the teacher's outputs are computed on its
      evaluation inputs (never augmented).
    mesh: the device mesh.
    workdir: where the ``disk`` cache file lives.
    shared_dir: where top-k caches (``topk.k`` > 0) and ``teacher_cache="shared"`` live,
      shared between runs; top-k caches
      are always kept on disk there (None: as ``teacher_cache`` says, in ``workdir``).
    teacher_name: the teacher's name in the cache's identity (:func:`cache_identity`);
      required when the outputs are kept on disk.

  Returns:
    ``train_data``, with ``teacher_logits`` float32 [N, classes] ([N, L - 1, V] for
    token rows; a :class:`kd_jax.objectives.topk.TopKLogits` with ``topk.k`` > 0) and
    ``teacher_features`` {name: [N, ...]} set when the outputs are cached.

  Raises:
    ValueError: caching refused under augmentation (see :func:`resolve_mode`), or
      ``teacher_fixed_views=True`` with outputs too large for ``auto``.
  """
  k = topk_k(config)
  mode = "disk" if k and shared_dir else resolve_mode(config, task)
  shared = bool(shared_dir) and (k > 0 or mode == "shared")
  if mode == "none":
    if config.teacher_cache == "auto":
      logging.info("teacher outputs not cached: the student's views are augmented")
    return train_data
  data_devices = mesh.shape[parallel.DATA_AXIS]
  # The top-k form (kd_jax/objectives/topk.py) is made on the devices: full logits never reach the host.
  predict = step.make_predict(teacher.graphdef, task, mesh, teacher.feature_names,
                               logits_fn=(lambda x: topk.from_logits(x, k)) if k else None)
  abstract = jax.eval_shape(predict, *teacher.variables, train_data,
                            jax.ShapeDtypeStruct((data_devices,), jnp.int32))
  per_example = sum(np.prod(x.shape[1:]) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  total = int(per_example) * train_data.size
  if config.teacher_cache == "auto" and total > AUTO_CACHE_MAX_BYTES and not k:
    if config.get("teacher_fixed_views", False):
      raise ConfigError(
          "teacher_fixed_views", f"teacher_fixed_views=True needs the teacher's outputs cached, but they take "
          f"{total / 1e9:.1f} GB (over teacher_cache='auto''s {AUTO_CACHE_MAX_BYTES / 1e9:.1f} GB); "
          "set teacher_cache='memory' to cache them anyway, or teacher_fixed_views=False")
    logging.info("teacher outputs need %.1f GB: not cached", total / 1e9)
    return train_data

  outputs = None
  if mode in ("disk", "shared"):
    if teacher_name is None:
      raise ValueError("teacher_cache.attach: a cache on disk is keyed by the teacher's name: "
                       "pass teacher_name (its checkpoint path or kd_jax.run.teachers.teacher_key)")
    identity = cache_identity(config, teacher, train_data, task, teacher_name)
    # A shared cache serves every run of the same teacher, data, features (and k).
    path = (os.path.join(shared_dir, f"{'topk-' if k else ''}{identity_lib.digest(identity)}.npz")
            if shared else os.path.join(workdir, CACHE_FILE))
    outputs = _load(path, identity, abstract)
  if not _every_process(outputs is not None):
    batch = feeding.eval_batch_size(config.train.eval_batch_size, train_data.size, mesh)
    outputs = step.predict_all(predict, teacher.variables, train_data, batch, mesh)
    logging.info("teacher outputs computed for %d examples (%.1f MB)", train_data.size, total / 1e6)
    if mode in ("disk", "shared"):
      _save(path, identity, *outputs)
  logits, features = outputs
  cached_logits, cached_features = parallel.put_replicated((logits, features), mesh)
  return dataclasses.replace(train_data, teacher_logits=cached_logits,
                             teacher_features=cached_features)


def _every_process(flag: bool) -> bool:
  # All processes must take the same branch: recomputing runs collectives.
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.asarray(flag))))


def _load(path: str, identity: dict, abstract):
  """The cached ``(logits, features)`` if ``path`` holds outputs for ``identity``, else None."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = json.loads(str(f["identity"]))
      if stored != identity:
        changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
        logging.info("teacher output cache %s is stale (changed: %s); recomputing", path,
                     ", ".join(changed))
        return None
      logits = (topk.TopKLogits(f["topk/logits"], f["topk/ids"], f["topk/lse"])
                if "topk/ids" in f.files else f["logits"])
      features = {name: f[f"feature/{name}"].astype(abstract[1][name].dtype)
                  for name in abstract[1]}
  except (OSError, KeyError, ValueError) as e:
    logging.warning("teacher output cache %s is unreadable (%s); recomputing", path, e)
    return None
  logging.info("teacher outputs loaded from %s", path)
  return logits, features


def _save(path: str, identity: dict, logits: np.ndarray, features: dict) -> None:
  if jax.process_index() != 0:
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  buffer = io.BytesIO()
  # float32 on disk: numpy has no portable bfloat16; the cast back on load is exact.
  if isinstance(logits, topk.TopKLogits):
    stored = {"topk/logits": np.asarray(logits.logits, np.float32),
              "topk/ids": np.asarray(logits.ids, np.int32), "topk/lse": np.asarray(logits.lse)}
  else:
    stored = {"logits": np.asarray(logits, np.float32)}
  np.savez(buffer, identity=np.asarray(json.dumps(identity, sort_keys=True)), **stored,
           **{f"feature/{k}": np.asarray(v, np.float32) for k, v in features.items()})
  with files.atomic_open(path, "wb") as f:   # a half-written cache is never read
    f.write(buffer.getvalue())


def topk_report(config, student, teacher: step.Teacher, data, task, rows: int = 256) -> dict:
  """What the top-k cache costs and how far its loss is from the full-logit loss.

  On the first ``rows`` training rows, with the trained ``student`` (a module) and
  the live teacher: the distillation term (T²·D at ``temperature.init``) from the
  full teacher logits and from the cached top-k, and the bytes per token of each.
  """
  index = jnp.arange(min(rows, data.size))
  inputs, mask = task.eval_inputs(data, index), data.loss_mask[index]
  graphdef, params, model_state = step.split_module(student)
  (student_logits, _), _ = step.forward(graphdef, params, model_state, inputs, train=False)
  teacher_logits, _ = teacher(teacher.variables, inputs)
  kwargs = dict(divergence=config.divergence, temperature=float(config.temperature.init),
                mask=mask, divergence_params=dict(config.divergence_params))
  full = losses.kd_loss(student_logits, teacher_logits, None, alpha=0.0, **kwargs)
  cached = topk.topk_kd_loss(student_logits, data.teacher_logits[index], mode=config.topk.mode,
                             **kwargs)
  return {"k": data.teacher_logits.k, "mode": config.topk.mode,
          "bytes_per_token": data.teacher_logits.bytes_per_position(),
          "full_logits_bytes_per_token": int(teacher_logits.shape[-1]) * 4,
          "distill_full_logits": float(full), "distill_topk": float(cached),
          "rows": int(index.shape[0])}
