"""A text corpus (kd_jax/data/text.py) as a next-token task: language modelling.

:func:`prepare` reads the corpus (``dataset.name``: Debian's ``fortunes``, or ``sums``,
worked arithmetic), splits it by document,
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

``dataset.student_vocab_size`` > 0 gives the student a tokenizer of its own (a BPE of
that size trained on the same documents; 259 is the bytes): teacher and student then
read the same text in different tokens (DESIGN §9). The teacher trains and is evaluated
on its own rows; the students' rows carry the teacher's view of the same text, aligned
by byte offsets (:mod:`kd_jax.tasks.aligned_text`), for the cross-tokenizer methods;
the methods that need one vocabulary are refused before anything runs
(:func:`tokenizers_differ`, checked by :mod:`kd_jax.run.validation`). Every report adds
``bits_per_byte`` and ``nll_per_char``, which compare models of different tokenizers
(per-token ``nll`` does not).

``student_data="transfer"`` is sequence-level KD (:mod:`kd_jax.tasks.text_transfer`): the
students train on the teacher's samples, turned back into text and read in their own
tokens, so it needs no shared vocabulary. With one tokenizer, a model may have more
vocabulary rows than the tokenizer has ids (a checkpoint's padding): those rows' logits are
masked out (:func:`kd_jax.tasks.lm.output_vocabularies`); fewer rows are refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np
from absl import logging
from flax import nnx

from kd_jax import models
from kd_jax.config import checks
from kd_jax.engine import step
from kd_jax.data import text as text_data
from kd_jax.data import token_alignment
from kd_jax.core.errors import ConfigError
from kd_jax.tasks.base import Prepared
from kd_jax.models import gpt, hf_checkpoint
from kd_jax.tasks import aligned_text, lm, text_transfer

NAME = "text"
DATASETS = text_data.CORPORA
KIND = "text"
LANGUAGE = True
STUDENT_INITS = ("scratch", "baseline")
# What the students train on: the corpus, or the teacher's samples in the student's tokens
# (sequence-level KD, kd_jax/tasks/text_transfer.py).
STUDENT_DATA = ("gold", "transfer")
# Only the students' data depend on these dataset fields (not the teacher's cache key).
STUDENT_ONLY_FIELDS = ("student_vocab_size",)
BYTE_VOCAB = 259        # the 256 bytes and the 3 specials: a BPE of this size has no merges


def check(config) -> None:
  """A text corpus's fields and models; its students train on the gold text."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples"))
  checks.ints_at_least("dataset", d, ("max_len",), 8)
  checks.ints_at_least("dataset", d, ("vocab_size",), BYTE_VOCAB)
  student_vocab = d.get("student_vocab_size", 0)
  if student_vocab != 0:
    checks.ints_at_least("dataset", d, ("student_vocab_size",), BYTE_VOCAB)
  lm.check_models(config)
  checks.choice("student_data", config.get("student_data", "gold"), STUDENT_DATA)
  if config.get("student_data") == "transfer":
    lm.check_transfer_block(config, "student_data='transfer'")
    text_transfer.check(config)


def _hf_teacher(config) -> str:
  """The teacher's Hugging Face checkpoint directory, or "" when it is trained here."""
  checkpoint = config.teacher.checkpoint
  if checkpoint and hf_checkpoint.is_checkpoint(checkpoint):
    return os.path.expanduser(checkpoint)
  return ""


def tokenizers_differ(config) -> bool:
  """Whether teacher and student read the text in different tokens (from the config alone:
  the student's own BPE differs from the teacher's checkpoint tokenizer, or from the
  teacher's BPE of another size; a BPE of the same size on the same documents is the same
  tokenizer)."""
  student_vocab = config.dataset.get("student_vocab_size", 0)
  if not student_vocab:
    return False
  return bool(_hf_teacher(config)) or student_vocab != config.dataset.vocab_size


TOKENIZER_CACHE = os.path.join("~", ".cache", "kd_jax", "tokenizers")


@dataclasses.dataclass(frozen=True)
class Tokenization:
  """One side's tokenizer and the corpus in its tokens.

  Attributes:
    tokenizer: a ``tokenizers.Tokenizer``.
    special: ``{"bos", "eos", "pad"}`` ids of the rows.
    train_stream, test_stream: the documents of each split as one token stream.
    train_documents: how many documents ``train_stream`` holds.
    token_bytes: the bytes of every token (:func:`kd_jax.data.token_alignment.token_bytes`),
      or None when its vocabulary does not give them or they do not spell the text
      (``bytes_error`` says why).
  """
  tokenizer: object
  special: dict
  train_stream: np.ndarray
  test_stream: np.ndarray
  token_bytes: list | None = None
  bytes_error: str = ""
  train_documents: int = 0

  @property
  def digest(self) -> str:
    return token_alignment.tokenizer_digest(self.tokenizer)

  def rows(self, split: str, max_len: int, limit: int):
    """``(tokens, lengths)`` of ``split``'s packed rows, the first ``limit`` (0: all)."""
    stream = self.train_stream if split == "train" else self.test_stream
    tokens, lengths = text_data.rows_of(stream, max_len, self.special["pad"])
    return (tokens[:limit], lengths[:limit]) if limit else (tokens, lengths)


SPELLING_SAMPLE = 64     # training documents whose bytes a tokenizer must spell exactly


def _tokenization(tokenizer, special, train_docs, test_docs) -> Tokenization:
  streams = [text_data.token_stream(docs, tokenizer, bos=special["bos"], eos=special["eos"])
             for docs in (train_docs, test_docs)]
  try:
    token_bytes = token_alignment.token_bytes(tokenizer)
    token_alignment.check_spelling(tokenizer, token_bytes,
                                   [d.text for d in train_docs[:SPELLING_SAMPLE]])
  except ValueError as e:
    return Tokenization(tokenizer, special, *streams, None, str(e), len(train_docs))
  return Tokenization(tokenizer, special, *streams, token_bytes, "", len(train_docs))


def load_tokenizations(d, checkpoint: str = "") -> tuple[Tokenization, Tokenization]:
  """``(teacher's, student's)`` :class:`Tokenization` of a ``text_dataset`` block.

  The teacher's tokenizer is a BPE of ``d.vocab_size`` trained on the training documents,
  or a Hugging Face ``checkpoint``'s own (its ``tokenizer.json``, BOS and EOS); the
  student's is the teacher's, or with ``d.student_vocab_size`` a BPE of that size.

  Raises:
    ConfigError: a checkpoint's BOS or EOS id is not one of its tokenizer's special tokens.
  """
  train_docs, test_docs = text_data.corpus_splits(d.name)
  defaults = dict(bos=text_data.BOS, eos=text_data.EOS, pad=text_data.PAD)
  if checkpoint:
    tokenizer, bos, eos = hf_checkpoint.load_tokenizer(checkpoint)
    special = dict(bos=bos, eos=eos, pad=eos)   # padding is never a target: any id will do
    check_special_tokens(tokenizer, special, "teacher.checkpoint")
    _name_chat_template(checkpoint)
  else:
    tokenizer = text_data.train_tokenizer(train_docs, d.vocab_size, TOKENIZER_CACHE)
    special = defaults
  teacher = _tokenization(tokenizer, special, train_docs, test_docs)
  student_vocab = d.get("student_vocab_size", 0)
  if not student_vocab:
    return teacher, teacher
  student_tokenizer = text_data.train_tokenizer(train_docs, student_vocab, TOKENIZER_CACHE)
  return teacher, _tokenization(student_tokenizer, defaults, train_docs, test_docs)


def check_special_tokens(tokenizer, special: dict, field: str) -> None:
  """Each of a side's BOS/EOS ids must be one of its tokenizer's special tokens: an EOS id
  that is an ordinary word makes a model end (or never end) its answers in the wrong place,
  the length collapse of on-policy distillation."""
  specials = token_alignment.special_ids(tokenizer)
  by_id = {i: name for name, i in specials.items()}
  for role in ("bos", "eos"):
    if special[role] not in by_id:
      raise ConfigError(field, f"{field}: its {role.upper()} id {special[role]} is not a "
                        "special token of its tokenizer.json (special tokens: "
                        f"{', '.join(f'{n}={i}' for n, i in sorted(specials.items()))})")


def _name_chat_template(checkpoint: str) -> None:
  """Says so when a checkpoint's tokenizer has a chat template: its teacher was tuned on
  prompts in that format, while the text task's rows are plain ``<bos> text <eos>``."""
  path = os.path.join(checkpoint, "tokenizer_config.json")
  if os.path.exists(path):
    with open(path) as f:
      template = json.load(f).get("chat_template")
    if template:
      logging.warning("teacher.checkpoint %s has a chat template (tokenizer_config.json): it "
                      "was tuned on prompts in that format, but the text task's rows are "
                      "plain text <bos> text <eos>, which the teacher reads out of format",
                      checkpoint)


def text_counts(tokens: np.ndarray, lengths: np.ndarray, token_byte_strings) -> dict | None:
  """``{"tokens", "bytes", "chars"}``: the targets of packed rows (every real token after
  the first of a row) and the UTF-8 bytes and characters they stand for; None without
  ``token_byte_strings``."""
  if token_byte_strings is None:
    return None
  targets = np.concatenate([row[1:n] for row, n in zip(tokens, lengths)] or [np.zeros(0, int)])
  n_bytes, n_chars = token_alignment.target_counts(targets, token_byte_strings)
  return {"tokens": int(len(targets)), "bytes": int(n_bytes.sum()), "chars": int(n_chars.sum())}


def per_byte(nll: float, counts: dict | None) -> dict:
  """``bits_per_byte`` and ``nll_per_char`` (nats) from the per-token ``nll`` of the targets
  ``counts`` describes: the same total nll spread over the text's bytes (in bits) and
  characters, which do not depend on the tokenizer ({} without counts)."""
  if counts is None:
    return {}
  total = nll * counts["tokens"]
  return {"bits_per_byte": total / math.log(2) / max(counts["bytes"], 1),
          "nll_per_char": total / max(counts["chars"], 1)}


def _bytes_of(side: Tokenization, cross: bool):
  """The bytes of ``side``'s tokens; None when they are unknown and the run does not need
  them (one tokenizer: no alignment, no bits per byte).

  Raises:
    ConfigError: across tokenizers, a tokenizer whose tokens' bytes are unknown.
  """
  if side.token_bytes is None:
    if cross:
      raise ConfigError("dataset.student_vocab_size", "teacher and student tokenizers differ "
                        f"and are aligned by bytes, but one is not byte-exact: {side.bytes_error}")
    logging.info("no bits per byte: %s", side.bytes_error)
  return side.token_bytes


def _with_teacher_views(d, student_side, teacher_side, student_train, student_bytes,
                        teacher_bytes, teacher_width, mesh) -> aligned_text.AlignedTokenData:
  """The students' training rows with the teacher's view of each
  (:func:`kd_jax.data.token_alignment.teacher_views`); with one tokenizer, the identity.
  ``teacher_width``: the columns of the teacher's logits (the vocabulary map's length)."""
  if teacher_side is student_side:
    vocab_map = np.arange(teacher_width, dtype=np.int32)
  else:
    # BOS and EOS by role, EOS last so that it wins an id either side uses for both. (A
    # checkpoint without a BOS uses its EOS for both: the map then holds EOS → EOS only,
    # and a document's first position is never "exact": ULD there.)
    roles = {teacher_side.special[r]: student_side.special[r] for r in ("bos", "eos")}
    vocab_map = token_alignment.vocabulary_map(teacher_bytes, student_bytes, roles)
    # A checkpoint's model may have more rows than its tokenizer has tokens (padding).
    vocab_map = np.pad(vocab_map, (0, max(teacher_width - len(vocab_map), 0)),
                       constant_values=-1)

  def ends(side, token_byte_strings):
    return token_alignment.unit_ends(side.train_stream, [len(b) for b in token_byte_strings],
                                     [side.special[r] for r in ("bos", "eos")])

  starts = list(text_data.row_starts(len(student_side.train_stream), d.max_len))
  views = token_alignment.teacher_views(
      student_side.train_stream, ends(student_side, student_bytes),
      teacher_side.train_stream, ends(teacher_side, teacher_bytes), vocab_map,
      starts[:len(student_train[0])], d.max_len, d.max_len, teacher_side.special["pad"])
  return aligned_text.aligned_token_data(*student_train, views, vocab_map, mesh)


def prepare(config, mesh, dtype) -> Prepared:
  """The text experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`).

  Raises:
    DatasetNotFoundError: the corpus is not installed.
    ConfigError: a model's ``vocab_size`` differs from its tokenizer's.
  """
  d = config.dataset
  # A Hugging Face teacher brings its tokenizer and vocabulary.
  hf_teacher = _hf_teacher(config)
  teacher_side, student_side = load_tokenizations(d, hf_teacher)
  cross = teacher_side.digest != student_side.digest
  if cross != tokenizers_differ(config):     # the validation's answer must be this one
    raise AssertionError(f"tokenizers_differ={tokenizers_differ(config)} but the digests "
                         f"are {teacher_side.digest} and {student_side.digest}")
  # Each side's vocabulary rows, and the ids its logits cover (rows its tokenizer never
  # produces, a checkpoint's padding, are masked out: DESIGN §9).
  hf_rows = (hf_checkpoint.gpt_kwargs(hf_checkpoint.read_config(hf_teacher))["vocab_size"]
             if hf_teacher else None)
  teacher_ids = token_alignment.id_count(teacher_side.tokenizer)
  teacher_vocab = hf_rows or teacher_ids
  if cross:     # each side against its own tokenizer
    student_vocab = token_alignment.id_count(student_side.tokenizer)
    output_vocab = {**lm.output_vocabularies(config, teacher_ids, teacher_rows=hf_rows,
                                             roles=("teacher",)),
                    "student": lm.output_vocabularies(config, student_vocab,
                                                      roles=("student",))["student"]}
  else:
    student_vocab = teacher_vocab
    output_vocab = lm.output_vocabularies(config, teacher_ids, teacher_rows=hf_rows)
  teacher_width = output_vocab["teacher"] or teacher_vocab     # the teacher's logits
  teacher_bytes = _bytes_of(teacher_side, cross)
  student_bytes = teacher_bytes if not cross else _bytes_of(student_side, cross)
  if cross:
    logging.info("teacher and student tokenizers differ (%d and %d tokens): aligned by byte "
                 "offsets, BOS and EOS mapped by role", teacher_vocab, student_vocab)
  # The students' rows, with the teacher's view of the same text.
  student_train = student_side.rows("train", d.max_len, d.train_examples)
  if student_bytes is None:   # (one tokenizer whose tokens' bytes are unknown: no views)
    student_data = lm.packed_token_data(*student_train, mesh)
  else:
    student_data = _with_teacher_views(d, student_side, teacher_side, student_train,
                                       student_bytes, teacher_bytes, teacher_width, mesh)
  student_test = student_side.rows("test", d.max_len, d.test_examples)
  student_test_data = lm.packed_token_data(*student_test, mesh)
  student_counts = text_counts(*student_test, student_bytes)
  # The teacher's own rows.
  if cross:
    teacher_train = teacher_side.rows("train", d.max_len, d.train_examples)
    teacher_test = teacher_side.rows("test", d.max_len, d.test_examples)
    train_data = lm.packed_token_data(*teacher_train, mesh)
    teacher_test_data = lm.packed_token_data(*teacher_test, mesh)
    teacher_counts = text_counts(*teacher_test, teacher_bytes)
  else:
    train_data, teacher_test_data, teacher_counts = student_data, student_test_data, student_counts
  task = lm.NextTokens()

  def build(spec, seed, role="student"):
    if role == "teacher" and hf_teacher:
      model = gpt.from_hf(hf_teacher, dtype, output_vocab=output_vocab["teacher"])
      if model.max_len < d.max_len:
        raise ConfigError("dataset.max_len", f"dataset.max_len={d.max_len} exceeds the "
                          f"teacher's max_position_embeddings ({model.max_len})")
      return model
    vocab_size = teacher_vocab if role == "teacher" else student_vocab
    kwargs = {"vocab_size": vocab_size, "max_len": d.max_len, "output_vocab": output_vocab[role],
              **spec.kwargs.to_dict()}
    try:
      return models.create(spec.model, rngs=nnx.Rngs(seed), dtype=dtype, **kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{role}.kwargs",
                        f"{role}.kwargs={kwargs} do not fit model {spec.model!r}: {e}") from None

  def evaluate_teacher(graphdef, variables, batch_size):
    metrics, _ = task.evaluator(graphdef, teacher_test_data, batch_size, mesh)(variables)
    return {**metrics, **per_byte(metrics["nll"], teacher_counts)}, (graphdef, variables)

  def student_report(fit, module, teacher, batch_size):
    graphdef, params, model_state = step.split_module(module)
    # KL to the teacher and argmax agreement need one vocabulary.
    compared = task.token_metrics(graphdef, student_test_data, batch_size, mesh,
                                  reference=None if cross else teacher)((params, model_state))
    # (the best evaluation's nll, in bits per byte of the same held-out text)
    best = (per_byte(fit.best, student_counts).get("bits_per_byte")
            if fit.best is not None else None)
    return {**fit.final, **compared, **per_byte(compared["nll"], student_counts),
            "best_bits_per_byte": best, "train_tokens": fit.train_rows * (d.max_len - 1)}

  def teacher_data(teacher_module, teacher_identity, cache_dir):
    """Sequence-level KD: the teacher's samples as the student's packed rows."""
    stream, stats = text_transfer.write(
        config, teacher_module, teacher_identity, cache_dir, documents=teacher_side.train_documents,
        teacher_side=teacher_side, student_side=student_side)
    tokens, lengths = text_data.rows_of(stream, d.max_len, student_side.special["pad"])
    if d.train_examples:
      tokens, lengths = tokens[:d.train_examples], lengths[:d.train_examples]
    return lm.packed_token_data(tokens, lengths, mesh), {**stats, "rows": len(tokens)}

  return Prepared(task, train_data, student_data, student_test_data, teacher_vocab, build,
                  evaluate_teacher, student_report,
                  teacher_data if config.get("student_data") == "transfer" else None,
                  mesh=mesh, teacher_test_data=teacher_test_data)
