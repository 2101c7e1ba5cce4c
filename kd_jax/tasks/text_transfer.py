"""Sequence-level KD on a text corpus: the teacher writes the text its student reads.

With ``student_data="transfer"`` (:func:`kd_jax.config.transfer_config`) the teacher
samples ``transfer.k`` documents per training document (or ``transfer.max_examples`` > 0
documents: a smaller set, or the size axis of a study), each from a lone BOS, up to
``dataset.max_len - 1`` tokens (:func:`kd_jax.llm.transfer.sample`: chunked, resumable,
cached by the teacher's identity and the sampling settings). Every sample is turned back
into text — its tokens' bytes, never the teacher's ids — and that text is tokenized by the
*student's* tokenizer and packed into rows exactly as the gold corpus is
(:func:`kd_jax.data.text.rows_of`). So the student needs no shared vocabulary with its
teacher (DESIGN §9): with one tokenizer the same path re-tokenizes the teacher's text
canonically, with two it is the cross-tokenizer case.

A sample that ended (sampled EOS) is a whole document, ``<bos> text <eos>``; one the budget
cut keeps its text without an EOS, so the student is never taught to end where the budget
did. Invalid UTF-8 (a byte-level teacher may split a character and never finish it) is
replaced by U+FFFD and counted in the stats.
"""

from __future__ import annotations

import numpy as np

from kd_jax.core.errors import ConfigError
from kd_jax.data import text as text_data
from kd_jax.llm import compute
from kd_jax.llm import transfer

REPLACEMENT = "\ufffd"


def check(config) -> None:
  """The transfer block's fields a text corpus reads (``label_free`` has nothing to vote on)."""
  if config.transfer.get("label_free", False):
    raise ConfigError("transfer.label_free", "transfer.label_free=True votes on answers, and "
                      "a text corpus has none: the text task keeps every sample (set it False)")


def sample_texts(tokens: np.ndarray, lengths: np.ndarray, token_byte_strings) -> list[str]:
  """The text of each generated sample, UTF-8 decoded with invalid bytes replaced.

  Args:
    tokens: int ``[M, T]`` generated tokens (pad after EOS).
    lengths: int ``[M]``, each sample's length up to and including its EOS.
    token_byte_strings: the bytes of each token id (``b""`` for special tokens); ids past
      its end (a model's padding rows, never produced by the tokenizer) count as ``b""``.
  """
  vocabulary = len(token_byte_strings)
  return [b"".join(token_byte_strings[t] if 0 <= t < vocabulary else b"" for t in row[:n])
          .decode("utf-8", errors="replace")
          for row, n in zip(np.asarray(tokens), np.asarray(lengths))]


def samples_ended(tokens: np.ndarray, lengths: np.ndarray, eos: int) -> np.ndarray:
  """bool ``[M]``: whether each sample ended with EOS (an empty sample did not)."""
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  last = tokens[np.arange(len(tokens)), np.maximum(lengths - 1, 0)]
  return (lengths > 0) & (last == eos)


def write(config, teacher_module, teacher_identity: dict, cache_dir: str, *, documents: int,
          teacher_side, student_side) -> tuple[np.ndarray, dict]:
  """The teacher's corpus in the student's tokens, and what writing it did.

  Args:
    config: the run's config (``transfer``, ``dataset.max_len``, ``seed``).
    teacher_module: the teacher (a GPT).
    teacher_identity: what the samples are keyed by (:func:`kd_jax.llm.transfer.sample`).
    cache_dir: the transfer-set cache directory.
    documents: the number of training documents (``transfer.k`` samples are written per
      document, unless ``transfer.max_examples`` > 0 says how many).
    teacher_side, student_side: :class:`kd_jax.tasks.text.Tokenization` of each side.

  Returns:
    ``(stream, stats)``: the samples in the student's tokens, ``<bos> text <eos>`` each (no
    EOS after a sample the budget cut; :func:`kd_jax.data.text.token_stream`), and
    ``samples``, ``ended_fraction``, ``replacement_chars``, ``generated_tokens``,
    ``student_tokens``, ``text_bytes``, ``generation_seconds``, ``teacher_flops``.
  """
  t, max_new = config.transfer, config.dataset.max_len - 1
  count = t.get("max_examples", 0) or documents * t.k
  prompts = np.full((count, 1), teacher_side.special["bos"], np.int32)
  # k=1 per prompt: every prompt is the same lone BOS, so the count rows are the samples
  # (each row draws its own).
  samples = transfer.sample(
      teacher_module, prompts, np.ones(count, np.int32), k=1, sampling=t.sampling,
      max_new_tokens=max_new, eos_id=teacher_side.special["eos"],
      pad_id=teacher_side.special["pad"], directory=cache_dir, identity=teacher_identity,
      seed=config.seed)
  tokens, lengths = samples.tokens[0], samples.lengths[0]
  ended = samples_ended(tokens, lengths, teacher_side.special["eos"])
  if teacher_side.token_bytes is not None:
    texts = sample_texts(tokens, lengths, teacher_side.token_bytes)
  else:   # a tokenizer whose tokens' bytes are unknown: its own decoder
    texts = [teacher_side.tokenizer.decode(row[:n].tolist()) for row, n in zip(tokens, lengths)]
  stream = text_data.token_stream([text_data.Document("transfer", text) for text in texts],
                                  student_side.tokenizer, bos=student_side.special["bos"],
                                  eos=student_side.special["eos"], ended=ended)
  model_config = getattr(teacher_module, "config", None)
  stats = {"samples": count, "ended_fraction": float(ended.mean()),
           "replacement_chars": sum(text.count(REPLACEMENT) for text in texts),
           "generated_tokens": int(lengths.sum()), "student_tokens": int(len(stream)),
           "text_bytes": sum(len(text.encode()) for text in texts),
           "generation_seconds": samples.seconds,
           "teacher_flops": (compute.generation(model_config, count, 1, max_new)
                             if model_config is not None else None)}
  return stream, stats
