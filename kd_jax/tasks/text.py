"""A text corpus (kd_jax/data/text.py) as a next-token task: language modelling on real English.

:func:`prepare` reads the corpus (Debian ``fortunes``), splits it by document,
trains (or reads back) the BPE tokenizer on the training documents, packs both
splits into rows of ``dataset.max_len`` tokens, and returns the engine's
:class:`kd_jax.tasks.Prepared` for :class:`kd_jax.tasks.lm.NextTokens`: every model
is evaluated teacher-forced on the held-out documents, ``nll`` per token (the
headline, lower is better) and ``perplexity``; students also by their KL to the
teacher and argmax agreement.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from kd_jax import models, step, tasks
from kd_jax.data import text as text_data
from kd_jax.errors import ConfigError
from kd_jax.tasks import lm

DATASETS = ("fortunes",)
TOKENIZER_CACHE = os.path.join("~", ".cache", "kd_jax", "tokenizers")


def load_rows(d) -> tuple[object, tuple, tuple]:
  """``(tokenizer, (train tokens, lengths), (test tokens, lengths))`` of a ``text_dataset`` block."""
  train_docs, test_docs = text_data.split(text_data.read_fortunes())
  tokenizer = text_data.train_tokenizer(train_docs, d.vocab_size, TOKENIZER_CACHE)
  train = text_data.token_rows(train_docs, tokenizer, d.max_len)
  test = text_data.token_rows(test_docs, tokenizer, d.max_len)
  if d.train_examples:
    train = tuple(x[:d.train_examples] for x in train)
  if d.test_examples:
    test = tuple(x[:d.test_examples] for x in test)
  return tokenizer, train, test


def prepare(config, mesh, dtype) -> tasks.Prepared:
  """The text experiment's data, task and reports (see :class:`kd_jax.tasks.Prepared`).

  Raises:
    DatasetNotFoundError: the corpus is not installed.
    ConfigError: a model's ``vocab_size`` differs from the tokenizer's.
  """
  d = config.dataset
  tokenizer, (train_tokens, train_lengths), (test_tokens, test_lengths) = load_rows(d)
  vocab_size = tokenizer.get_vocab_size()
  lm.check_vocabularies(config, vocab_size)
  # Packed rows: every real token after the first of a row is a target.
  train_data = lm.token_data(train_tokens, np.ones(len(train_tokens), np.int32), train_lengths,
                             mesh)
  test_data = lm.token_data(test_tokens, np.ones(len(test_tokens), np.int32), test_lengths, mesh)
  task = lm.NextTokens()

  def build(spec, seed, role="student"):
    kwargs = {"vocab_size": vocab_size, "max_len": d.max_len, **spec.kwargs.to_dict()}
    try:
      return models.create(spec.model, rngs=nnx.Rngs(seed), dtype=dtype, **kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{role}.kwargs",
                        f"{role}.kwargs={kwargs} do not fit model {spec.model!r}: {e}") from None

  def evaluate_teacher(graphdef, variables, batch_size):
    metrics, _ = task.evaluator(graphdef, test_data, batch_size, mesh)(variables)
    return metrics, (graphdef, variables)

  def student_report(fit, module, teacher, batch_size):
    graphdef, params, model_state = step.split_module(module)
    compared = task.token_metrics(graphdef, test_data, batch_size, mesh, reference=teacher)(
        (params, model_state))
    return {**fit.final, **compared,
            "train_tokens": fit.steps * config.train.batch_size * (d.max_len - 1)}

  return tasks.Prepared(task, train_data, train_data, test_data, vocab_size, build,
                        evaluate_teacher, student_report)
