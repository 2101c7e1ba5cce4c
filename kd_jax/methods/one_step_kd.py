r"""``one_step_kd`` — knowledge distillation into a one-step generator (Luhman & Luhman
2021, "Knowledge Distillation in Iterative Generative Models for Improved Sampling
Speed"; the "KD" baseline of the rectified-flow papers). The teacher's DDIM samples at
``one_step_kd.teacher_steps`` steps from ``one_step_kd.pairs`` noise draws are made once
and cached, keyed by the teacher and the settings (``<cache>/transfer_sets/
diffusion_pairs-<key>.npz``), like a language model's transfer set; the student then
regresses each sample from its noise at t = 1, in the network's parameterisation (v
at t = 1 is about −x: the loss is about the squared error of the image).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.config import checks
from kd_jax.core import files, parallel
from kd_jax.core import identity as identity_lib
from kd_jax.core.errors import ConfigError
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.methods.base import Method, require_block
from kd_jax.methods.diffusion_base import task_like
from kd_jax.methods.logit import regression
from kd_jax.objectives import diffusion
from kd_jax.tasks import diffusion as diffusion_task
from kd_jax.tasks import diffusion_sampler


PAIR_BATCH = 256        # teacher samples drawn per sampler call (one compilation)

@device_split
class PairData(DeviceSplit):
  """The teacher's (noise, sample) pairs on the devices, with the samples' labels (0 when
  unconditional)."""
  noise: jax.Array
  samples: jax.Array
  labels: jax.Array


@dataclasses.dataclass(frozen=True)
class OneStepDenoising(diffusion_task.Denoising):
  """The diffusion task whose batches are the teacher's pairs: (noise, t = 1) → its sample."""

  def train_batch(self, data, index, mask, rng, policy=None, teacher=None):
    del rng, policy, teacher
    z = data.noise[index]
    t = jnp.ones((z.shape[0],), jnp.float32)
    labels = self.model_labels(data.labels[index])
    target = diffusion.from_x(data.samples[index], z, t, parameterization=self.parameterization)
    return (z.astype(self.dtype), t, labels), target, mask, {}


def teacher_pairs(config, prepared, teacher_module, teacher_identity: dict, cache_dir: str):
  """``(noise, samples, labels)`` as NumPy arrays: the teacher's DDIM samples from fixed noise,
  read from the cache or made (and cached) now."""
  block, d = config.one_step_kd, config.dataset
  num_classes = prepared.task.num_classes
  key = identity_lib.digest({"teacher": teacher_identity, "block": block.to_dict(),
                             "seed": config.seed, "guidance": d.guidance,
                             "conditional": num_classes is not None,
                             "parameterization": d.parameterization})
  path = os.path.join(cache_dir, f"diffusion_pairs-{key}.npz")
  if os.path.exists(path):
    with np.load(path) as stored:
      return stored["noise"], stored["samples"], stored["labels"]
  shape = tuple(prepared.train_data.images.shape[1:])
  noise = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(config.seed), 7),
                                       (block.pairs, *shape)))
  labels = (np.arange(block.pairs, dtype=np.int32) % num_classes if num_classes is not None
            else np.zeros(block.pairs, np.int32))
  graphdef, state = nnx.split(teacher_module)
  samples = []
  for start in range(0, block.pairs, PAIR_BATCH):
    samples.append(np.asarray(diffusion_sampler.sample(
        graphdef, state, jnp.asarray(noise[start:start + PAIR_BATCH]),
        steps=int(block.teacher_steps),
        labels=None if num_classes is None else jnp.asarray(labels[start:start + PAIR_BATCH]),
        guidance=float(d.guidance), parameterization=d.parameterization)))
  samples = np.concatenate(samples)
  os.makedirs(cache_dir, exist_ok=True)
  with files.atomic_open(path, "wb") as f:       # complete or absent
    np.savez(f, noise=noise, samples=samples, labels=labels)
  return noise, samples, labels


def _pair_data(config, prepared, student_module, teacher_module, teacher_identity, cache_dir):
  del student_module
  noise, samples, labels = teacher_pairs(config, prepared, teacher_module, teacher_identity,
                                         cache_dir)
  data = PairData(*parallel.put_replicated((noise, samples, labels), prepared.mesh))
  return data, {"teacher_pairs": {"pairs": int(len(noise)),
                                  "teacher_steps": int(config.one_step_kd.teacher_steps)}}


def _one_step_task(config, prepared):
  return task_like(OneStepDenoising, prepared)


def _check_one_step(config) -> None:
  block = require_block(config, "one_step_kd", "one_step_kd_config")
  checks.ints_at_least("one_step_kd", block, ("pairs", "teacher_steps"), 1)
  if config.dataset.guidance:
    # Its student regresses the teacher's samples with their labels and never sees the
    # null label, so the report's guided sampling would mix in outputs it never learned.
    raise ConfigError("dataset.guidance", "method='one_step_kd' learns samples, not the "
                      "guidance mix: set dataset.guidance=0")


METHODS = {
    "one_step_kd": Method(regression, (diffusion_task.NAME,), uses_teacher=False,
                          check=_check_one_step, training_task=_one_step_task,
                          student_data=_pair_data),
}
