"""The training loop every task shares: ``fit`` trains a module with a task's batches and
evaluation, resumes from checkpoints and logs each step once.

The loop keeps host work per step small, because a small model's step can take
less time than a host-to-device transfer plus eager dispatches (measured in
docs/performance.md, benchmarks/overhead.py): an epoch's index batches go to the
devices in one transfer (:class:`kd_jax.engine.feeding.BatchFeeder`), the step derives
its random key from ``state.step`` itself, and metrics are read one step late,
so the host never waits on the step it has just dispatched.

Several devices and hosts: the batch is split over the mesh's ``data`` axis
and each process contributes only its own rows (see :mod:`kd_jax.core.parallel`);
the student's state is replicated, so every process holds the same parameters.
All processes run :func:`fit` in lockstep (the steps and the orbax checkpoint
saves and restores are collective); only process 0 writes ``metrics.jsonl``,
TensorBoard events and the progress bar.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from kd_jax.engine import feeding
from kd_jax.engine import optim
from kd_jax.core import parallel
from kd_jax.engine import step as step_lib
from kd_jax.config import records
from kd_jax.core.identity import identity_record
from kd_jax.engine.checkpoint import Checkpointer
from kd_jax.core.errors import ConfigError, WorkdirConflictError
from kd_jax.engine.run_log import RunLog


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class FitResult:
  module: nnx.Module           # the trained module (a methods.Student, or the bare model)
  final: dict                  # the task's metrics after the last step (its headline among them)
  test_outputs: Any            # what the task's final evaluation returned (classification: logits)
  history: list                # one eval record per epoch (or train.eval_every_steps): {"step", "epoch", **metrics}
  best: float                  # the best end-of-epoch value of the task's headline metric
  wall_seconds: float          # wall time of this call, set-up and compilation included
  train_seconds: float         # wall time of this call's loop, after the first (compiling) step
  eval_seconds: float          # of which evaluating the test split
  checkpoint_seconds: float    # of which saving checkpoints
  steps: int
  steps_run: int               # steps run in this call
  resumed_from_step: int       # 0 for a fresh run
  compile_seconds: float
  step_compiles: int           # programs built for the train step in this call (1 expected)
  # Rows trained on in all: steps × batch size × the task's rows per example (a DPO pair is
  # 2 rows, a policy-gradient prompt its k samples); the budget in sequences.
  train_rows: int = 0
  workdir: str = ""            # the phase's directory (checkpoints, logs, what its report writes)

  @property
  def steps_per_second(self) -> float | None:
    """Training steps per second of this call, evaluation and checkpoint time excluded.

    Counts the steps after the first (which compiles); None when fewer than two ran.
    """
    stepping = self.train_seconds - self.eval_seconds - self.checkpoint_seconds
    return (self.steps_run - 1) / stepping if self.steps_run > 1 and stepping > 0 else None


def fit(*, name: str, module: nnx.Module, objective: Callable, train_config,
        train_data, test_data, task, mesh, workdir: str, seed: int,
        teacher: step_lib.Teacher | None = None,
        checkpoint_every_steps: int = 0, keep_checkpoints: int = 2,
        log_every_steps: int = 50, show_progress: bool = True,
        stop_at_step: int | None = None, identity: dict | None = None) -> FitResult:
  """Trains ``module`` on ``task``'s batches of ``train_data``; returns it with its final evaluation.

  ``task`` (:mod:`kd_jax.tasks`) makes the step's batches and evaluates the model
  on ``test_data`` at the end of every epoch; its ``headline`` metric is tracked
  (``best``, the progress bar).

  Resumes from the latest checkpoint in ``workdir/checkpoints``. Writes
  ``workdir/metrics.jsonl`` and TensorBoard events under ``workdir/tb``
  (:mod:`kd_jax.engine.run_log`: each step once, also across a resume).
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
    rows = getattr(task, "rows_per_example", 1)
    # (A policy-gradient phase's batch is train.batch_size / rl.k prompts: methods.py.)
    what = (f"train.batch_size={t.batch_size}" if rows == 1 else
            f"this phase's batch of {t.batch_size} examples ({rows} rows each)")
    raise ConfigError("train.batch_size", f"{what} must be divisible by the {data_devices} "
                      "data-parallel devices (mesh.data)")
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), keep=keep_checkpoints)
  record = identity_record(identity) if identity is not None else None
  if record is not None:
    _check_checkpoint_identity(checkpointer, record)
  n = train_data.size
  feeder = feeding.BatchFeeder(n, t.batch_size, seed, mesh)
  steps_per_epoch = feeder.steps_per_epoch
  # A fixed number of steps when the config gives one, else the epochs' worth.
  total_steps = t.get("steps") or max(1, round(t.epochs * steps_per_epoch))
  # Evaluations (the history) every N steps when set, else at the end of each epoch.
  eval_every_steps = t.get("eval_every_steps", 0)
  optimizer = optim.make_optimizer(t, total_steps)

  graphdef, params, model_state = step_lib.split_module(module)
  state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              model_state=model_state, opt_state=optimizer.init(params))
  state = parallel.put_replicated(state, mesh)
  train_step = step_lib.make_train_step(graphdef, objective, optimizer, task, teacher,
                                        train_data, mesh, log_every_steps=log_every_steps,
                                        total_steps=total_steps)
  eval_batch = feeding.eval_batch_size(t.eval_batch_size, test_data.size, mesh)
  evaluator = task.evaluator(graphdef, test_data, eval_batch, mesh)
  base_key = feeding.replicated_key(seed, mesh)
  headline = task.headline
  better = max if getattr(task, "higher_is_better", True) else min

  meta = {"history": [], "best": None, "identity": record}
  restored = checkpointer.restore(state)
  if restored is not None:
    state, meta, _ = restored
    logging.info("%s: resumed from step %d", name, int(state.step))
  start_step = int(state.step)

  def evaluate(state):
    return evaluator((state.params, state.model_state))

  run_log = RunLog(workdir, resume_step=start_step, resumed_evals=meta["history"])
  bar = tqdm.tqdm(total=total_steps, initial=start_step, desc=name, unit="step",
                  disable=not show_progress or jax.process_index() != 0, dynamic_ncols=True)
  # The progress bar shows the last epoch's headline metric next to the running train metrics.
  show = functools.partial(_format, headline)
  shown = {headline: show(meta["history"][-1][headline]) if meta["history"] else "-"}
  pending = None         # (step, device metrics) of the last step dispatched, read one step late
  last_saved = restored[2] if restored else None
  compile_seconds = eval_seconds = checkpoint_seconds = 0.0
  timer_start = None
  final = test_outputs = None

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
    if step_lib.logs_at(step, log_every_steps, total_steps):
      # np.asarray per leaf: cheaper than one jax.device_get of the whole dict.
      record = {"step": step, **{k: float(np.asarray(v)) for k, v in step_metrics.items()}}
      shown["loss"] = f"{record['loss']:.4f}"
      for key in record:                    # the task's train accuracy (accuracy, token_accuracy)
        if key.endswith("accuracy"):
          shown[f"train_{key}"] = _format(key, record[key])
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
      due_eval = (done % eval_every_steps == 0 if eval_every_steps
                  else done % steps_per_epoch == 0) or done == total_steps
      periodic = checkpoint_every_steps and done % checkpoint_every_steps == 0
      if due_eval or periodic:
        read_metrics(*pending)           # never save a state that followed a NaN loss
        pending = None
        if due_eval:
          eval_start = time.perf_counter()
          final, test_outputs = evaluate(state)
          eval_seconds += time.perf_counter() - eval_start
          evaluation = {"step": done, "epoch": done / steps_per_epoch, **final}
          meta["history"].append(evaluation)
          value = final[headline]
          meta["best"] = value if meta["best"] is None else better(meta["best"], value)
          run_log.eval(evaluation)
          shown[headline] = show(value)
          bar.set_postfix(shown)
          logging.info("%s: step %d %s %.4f", name, done, headline, value)
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
  if final is None:     # nothing left to run: the checkpoint was final
    final, test_outputs = evaluate(state)
  trained = nnx.merge(graphdef, jax.device_get(state.params), jax.device_get(state.model_state))
  return FitResult(module=trained, final=final, test_outputs=test_outputs, workdir=workdir,
                   history=meta["history"], best=meta["best"],
                   wall_seconds=time.perf_counter() - called, train_seconds=train_seconds,
                   eval_seconds=eval_seconds, checkpoint_seconds=checkpoint_seconds,
                   steps=total_steps, steps_run=total_steps - start_step,
                   resumed_from_step=start_step, compile_seconds=compile_seconds,
                   step_compiles=train_step.compilations,
                   train_rows=total_steps * t.batch_size * getattr(task, "rows_per_example", 1))


def _format(metric: str, value: float) -> str:
  """Fractions (accuracies, exact match) as percentages, anything else to 4 decimals."""
  return f"{value:.2%}" if metric.endswith("accuracy") or metric == "exact_match" else f"{value:.4f}"


def _check_checkpoint_identity(checkpointer: Checkpointer, record: dict) -> None:
  """Refuses checkpoints written for another identity (reads only their small metadata)."""
  meta = checkpointer.latest_meta()
  if meta is None or (meta.get("identity") or {}).get("key") == record["key"]:
    return
  recorded = (meta.get("identity") or {}).get("fields")
  if recorded is not None and records.same_results(recorded, record["fields"]):
    return      # written before a field with a default was added (see config.records.differences)
  if recorded is None:
    raise WorkdirConflictError(
        f"the checkpoints in {checkpointer.directory} do not record the config they were "
        "trained with (written by an older kd_jax), so they cannot be resumed safely; use "
        "a new --workdir.")
  raise WorkdirConflictError(records.conflict_message(
      f"the checkpoints in {checkpointer.directory}", recorded, record["fields"],
      "Use a new --workdir for this config (the earlier run's checkpoints are kept)."))


def load_trained(module: nnx.Module, train_config, workdir: str, identity: dict) -> int:
  """Loads into ``module`` the weights of the finished `fit` in ``workdir`` (its last checkpoint).

  The checkpoint must have been written for ``identity`` (as `fit` checks on resume).
  Returns the step it was saved at.

  Raises:
    FileNotFoundError: ``workdir`` has no checkpoint.
    WorkdirConflictError: the checkpoint belongs to another config.
  """
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    _check_checkpoint_identity(checkpointer, identity_record(identity))
    _, params, model_state = step_lib.split_module(module)
    # The optimiser state is restored too (its structure does not depend on the budget).
    optimizer = optim.make_optimizer(train_config, 1)
    target = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                 model_state=model_state, opt_state=optimizer.init(params))
    restored = checkpointer.restore(target)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"no checkpoint in {checkpointer.directory} to initialise from")
  state, _, saved_step = restored
  nnx.update(module, state.params, state.model_state)
  return saved_step
