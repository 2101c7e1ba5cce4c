"""A text corpus (kd_jax/data/text.py) as a next-token task: language modelling on real English.

:func:`prepare` reads the corpus (Debian ``fortunes``), splits it by document,
trains (or reads back) the BPE tokenizer on the training documents, packs both
splits into rows of ``dataset.max_len`` tokens, and returns the engine's
:class:`kd_jax.tasks.base.Prepared` for :class:`kd_jax.tasks.lm.NextTokens`: every model
is evaluated teacher-forced on the held-out documents, ``nll`` per token (the
headline, lower is better) and ``perplexity``; students also by their KL to the
teacher and argmax agreement.

``teacher.checkpoint`` may name a Hugging Face Llama/Qwen2 checkpoint directory
(:mod:`kd_jax.models.hf_checkpoint`): the teacher is loaded from it, and the
tokenizer (its ``tokenizer.json``) and the vocabulary are the teacher's, so that a
researcher with a real teacher on disk distils it into a student of its vocabulary.
"""

from __future__ import annotations

import os

import numpy as np
from flax import nnx

from kd_jax import models
from kd_jax.config import checks
from kd_jax.engine import step
from kd_jax.data import text as text_data
from kd_jax.core.errors import ConfigError
from kd_jax.tasks.base import Prepared
from kd_jax.models import gpt, hf_checkpoint
from kd_jax.tasks import lm

NAME = "text"
DATASETS = text_data.CORPORA
KIND = "text"
LANGUAGE = True
STUDENT_INITS = ("scratch", "baseline")


def check(config) -> None:
  """A text corpus's fields and models; its students train on the gold text."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples"))
  checks.ints_at_least("dataset", d, ("max_len",), 8)
  checks.ints_at_least("dataset", d, ("vocab_size",), 259)   # the 256 bytes and 3 specials
  lm.check_models(config)
  checks.choice("student_data", config.get("student_data", "gold"), ("gold",))


TOKENIZER_CACHE = os.path.join("~", ".cache", "kd_jax", "tokenizers")


def load_rows(d, checkpoint: str = "") -> tuple[object, tuple, tuple]:
  """``(tokenizer, (train tokens, lengths), (test tokens, lengths))`` of a ``text_dataset`` block.

  The tokenizer is a BPE trained on the training documents, or, with a Hugging Face
  ``checkpoint`` as the teacher, the teacher's own (its ``tokenizer.json``, BOS and EOS).
  """
  train_docs, test_docs = text_data.split(text_data.read_fortunes())
  if checkpoint:
    tokenizer, bos, eos = hf_checkpoint.load_tokenizer(checkpoint)
    special = dict(bos=bos, eos=eos, pad=eos)     # padding is never a target: any id will do
  else:
    tokenizer, special = text_data.train_tokenizer(train_docs, d.vocab_size, TOKENIZER_CACHE), {}
  train = text_data.token_rows(train_docs, tokenizer, d.max_len, **special)
  test = text_data.token_rows(test_docs, tokenizer, d.max_len, **special)
  if d.train_examples:
    train = tuple(x[:d.train_examples] for x in train)
  if d.test_examples:
    test = tuple(x[:d.test_examples] for x in test)
  return tokenizer, train, test


def prepare(config, mesh, dtype) -> Prepared:
  """The text experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`).

  Raises:
    DatasetNotFoundError: the corpus is not installed.
    ConfigError: a model's ``vocab_size`` differs from the tokenizer's.
  """
  d = config.dataset
  # A Hugging Face teacher brings its tokenizer and vocabulary (the student shares them).
  hf_teacher = (os.path.expanduser(config.teacher.checkpoint)
                if config.teacher.checkpoint and hf_checkpoint.is_checkpoint(
                    config.teacher.checkpoint) else "")
  tokenizer, (train_tokens, train_lengths), (test_tokens, test_lengths) = load_rows(d, hf_teacher)
  vocab_size = (hf_checkpoint.gpt_kwargs(hf_checkpoint.read_config(hf_teacher))["vocab_size"]
                if hf_teacher else tokenizer.get_vocab_size())
  if not hf_teacher:
    lm.check_vocabularies(config, vocab_size)
  # Packed rows: every real token after the first of a row is a target.
  train_data = lm.token_data(train_tokens, np.ones(len(train_tokens), np.int32), train_lengths,
                             mesh)
  test_data = lm.token_data(test_tokens, np.ones(len(test_tokens), np.int32), test_lengths, mesh)
  task = lm.NextTokens()

  def build(spec, seed, role="student"):
    if role == "teacher" and hf_teacher:
      model = gpt.from_hf(hf_teacher, dtype)
      if model.max_len < d.max_len:
        raise ConfigError("dataset.max_len", f"dataset.max_len={d.max_len} exceeds the "
                          f"teacher's max_position_embeddings ({model.max_len})")
      return model
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
            "train_tokens": fit.train_rows * (d.max_len - 1)}

  return Prepared(task, train_data, train_data, test_data, vocab_size, build,
                  evaluate_teacher, student_report, mesh=mesh)
