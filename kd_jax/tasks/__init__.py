"""Tasks: what a batch and an evaluation mean, for the one engine (kd_jax.step, kd_jax.loop).

A task object tells the engine, inside the jitted step and on the host:

* ``train_batch(data, index, mask, rng, policy=None, teacher=None) -> (inputs, targets,
  loss_mask, metrics)`` — a training batch from the device-resident split ``data``:
  ``index`` ``[B]`` are the examples, ``mask`` ``[B]`` which rows are real (the ragged
  last batch is padded), ``rng`` the step's key (augmentation, sampling), ``policy`` the
  student being trained, ``(graphdef, params, model_state)``, for tasks that sample
  batches from it (on-policy distillation), ``teacher`` the live teacher's
  ``(graphdef, (params, model_state))`` for tasks that sample from it too (MiniLLM's
  teacher-mixed sampling), None without one. ``loss_mask`` has the leading shape of
  the per-position losses (``[B]`` for classification, ``[B, T]`` for tokens) and
  includes ``mask``; ``metrics`` are logged with the step's.
* ``eval_inputs(data, index)`` — the model's inputs for evaluation (no augmentation).
* ``train_metrics(logits, targets, loss_mask) -> dict`` — metrics logged each step.
* ``evaluator(graphdef, data, batch_size, mesh)`` — compiles what evaluation needs
  once and returns ``evaluate(variables) -> (metrics, outputs)``: the model on a
  whole held-out split; ``metrics`` holds the task's ``headline`` (a class
  attribute; ``higher_is_better`` defaults to True) and ``outputs`` is whatever
  the task's report needs.

For caches of teacher outputs (:mod:`kd_jax.teacher_cache`) a task also says
whether it ``augments`` the training inputs and gives ``input_identity()``, what
turns stored data into model inputs.

``data`` is a dataclass pytree with a ``size`` and the optional cached teacher outputs
``teacher_logits`` / ``teacher_features`` (indexed by example, aligned with
``inputs``).

Tasks: :mod:`kd_jax.tasks.classification` (images → classes) and
:mod:`kd_jax.tasks.lm` (causal language modelling on prompt/response pairs),
which :mod:`kd_jax.tasks.arithmetic` sets up for the arithmetic reasoning data and
:mod:`kd_jax.tasks.text` for text corpora, and :mod:`kd_jax.tasks.embedding`
(sentences → embeddings, distilling a pretrained sentence encoder).
Each experiment module's ``prepare(config, mesh, dtype)`` gives the experiment a
:class:`Prepared`: the config flows config → task → engine → report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Prepared:
  """One experiment's task, data and task-specific steps, as :mod:`kd_jax.experiment` uses them.

  Attributes:
    task: the batch/evaluation object described above.
    train_data, test_data: the splits on the devices.
    student_train_data: the students' transfer set (``train_data`` unless the
      task leaves examples out).
    num_outputs: classes, or the vocabulary size: what a saved teacher must predict.
    build: ``build(spec, seed, role) -> module`` for a config's ``teacher``/``student``.
    evaluate_teacher: ``(graphdef, variables, batch_size) -> (report, reference)``:
      the teacher's ``results.json`` fields and what the students' reports compare
      against (its test logits, or the teacher itself).
    student_report: ``(fit, module, reference, batch_size) -> dict``: a trained
      student's task metrics (the engine adds timing and history).
    student_task: the task of the distilled student's training when it differs from
      ``task`` (on-policy distillation samples its batches); None: ``task``.
    teacher_data: ``(teacher_module, teacher_identity, cache_dir) -> (data, stats)``:
      the students' training data written by the teacher (sequence-level KD), when
      the config asks for it (``student_data="transfer"``); None otherwise.
    student_data: ``(student_module, teacher_module, teacher_identity, cache_dir) ->
      (data, stats)``: the distilled student's training data made from the starting
      student itself (DPO's preference pairs: its samples, ranked or paired with the
      teacher's; a policy-gradient student's prompts with the starting student as its
      reference), after it was initialised; None otherwise. ``stats`` (None: none) go
      to ``results.json``'s ``preference_pairs``.
  """
  task: Any
  train_data: Any
  student_train_data: Any
  test_data: Any
  num_outputs: int
  build: Callable
  evaluate_teacher: Callable
  student_report: Callable
  teacher_data: Callable | None = None
  student_task: Any = None
  student_data: Callable | None = None


def prepare(config, mesh, dtype) -> Prepared:
  """The task family of ``config.dataset.name``, prepared on ``mesh``."""
  from kd_jax.tasks import arithmetic, classification, embedding, text  # pylint: disable=g-import-not-at-top
  families = {**{name: arithmetic for name in arithmetic.DATASETS},
              **{name: text for name in text.DATASETS},
              **{name: embedding for name in embedding.DATASETS}}
  family = families.get(config.dataset.name, classification)
  return family.prepare(config, mesh, dtype)
