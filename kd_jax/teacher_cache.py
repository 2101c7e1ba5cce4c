"""Teacher-output caching: the teacher's forward pass once per dataset, not once per step.

When the student sees fixed (un-augmented) inputs, the teacher's outputs for
every training example are computed once and held next to the data on the
devices; the KD step then gathers them by index and costs the same as a
student-only step. With augmentation the teacher must see the student's view
(consistent teaching, Beyer et al. 2022), so nothing is cached.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from kd_jax import parallel, teachers, train

# Cached teacher outputs above this size stay uncached under teacher_cache="auto".
AUTO_CACHE_MAX_BYTES = 1 << 30


def attach(config, teacher: train.Teacher, train_data, preprocess, mesh,
                             workdir) -> train.DeviceData:
  """``train_data`` with the teacher's logits (and features) cached, or unchanged.

  Caching needs fixed views (no augmentation). ``auto`` caches in device memory
  when the outputs fit in 1 GiB; ``disk`` also keeps them in
  ``workdir/teacher_outputs.npz`` keyed by teacher and dataset.
  """
  mode = config.teacher_cache
  if mode == "none" or preprocess.augments:
    return train_data
  n = train_data.size
  predict = train.make_predict(teacher.graphdef, preprocess, mesh, teacher.feature_names)
  abstract = jax.eval_shape(predict, *teacher.variables, train_data,
                            jax.ShapeDtypeStruct((mesh.shape[parallel.DATA_AXIS],), jnp.int32))
  per_example = sum(np.prod(x.shape[1:]) * 4 for x in jax.tree.leaves(abstract))
  if mode == "auto" and per_example * n > AUTO_CACHE_MAX_BYTES:
    logging.info("teacher outputs need %.1f GB: not cached", per_example * n / 1e9)
    return train_data
  cache_path = os.path.join(workdir, "teacher_outputs.npz")
  key = f"{teachers.teacher_key(config)}:{config.dataset.name}:{n}:{sorted(teacher.feature_names)}"
  logits = features = None
  if mode == "disk" and os.path.exists(cache_path):
    with np.load(cache_path) as f:
      if str(f["key"]) == key:
        logits = f["logits"]
        features = {k[len("feature/"):]: f[k] for k in f.files if k.startswith("feature/")}
  if logits is None:
    batch = train.round_up(1000, mesh.shape[parallel.DATA_AXIS])
    logits, features = train.predict_all(predict, teacher.variables, train_data, batch, mesh)
    if mode == "disk" and jax.process_index() == 0:
      np.savez(cache_path, key=key, logits=logits,
               **{f"feature/{k}": v for k, v in features.items()})
  cached_logits, cached_features = parallel.put_replicated((logits, features), mesh)
  return train.DeviceData(train_data.images, train_data.labels, cached_logits, cached_features)
