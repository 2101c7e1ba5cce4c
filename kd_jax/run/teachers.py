"""The teacher: trained once, cached by a hash of its config, loaded by every later run.

A cached teacher lives in ``TEACHER_DIR/<key>/`` with ``teacher.json`` (its
config, parameter count, final evaluation, training time), ``logs/`` (its
training's metrics.jsonl and TensorBoard events) and ``variables/`` (an
orbax checkpoint of every variable: parameters and BatchNorm statistics).
``<key>`` hashes everything that changes the trained weights: the model and its
kwargs, the training data (dataset, subset size, augmentation), the training
settings, the seed, the precision and the code (:mod:`kd_jax.core.fingerprint`). A teacher named by
``config.teacher.checkpoint`` is loaded from a directory of the same layout.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from kd_jax import config as config_lib
from kd_jax import tasks
from kd_jax.config import records
from kd_jax.core import fingerprint as source_code
from kd_jax.core import identity as identity_lib
from kd_jax.data import text as text_data
from kd_jax.core.errors import ConfigError

TEACHER_FILE = "teacher.json"


def teacher_identity(config: ml_collections.ConfigDict) -> dict:
  """What determines the teacher's trained weights (not how it is evaluated or logged).

  The dataset block less what only the students or the evaluation see
  (``test_examples``, ``ood_examples``, ``omit_classes``) and, for a text corpus,
  a digest of its documents.
  """
  identity = {
      "model": config.teacher.model,
      "kwargs": config.teacher.kwargs.to_dict(),
      # How often it is evaluated changes its history, not its weights.
      "train": records.without_fields(config.teacher.train,
                                          ["eval_batch_size", "eval_every_steps"]),
      "seed": config.teacher.seed,
      "precision": config.precision,
      # (and the fields only the students' data depend on, as the task family says)
      "data": records.without_fields(config.dataset, [
          "test_examples", "ood_examples", "omit_classes",
          *getattr(tasks.family_of(config.dataset.name), "STUDENT_ONLY_FIELDS", ())]),
      "code": source_code.fingerprint(),     # the code that trains it (DESIGN §5.6)
  }
  if config.dataset.name in text_data.CORPORA:
    # A text corpus comes from an installed package whose version the config cannot name.
    identity["corpus"] = text_data.corpus_digest(config.dataset.name)
  return identity


def teacher_key(config: ml_collections.ConfigDict) -> str:
  """A short, stable hash of :func:`teacher_identity`: the teacher cache's directory name."""
  return f"{config.teacher.model}-{identity_lib.digest(teacher_identity(config))}"


def baseline_train_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.train`` with the baseline's own budget: ``baseline_steps`` steps when > 0."""
  steps = config.get("baseline_steps", 0)
  if not steps or steps == config.train.get("steps", 0):
    return config.train
  train_config = config.train.copy_and_resolve_references()
  with train_config.unlocked():
    train_config.steps = int(steps)
  return train_config


def baseline_identity(config: ml_collections.ConfigDict) -> dict:
  """What determines the from-scratch baseline's report.

  The baseline does not depend on the method, divergence, temperature or α, so
  every point of a sweep with the same seed shares one; its agreement and
  KL-to-teacher depend on the teacher, which is part of the identity.
  """
  return {
      "student": config.student.to_dict(),
      "train": records.without_fields(baseline_train_config(config), ["eval_batch_size"]),
      "data": config.dataset.to_dict(),
      "seed": config.seed,
      "precision": config.precision,
      "teacher": config.teacher.checkpoint or teacher_key(config),
      "code": source_code.fingerprint(),
      # A language model's report includes sampled answers (pass@k).
      **({"sampling": config.sampling.to_dict()} if "sampling" in config else {}),
  }


def baseline_key(config: ml_collections.ConfigDict) -> str:
  """A short hash of :func:`baseline_identity`: the shared baseline's directory name."""
  return f"{config.student.model}-{identity_lib.digest(baseline_identity(config))}"


def seqkd_start_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run that trains a ``student_init="seqkd"`` student's start: the R1 recipe's student,
  the baseline fine-tuned (method ``none``) on the teacher's transfer set."""
  start = config_lib.with_method(config, "none")
  start.student_init, start.student_data = "baseline", "transfer"
  if "sft" in start:    # the point's own phase settings (e.g. a control's rate) are not its start's
    start.sft = config_lib.sft_config()
  return start


def is_seqkd_start(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config``'s student is itself that start (a ``seqkd`` point): then it is the
  shared run the ``student_init="seqkd"`` points start from, not trained twice."""
  sft = config.get("sft")
  return (config.baseline and config.method == "none"
          and config.get("student_init") == "baseline"
          and config.get("student_data") == "transfer"
          and (sft is None or not (sft.learning_rate or sft.steps))   # train's rate and steps
          and not config.get("topk", {}).get("k", 0))


def seqkd_start_identity(config: ml_collections.ConfigDict, train_config,
                         teacher_data_identity: dict) -> dict:
  """What determines the seqkd start: its baseline, the transfer set (the teacher that
  wrote it and the transfer block: k, sampling, ``max_examples``) and the phase's
  training settings. Not the method or the blocks of the point that starts from it."""
  return {
      "baseline": baseline_identity(config),
      "transfer": config.transfer.to_dict(),
      "teacher": teacher_data_identity,
      "train": records.without_fields(train_config, ["eval_batch_size"]),
  }


def save(directory: str, module: nnx.Module, info: dict) -> None:
  """Writes a trained teacher (atomically: a half-written teacher is never loaded).

  Every process calls it (the orbax save is collective); only process 0 touches
  the directories, between barriers, so that processes sharing a file system
  never race.
  """
  # A directory every process writes into collectively (orbax), so one name for all of
  # them, not kd_jax.core.files' per-process temporary file.
  tmp = directory + ".tmp"
  primary = jax.process_index() == 0
  if primary:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
    os.makedirs(tmp)
  _barrier("kd_jax.run.teachers.save:tmp")
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(tmp, "variables"), nnx.state(module))
  if primary:
    with open(os.path.join(tmp, TEACHER_FILE), "w") as f:
      json.dump(info, f, indent=2)
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.replace(tmp, directory)
  _barrier("kd_jax.run.teachers.save:done")


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def load(directory: str, module: nnx.Module, *, num_classes: int) -> dict | None:
  """Loads a saved teacher's variables into ``module``; returns its info, or None if absent.

  Raises:
    ConfigError: the saved teacher does not fit ``module`` (another model, or
      another number of outputs — classes, or vocabulary size — than the task's),
      naming ``teacher.checkpoint``.
  """
  info_path = os.path.join(directory, TEACHER_FILE)
  if not os.path.exists(info_path):
    return None
  with open(info_path) as f:
    info = json.load(f)
  if info.get("num_classes") != num_classes:
    raise ConfigError(
        "teacher.checkpoint", f"teacher.checkpoint: the teacher in {directory} has "
        f"{info.get('num_classes')} outputs (classes or vocabulary) but the task (and so the "
        f"student) has {num_classes}")
  target = nnx.state(module)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(os.path.join(os.path.abspath(directory), "variables"),
                                      abstract)
  except (ValueError, KeyError) as e:
    raise ConfigError(
        "teacher.checkpoint", f"teacher.checkpoint: the teacher in {directory} "
        f"({info.get('model')}, {info.get('num_classes')} outputs) does not fit the configured "
        f"teacher: {e}") from e
  nnx.update(module, restored)
  logging.info("loaded teacher %s from %s", info.get("model"), directory)
  return info
