"""Tasks: what a batch and an evaluation mean, for the one engine (kd_jax.engine).

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

For caches of teacher outputs (:mod:`kd_jax.engine.teacher_cache`) a task also says
whether it ``augments`` the training inputs and gives ``input_identity()``, what
turns stored data into model inputs.

``data`` is a dataclass pytree with a ``size`` and the optional cached teacher outputs
``teacher_logits`` / ``teacher_features`` (indexed by example, aligned with
``inputs``).

Tasks: :mod:`kd_jax.tasks.classification` (images → classes) and
:mod:`kd_jax.tasks.lm` (causal language modelling on prompt/response pairs),
which :mod:`kd_jax.tasks.arithmetic` sets up for the arithmetic reasoning data and
:mod:`kd_jax.tasks.text` for text corpora, and :mod:`kd_jax.tasks.embedding`
(sentences → embeddings, distilling a pretrained sentence encoder), and
:mod:`kd_jax.tasks.diffusion` (image generation by a denoiser: Fashion-MNIST, issue 24).
A task family (DESIGN §7) is one module with ``NAME``, ``DATASETS``, ``KIND`` (the
noun its datasets go by in messages), ``STUDENT_INITS``, ``LANGUAGE`` (whether its
models are language models), ``check(config)`` (its fields and models, raising
``ConfigError`` before anything compiles) and ``prepare(config, mesh, dtype)``, which
gives the pipeline a :class:`~kd_jax.tasks.base.Prepared`: the config flows config →
task → engine → report. The methods a family accepts are those whose ``tasks`` name it
(:func:`kd_jax.methods.accepting`). A new family is a module plus one line in
:data:`FAMILIES`.
"""

from __future__ import annotations

from kd_jax.core.errors import ConfigError
from kd_jax.tasks import arithmetic, classification, diffusion, embedding, reasoning, text
from kd_jax.tasks.base import Prepared

# family name -> module: one line per task family.
FAMILIES = {
    classification.NAME: classification,
    arithmetic.NAME: arithmetic,
    reasoning.NAME: reasoning,
    text.NAME: text,
    embedding.NAME: embedding,
    diffusion.NAME: diffusion,
}
DATASETS = tuple(name for family in FAMILIES.values() for name in family.DATASETS)

__all__ = ["DATASETS", "FAMILIES", "Prepared", "family_of", "prepare"]


def family_of(dataset: str):
  """The task family (module) whose ``DATASETS`` hold ``dataset``.

  Raises:
    ConfigError: an unknown dataset, naming ``dataset.name`` and every valid one.
  """
  for family in FAMILIES.values():
    if dataset in family.DATASETS:
      return family
  raise ConfigError("dataset.name", f"dataset.name: unknown value {dataset!r}; valid choices: "
                    f"{', '.join(DATASETS)}")


def prepare(config, mesh, dtype) -> Prepared:
  """The task family of ``config.dataset.name``, prepared on ``mesh``."""
  return family_of(config.dataset.name).prepare(config, mesh, dtype)
