"""The pure, jitted train and eval steps every task shares.

The hot loop is one function compiled once per run::

    train_step(state, batch, rng) -> (state, metrics)

``state`` is a :class:`TrainState` pytree (the student's parameters, its
non-parameter variables such as BatchNorm statistics, the optax state, and
the step). It is donated: its buffers are reused for the new state. The
teacher's variables enter the compiled function as a separate, never-donated
argument and only through ``jax.lax.stop_gradient`` — only the student is
differentiated.

What a batch means belongs to the *task* (:mod:`kd_jax.tasks`): the step hands it
the device-resident data, the batch's example indices, their validity mask and
a key, and gets back ``(inputs, targets, loss_mask)``; it also asks the task for
the metrics to log. The teacher reaches the step live (run inside it on the same
inputs), cached (its outputs precomputed for every example and gathered by index:
``data.teacher_logits``, ``data.teacher_features``) or not at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from kd_jax import models
from kd_jax.engine import feeding
from kd_jax.core import parallel, tracing


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimiser steps taken
  params: Any            # nnx.State of nnx.Param (student model + adapters)
  model_state: Any       # every other variable (BatchNorm statistics)
  opt_state: Any


def split_module(module: nnx.Module):
  """``(graphdef, params, model_state)`` with parameters separated from the rest."""
  return nnx.split(module, nnx.Param, ...)


def forward(graphdef, params, model_state, x, *, train: bool, feature_names=(),
            head_inputs: bool = False):
  """Runs a model (or :class:`~kd_jax.methods.Student`) functionally.

  ``x`` is the model's input, or a tuple of its positional inputs. Returns
  ``((logits, features), new_model_state)``; ``features`` holds
  ``feature_names`` (for a raw model) or the student's matched layers. With
  ``head_inputs`` (a GPT), ``logits`` is instead ``(hidden, head)``
  (``GPT.hidden_and_head``), for the fused-linear loss that never makes the logits.
  """
  # copy=True: fresh Variables at this trace level, so BatchNorm may update its
  # statistics inside jax.grad (merging the outer trace's Variables would not allow it).
  module = nnx.merge(graphdef, params, model_state, copy=True)
  if head_inputs:
    out = (getattr(module, "model", module).hidden_and_head(x), {})
  elif hasattr(module, "pairs"):               # a methods.Student wrapper
    out = module(x, train=train)
  elif feature_names:
    logits, features = module(x, train=train, return_features=True)
    features = {**features, models.LOGITS_FEATURE: logits}    # (the output is a feature too)
    out = (logits, {n: features[n] for n in feature_names})
  elif isinstance(x, tuple):   # several positional inputs (a denoiser's (z_t, t, labels))
    out = (module(*x, train=train), {})
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
  head_inputs: bool = False   # give (hidden, head) instead of logits (see forward)

  def __call__(self, variables, x):
    (logits, features), _ = forward(self.graphdef, *variables, x, train=False,
                                    feature_names=self.feature_names,
                                    head_inputs=self.head_inputs)
    if not self.head_inputs:
      logits = logits.astype(jnp.float32)
    return jax.lax.stop_gradient((logits, features))


class TrainStep:
  """``train_step(state, batch, rng) -> (state, metrics)``, compiled once.

  Closes over the device-resident data and the teacher's variables and passes
  them to the jitted function as (non-donated) arguments rather than baking
  them into the program as constants. ``jitted`` is the underlying
  ``jax.jit`` function, of a :func:`kd_jax.core.tracing.count_traces` step:
  :attr:`compilations` counts the programs built for it.
  """

  def __init__(self, jitted, teacher_variables, data):
    self.jitted = jitted
    self._teacher_variables = teacher_variables
    self._data = data

  def __call__(self, state: TrainState, batch, rng):
    return self.jitted(state, self._teacher_variables, self._data, batch, rng)

  @property
  def compilations(self) -> int:
    """Programs built for the step so far (its traces: 1 unless a batch changed shape)."""
    return tracing.traces(self.jitted)


def logs_at(step, every: int, total_steps: int | None):
  """Whether optimiser step ``step`` (0-based) is logged: every ``every``-th, and the last.

  One rule for the loop (Python ints) and the step (a traced ``state.step``), so
  that the step computes its log-only metrics exactly on the steps the loop logs.
  """
  logged = step % every == 0
  return logged if total_steps is None else logged | (step == total_steps - 1)


def make_train_step(graphdef, objective: Callable, optimizer: optax.GradientTransformation,
                    task, teacher: Teacher | None, data, mesh, *, log_every_steps: int = 1,
                    total_steps: int | None = None) -> TrainStep:
  """Builds the pure step and compiles it with explicit shardings and donation.

  ``task`` turns an index batch into ``(inputs, targets, loss_mask)`` and names the
  step's metrics (:mod:`kd_jax.tasks`); ``data`` is its device-resident split.
  ``batch`` is ``{"index": int32[B], "mask": bool[B]}`` sharded over ``data``;
  ``rng`` is the run's base key (the same every step: the step folds in
  ``state.step``); the state and the dataset are replicated, the teacher's
  variables keep the shardings they were placed with (FSDP over ``model`` for a
  large teacher).

  Metrics that only the log reads (the task's train metrics, ``grad_norm``) are
  computed on the steps :func:`logs_at` (``log_every_steps``, ``total_steps``)
  names and are NaN on the others, behind a ``lax.cond``: a small model's step is
  a few dozen kernels, and the gradient norm's per-leaf reductions are a share of
  them worth skipping (``benchmarks/overhead.py``, docs/performance.md). The loss
  and the objective's own terms come every step; with the default
  ``log_every_steps=1`` every step computes everything.
  """

  # An objective that takes (hidden, head) pairs (kd with loss_chunk_size > 0) says so.
  head_inputs = getattr(objective, "head_inputs", False)

  def step_fn(state: TrainState, teacher_variables, data, batch, rng):
    index = batch["index"]
    # A fresh key every step without a host dispatch; a resumed run draws the same keys.
    rng = jax.random.fold_in(rng, state.step)
    # The student being trained, for tasks that sample their batches from it (on-policy).
    policy = (graphdef, state.params, state.model_state)
    inputs, targets, loss_mask, batch_metrics = task.train_batch(
        data, index, batch["mask"], rng, policy=policy,
        teacher=None if teacher is None else (teacher.graphdef, teacher_variables))
    if data.teacher_logits is not None:        # cached teacher outputs
      teacher_out = (data.teacher_logits[index],
                     {n: f[index] for n, f in (data.teacher_features or {}).items()})
    elif teacher is not None and hasattr(task, "teacher_outputs"):
      # The teacher reads inputs of its own (another tokenizer's tokens of the same text):
      # the task runs it and puts its outputs where the student's positions are.
      teacher_out = task.teacher_outputs(data, index, lambda x: teacher(teacher_variables, x))
    elif teacher is not None:
      teacher_out = teacher(teacher_variables, inputs)
    else:
      teacher_out = None

    def when_logged(metrics_fn, *args):
      """``metrics_fn(*args)`` on a logged step (logs_at), NaN of the same shapes on the others."""
      if log_every_steps == 1:
        return metrics_fn(*args)
      nans = lambda *args: jax.tree.map(lambda s: jnp.full(s.shape, jnp.nan, s.dtype),
                                        jax.eval_shape(metrics_fn, *args))
      return jax.lax.cond(logs_at(state.step, log_every_steps, total_steps),
                          metrics_fn, nans, *args)

    def loss_fn(params):
      student_out, new_model_state = forward(graphdef, params, state.model_state, inputs,
                                             train=True, head_inputs=head_inputs)
      loss, metrics = objective(state.step, student_out, teacher_out, targets, loss_mask)
      if not head_inputs:      # (the fused loss never makes the logits the metrics need)
        metrics.update(when_logged(task.train_metrics, jax.lax.stop_gradient(student_out[0]),
                                   targets, loss_mask))
      metrics.update(batch_metrics)
      return loss, (new_model_state, metrics)

    grads, (new_model_state, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = when_logged(optax.tree.norm, grads)
    new_state = TrainState(step=state.step + 1, params=params, model_state=new_model_state,
                           opt_state=opt_state)
    return new_state, metrics

  replicated = parallel.replicated(mesh)
  batch_sharding = parallel.batch_sharding(mesh)
  compiled = jax.jit(
      tracing.count_traces(step_fn), donate_argnums=(0,),
      in_shardings=(replicated, None, replicated, batch_sharding, replicated),
      out_shardings=(replicated, replicated))
  return TrainStep(compiled, teacher.variables if teacher is not None else None, data)


def make_predict(graphdef, task, mesh, feature_names=(), logits_fn=None):
  """Compiles ``predict(params, model_state, data, index) -> (logits, features)`` in eval mode.

  ``task.eval_inputs(data, index)`` gives the model's inputs (no augmentation).
  ``logits_fn`` transforms the float32 logits on the devices (e.g. to their top-k,
  :func:`kd_jax.objectives.topk.from_logits`), so that only its result leaves them.
  """

  def predict_fn(params, model_state, data, index):
    x = task.eval_inputs(data, index)
    (logits, features), _ = forward(graphdef, params, model_state, x, train=False,
                                    feature_names=feature_names)
    logits = logits.astype(jnp.float32)
    return (logits_fn(logits) if logits_fn else logits), features

  # Outputs are replicated (all-gathered inside the program) so that every process
  # can read them: NumPy cannot read an array whose shards live on other hosts.
  return jax.jit(predict_fn,
                 in_shardings=(None, None, parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))


def predict_all(predict, variables, data, batch_size: int, mesh):
  """Runs ``predict`` over a whole split; returns host arrays with the padding removed.

  Exact whatever the device and process count: every example is predicted once,
  the padded rows of the last batch are dropped, and every process gets all rows.
  """
  rows = parallel.process_rows(mesh, batch_size)
  logits, features, n = [], {}, data.size
  for index, mask in feeding.padded_batches(n, batch_size):
    out_logits, out_features = predict(*variables, data,
                                       parallel.global_batch(index[rows], mesh, batch_size))
    valid = int(mask.sum())
    # The logits may be a pytree (the top-k form): every leaf is indexed by example.
    logits.append(jax.tree.map(lambda x: np.asarray(x)[:valid], out_logits))
    for name, f in out_features.items():
      features.setdefault(name, []).append(np.asarray(f)[:valid])
  return (jax.tree.map(lambda *xs: np.concatenate(xs), *logits),
          {k: np.concatenate(v) for k, v in features.items()})
