"""Training: the state, the pure jitted train/eval steps, and the loop.

The hot loop is one function compiled once per run::

    train_step(state, batch, rng) -> (state, metrics)

``state`` is a :class:`TrainState` pytree (the student's parameters, its
non-parameter variables such as BatchNorm statistics, the optax state, and
the step). It is donated: its buffers are reused for the new state. The
teacher's variables enter the compiled function as a separate, never-donated
argument and only through ``jax.lax.stop_gradient`` — only the student is
differentiated.

Data never leaves the devices: the whole (small) dataset is placed on every
device once, as uint8, and a batch is a vector of example indices plus a
validity mask. Gathering, normalising and augmenting happen inside the step.
The ragged last batch of an epoch is padded with index 0 and masked out of
the loss, so the step keeps one shape and compiles once.

The loop keeps host work per step small, because a small model's step can take
less time than a host-to-device transfer plus eager dispatches (measured in
docs/performance.md, benchmarks/overhead.py): an epoch's index batches go
to the devices in one transfer (:class:`BatchFeeder`), the step derives its
random key from ``state.step`` itself, and metrics are read one step late, so
the host never waits on the step it has just dispatched.

Several devices and hosts: the batch is split over the mesh's ``data`` axis
and each process contributes only its own rows (see :mod:`kd_jax.parallel`);
the student's state is replicated, so every process holds the same parameters.
All processes run :func:`fit` in lockstep (the steps and the orbax checkpoint
saves and restores are collective); only process 0 writes ``metrics.jsonl``,
TensorBoard events and the progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from absl import logging
from flax import nnx

from kd_jax import parallel
from kd_jax import workdir as workdir_lib
from kd_jax.checkpoint import Checkpointer
from kd_jax.errors import ConfigError, WorkdirConflictError
from kd_jax.run_log import RunLog
from kd_jax.data import augment as augment_lib
from kd_jax import metrics as metrics_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimiser steps taken
  params: Any            # nnx.State of nnx.Param (student model + adapters)
  model_state: Any       # every other variable (BatchNorm statistics)
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class DeviceData:
  """A split held on the devices (replicated): uint8 images, int32 labels.

  ``teacher_logits`` / ``teacher_features`` hold the teacher's outputs for
  every example when the teacher is cached (fixed, un-augmented inputs).
  """
  images: jax.Array
  labels: jax.Array
  teacher_logits: jax.Array | None = None
  teacher_features: dict | None = None

  @property
  def size(self) -> int:
    return int(self.images.shape[0])


jax.tree_util.register_dataclass(
    DeviceData, data_fields=["images", "labels", "teacher_logits", "teacher_features"],
    meta_fields=[])


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


# --------------------------------------------------------------------------- optimiser

def learning_rate_schedule(t, total_steps: int) -> optax.Schedule:
  if t.lr_schedule == "constant":
    return optax.constant_schedule(t.learning_rate)
  if t.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(t.learning_rate, max(total_steps, 1))
  warmup = int(t.warmup_fraction * total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, max(total_steps, warmup + 1))


def make_optimizer(t, total_steps: int) -> optax.GradientTransformation:
  """The optax optimiser of a ``training_config`` (see kd_jax/config.py)."""
  lr = learning_rate_schedule(t, total_steps)
  if t.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=t.weight_decay)
  else:
    base = {"sgd": lambda: optax.sgd(lr),
            "momentum": lambda: optax.sgd(lr, momentum=t.momentum, nesterov=True),
            "adam": lambda: optax.adam(lr)}[t.optimizer]()
    opt = optax.chain(optax.add_decayed_weights(t.weight_decay), base) if t.weight_decay else base
  if t.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
  return opt


# --------------------------------------------------------------------------- steps

@dataclasses.dataclass(frozen=True)
class Preprocess:
  """uint8 → normalised float, plus on-device augmentation of the training views."""
  mean: float
  std: float
  crop_padding: int = 0
  flip: bool = False
  dtype: Any = jnp.float32

  def __call__(self, images, rng=None):
    if rng is not None and self.augments:
      # On raw pixels, so that crop padding is black background, not the normalised mean.
      images = augment_lib.augment(rng, images, crop_padding=self.crop_padding, flip=self.flip)
    return augment_lib.normalize(images, self.mean, self.std).astype(self.dtype)

  @property
  def augments(self) -> bool:
    return bool(self.crop_padding or self.flip)


def split_module(module: nnx.Module):
  """``(graphdef, params, model_state)`` with parameters separated from the rest."""
  return nnx.split(module, nnx.Param, ...)


def forward(graphdef, params, model_state, x, *, train: bool, feature_names=()):
  """Runs a model (or :class:`~kd_jax.methods.Student`) functionally.

  Returns ``((logits, features), new_model_state)``; ``features`` holds
  ``feature_names`` (for a raw model) or the student's matched layers.
  """
  # copy=True: fresh Variables at this trace level, so BatchNorm may update its
  # statistics inside jax.grad (merging the outer trace's Variables would not allow it).
  module = nnx.merge(graphdef, params, model_state, copy=True)
  if hasattr(module, "pairs"):               # a methods.Student wrapper
    out = module(x, train=train)
  elif feature_names:
    logits, features = module(x, train=train, return_features=True)
    out = (logits, {n: features[n] for n in feature_names})
  else:
    out = (module(x, train=train), {})
  new_state = nnx.state(module, nnx.Not(nnx.Param)) if train else model_state
  return out, new_state


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: its graph, variables (possibly sharded over ``model``) and wanted features."""
  graphdef: Any
  variables: tuple      # (params, model_state), never donated, never differentiated
  feature_names: tuple = ()

  def __call__(self, variables, x):
    (logits, features), _ = forward(self.graphdef, *variables, x, train=False,
                                    feature_names=self.feature_names)
    return jax.lax.stop_gradient((logits.astype(jnp.float32), features))


class TrainStep:
  """``train_step(state, batch, rng) -> (state, metrics)``, compiled once.

  Closes over the device-resident data and the teacher's variables and passes
  them to the jitted function as (non-donated) arguments rather than baking
  them into the program as constants. ``jitted`` is the underlying
  ``jax.jit`` function (its ``_cache_size()`` counts compilations).
  """

  def __init__(self, jitted, teacher_variables, data: DeviceData):
    self.jitted = jitted
    self._teacher_variables = teacher_variables
    self._data = data

  def __call__(self, state: TrainState, batch, rng):
    return self.jitted(state, self._teacher_variables, self._data, batch, rng)


def make_train_step(graphdef, objective: Callable, optimizer: optax.GradientTransformation,
                    preprocess: Preprocess, teacher: Teacher | None, data: DeviceData,
                    mesh) -> TrainStep:
  """Builds the pure step and compiles it with explicit shardings and donation.

  ``batch`` is ``{"index": int32[B], "mask": bool[B]}`` sharded over ``data``;
  ``rng`` is the run's base key (the same every step: the step folds in
  ``state.step``);
  the state and the dataset are replicated, the teacher's variables keep the
  shardings they were placed with (FSDP over ``model`` for a large teacher).
  """

  def step_fn(state: TrainState, teacher_variables, data: DeviceData, batch, rng):
    index, mask = batch["index"], batch["mask"]
    # A fresh key every step without a host dispatch; a resumed run draws the same keys.
    rng = jax.random.fold_in(rng, state.step)
    images = preprocess(data.images[index], rng)
    labels = data.labels[index]
    if data.teacher_logits is not None:        # cached teacher outputs
      teacher_out = (data.teacher_logits[index],
                     {n: f[index] for n, f in (data.teacher_features or {}).items()})
    elif teacher is not None:
      teacher_out = teacher(teacher_variables, images)
    else:
      teacher_out = None

    def loss_fn(params):
      student_out, new_model_state = forward(graphdef, params, state.model_state, images, train=True)
      loss, metrics = objective(state.step, student_out, teacher_out, labels, mask)
      logits = student_out[0]
      correct = (jnp.argmax(logits, -1) == labels) & mask
      metrics["accuracy"] = jnp.sum(correct) / jnp.maximum(jnp.sum(mask), 1)
      return loss, (new_model_state, metrics)

    grads, (new_model_state, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    new_state = TrainState(step=state.step + 1, params=params, model_state=new_model_state,
                           opt_state=opt_state)
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  compiled = jax.jit(
      step_fn, donate_argnums=(0,),
      in_shardings=(replicated, None, replicated, batch_sharding, replicated),
      out_shardings=(replicated, replicated))
  return TrainStep(compiled, teacher.variables if teacher is not None else None, data)


def make_predict(graphdef, preprocess: Preprocess, mesh, feature_names=()):
  """Compiles ``predict(params, model_state, data, index) -> (logits, features)`` in eval mode."""

  def predict_fn(params, model_state, data: DeviceData, index):
    x = preprocess(data.images[index])
    (logits, features), _ = forward(graphdef, params, model_state, x, train=False,
                                    feature_names=feature_names)
    return logits.astype(jnp.float32), features

  # Outputs are replicated (all-gathered inside the program) so that every process
  # can read them: NumPy cannot read an array whose shards live on other hosts.
  return jax.jit(predict_fn,
                 in_shardings=(None, None, parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


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


def predict_all(predict, variables, data: DeviceData, batch_size: int, mesh):
  """Runs ``predict`` over a whole split; returns host arrays with the padding removed.

  Exact whatever the device and process count: every example is predicted once,
  the padded rows of the last batch are dropped, and every process gets all rows.
  """
  rows = parallel.process_rows(mesh, batch_size)
  logits, features, n = [], {}, data.size
  for index, mask in padded_batches(n, batch_size):
    out_logits, out_features = predict(*variables, data,
                                       parallel.global_batch(index[rows], mesh, batch_size))
    valid = int(mask.sum())
    logits.append(np.asarray(out_logits)[:valid])
    for name, f in out_features.items():
      features.setdefault(name, []).append(np.asarray(f)[:valid])
  return np.concatenate(logits), {k: np.concatenate(v) for k, v in features.items()}


def round_up(value: int, multiple: int) -> int:
  return int(math.ceil(value / multiple) * multiple)


# --------------------------------------------------------------------------- the loop

@dataclasses.dataclass
class FitResult:
  module: nnx.Module           # the trained module (a methods.Student)
  test_logits: np.ndarray      # final-step logits on the full test split
  history: list                # one eval record per epoch
  best_test_accuracy: float
  wall_seconds: float          # wall time of this call, set-up and compilation included
  train_seconds: float         # wall time of this call's loop, after the first (compiling) step
  eval_seconds: float          # of which evaluating the test split
  checkpoint_seconds: float    # of which saving checkpoints
  steps: int
  steps_run: int               # steps run in this call
  resumed_from_step: int       # 0 for a fresh run
  compile_seconds: float
  step_compiles: int           # compilations of the train step in this call (1 expected)

  @property
  def steps_per_second(self) -> float | None:
    """Training steps per second of this call, evaluation and checkpoint time excluded.

    Counts the steps after the first (which compiles); None when fewer than two ran.
    """
    stepping = self.train_seconds - self.eval_seconds - self.checkpoint_seconds
    return (self.steps_run - 1) / stepping if self.steps_run > 1 and stepping > 0 else None


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


def fit(*, name: str, module: nnx.Module, objective: Callable, train_config,
        train_data: DeviceData, test_data: DeviceData, preprocess: Preprocess, mesh,
        workdir: str, seed: int, teacher: Teacher | None = None,
        checkpoint_every_steps: int = 0, keep_checkpoints: int = 2,
        log_every_steps: int = 50, show_progress: bool = True,
        stop_at_step: int | None = None, identity: dict | None = None) -> FitResult:
  """Trains ``module`` and returns it with its final test logits.

  Resumes from the latest checkpoint in ``workdir/checkpoints``. Writes
  ``workdir/metrics.jsonl`` and TensorBoard events under ``workdir/tb``
  (:mod:`kd_jax.run_log`: each step once, also across a resume).
  ``stop_at_step`` aborts with ``KeyboardInterrupt`` when that step is reached
  (without saving), to test resumption the way a kill would exercise it.
  ``identity`` (a JSON-able dict of what the phase's results depend on) is
  stored in every checkpoint; a checkpoint with another identity is refused,
  before anything compiles.

  Raises:
    NonFiniteLossError: the training loss became NaN/Inf (the last good
      checkpoint is kept; nothing is saved after the bad step).
    WorkdirConflictError: the checkpoints belong to a different ``identity``.
  """
  called = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  t = train_config
  data_devices = mesh.shape[parallel.DATA_AXIS]
  if t.batch_size % data_devices:
    raise ConfigError("train.batch_size", f"train.batch_size={t.batch_size} must be divisible "
                      f"by the {data_devices} data-parallel devices (mesh.data)")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep_checkpoints)
  record = workdir_lib.identity_record(identity) if identity is not None else None
  if record is not None:
    _check_checkpoint_identity(checkpointer, record)
  n = train_data.size
  feeder = BatchFeeder(n, t.batch_size, seed, mesh)
  steps_per_epoch = feeder.steps_per_epoch
  total_steps = max(1, round(t.epochs * steps_per_epoch))
  optimizer = make_optimizer(t, total_steps)

  graphdef, params, model_state = split_module(module)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                     opt_state=optimizer.init(params))
  state = parallel.put_replicated(state, mesh)
  train_step = make_train_step(graphdef, objective, optimizer, preprocess, teacher, train_data,
                               mesh)
  predict = make_predict(graphdef, preprocess, mesh)
  eval_batch = round_up(min(t.eval_batch_size, test_data.size), data_devices)
  base_key = replicated_key(seed, mesh)

  meta = {"history": [], "best_test_accuracy": 0.0, "identity": record}
  restored = checkpointer.restore(state)
  if restored is not None:
    state, meta, _ = restored
    logging.info("%s: resumed from step %d", name, int(state.step))
  start_step = int(state.step)

  def evaluate(state):
    logits, _ = predict_all(predict, (state.params, state.model_state), test_data, eval_batch, mesh)
    return logits, metrics_lib.accuracy(logits, np.asarray(test_data.labels))

  run_log = RunLog(workdir, resume_step=start_step, resumed_evals=meta["history"])
  bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                  disable=not show_progress or jax.process_index() != 0, dynamic_ncols=True)
  # The progress bar shows the last epoch's test accuracy next to the running train metrics.
  shown = {"test_acc": f"{meta['history'][-1]['test_accuracy']:.2%}" if meta["history"] else "-"}
  pending = None         # (step, device metrics) of the last step dispatched, read one step late
  last_saved = restored[2] if restored else None
  compile_seconds = eval_seconds = checkpoint_seconds = 0.0
  timer_start = None
  test_logits = None

  def read_metrics(step, step_metrics):
    """Checks one step's loss and logs the step when it is due.

    The loop reads each step while the next one runs, so the host never waits
    on the step it has just dispatched.

    Raises:
      NonFiniteLossError: the loss is NaN/Inf.
    """
    loss = float(np.asarray(step_metrics["loss"]))
    if not math.isfinite(loss):
      raise NonFiniteLossError(
          f"{name}: the loss became {loss} at step {step}. Stopping; the last good checkpoint "
          f"(step {last_saved}) is kept in {checkpointer.directory}. Lower the learning rate "
          "or check the inputs.")
    if step % log_every_steps == 0 or step == total_steps - 1:
      # np.asarray per leaf: cheaper than one jax.device_get of the whole dict.
      record = {"step": step, **{k: float(np.asarray(v)) for k, v in step_metrics.items()}}
      shown.update(loss=f"{record['loss']:.4f}", train_acc=f"{record['accuracy']:.2%}")
      bar.set_postfix(shown, refresh=False)
      run_log.train(record)

  try:
    for step in range(start_step, total_steps):
      if stop_at_step is not None and step == stop_at_step:
        raise KeyboardInterrupt(f"stop_at_step={stop_at_step}")
      batch = feeder(step)
      if step == start_step:
        compile_start = time.perf_counter()
        state, step_metrics = train_step(state, batch, base_key)
        jax.block_until_ready(step_metrics)
        compile_seconds = time.perf_counter() - compile_start
        timer_start = time.perf_counter()
      else:
        state, step_metrics = train_step(state, batch, base_key)
      if pending is not None:
        read_metrics(*pending)            # the previous step's, while this one runs
      pending = (step, step_metrics)
      bar.update(1)
      done = step + 1
      end_of_epoch = done % steps_per_epoch == 0 or done == total_steps
      periodic = checkpoint_every_steps and done % checkpoint_every_steps == 0
      if end_of_epoch or periodic:
        read_metrics(*pending)           # never save a state that followed a NaN loss
        pending = None
        if end_of_epoch:
          eval_start = time.perf_counter()
          test_logits, test_accuracy = evaluate(state)
          eval_seconds += time.perf_counter() - eval_start
          evaluation = {"step": done, "epoch": done / steps_per_epoch,
                        "test_accuracy": test_accuracy}
          meta["history"].append(evaluation)
          meta["best_test_accuracy"] = max(meta["best_test_accuracy"], test_accuracy)
          run_log.eval(evaluation)
          shown["test_acc"] = f"{test_accuracy:.2%}"
          bar.set_postfix(shown)
          logging.info("%s: step %d test accuracy %.4f", name, done, test_accuracy)
        save_start = time.perf_counter()
        checkpointer.save(done, state, meta)
        checkpoint_seconds += time.perf_counter() - save_start
        last_saved = done
    if pending is not None:
      read_metrics(*pending)
  finally:
    bar.close()
    run_log.close()
    checkpointer.close()

  train_seconds = time.perf_counter() - timer_start if timer_start else 0.0
  if test_logits is None:     # nothing left to run: the checkpoint was final
    test_logits, _ = evaluate(state)
  trained = nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
  return FitResult(module=trained, test_logits=test_logits, history=meta["history"],
                   best_test_accuracy=meta["best_test_accuracy"],
                   wall_seconds=time.perf_counter() - called, train_seconds=train_seconds,
                   eval_seconds=eval_seconds, checkpoint_seconds=checkpoint_seconds,
                   steps=total_steps, steps_run=total_steps - start_step,
                   resumed_from_step=start_step, compile_seconds=compile_seconds,
                   step_compiles=train_step.jitted._cache_size())  # pylint: disable=protected-access


def _check_checkpoint_identity(checkpointer: Checkpointer, record: dict) -> None:
  """Refuses checkpoints written for another identity (reads only their small metadata)."""
  meta = checkpointer.latest_meta()
  if meta is None or (meta.get("identity") or {}).get("key") == record["key"]:
    return
  recorded = (meta.get("identity") or {}).get("fields")
  if recorded is None:
    raise WorkdirConflictError(
        f"the checkpoints in {checkpointer.directory} do not record the config they were "
        "trained with (written by an older kd_jax), so they cannot be resumed safely; use "
        "a new --workdir.")
  raise WorkdirConflictError(workdir_lib.conflict_message(
      f"the checkpoints in {checkpointer.directory}", recorded, record["fields"],
      "Use a new --workdir for this config (the earlier run's checkpoints are kept)."))
