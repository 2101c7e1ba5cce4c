"""Text corpora, a BPE tokenizer trained on them, and token rows.

:data:`CORPORA`: ``fortunes`` (English) and ``sums`` (worked arithmetic, below). The
English corpus is Debian's ``fortunes`` package (``/usr/share/games/fortunes/``, about
16,000 quotations, jokes and poems in 40-odd collections: computers, love, food,
law, medicine, ...; ``sudo apt-get install fortunes``). Each fortune is a
:class:`Document` labelled with its collection. A document's split is decided by a
hash of its text (:func:`split_of`), so train and test never share a document, for
any tokenizer or row length.

:func:`train_tokenizer` trains a byte-level BPE tokenizer with the ``tokenizers``
library on the training documents only (so held-out text is never seen, even by
the tokenizer), with the special tokens ``<pad>`` (id 0), ``<bos>`` (1) and
``<eos>`` (2); it is cached as a ``tokenizer.json`` keyed by the corpus and the
vocabulary size. :func:`token_rows` packs documents ``<bos> text <eos>`` into rows.

``sums`` is the arithmetic task's problems (:mod:`kd_jax.data.arithmetic`: chains of 3
additions and subtractions of 3-digit numbers) written out with their worked solutions,
one document each (``"482+25-13+7=482+25=507;507-13=494;494+7=501####501"``), in that
task's train and test splits. A byte-level BPE trained on it groups digits (its
pre-tokenizer keeps runs of digits together, so merges make multi-digit tokens), while a
byte-level student spells every digit: the case where cross-tokenizer distillation is
known to fail on numerals (issue 25).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np

from kd_jax.core import files
from kd_jax.data import arithmetic
from kd_jax.core import identity as identity_lib
from kd_jax.core.errors import DatasetNotFoundError

FORTUNES_DIR = "/usr/share/games/fortunes"
CORPORA = ("fortunes", "sums")
# The sums corpus: the arithmetic task's problems at this difficulty, this many per split.
SUMS_DIFFICULTY = arithmetic.Difficulty(steps=3, digits=3)
SUMS_DOCUMENTS = {"train": 20_000, "test": 1_000}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2
TEST_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class Document:
  collection: str     # the fortune file it came from, e.g. "computers"
  text: str


def read_fortunes(directory: str | None = None) -> list[Document]:
  """Every fortune of every collection in ``directory`` (default :data:`FORTUNES_DIR`;
  the ``off/`` collections excluded).

  Raises:
    DatasetNotFoundError: the ``fortunes`` package is not installed.
  """
  directory = directory or FORTUNES_DIR
  if not os.path.isdir(directory):
    raise DatasetNotFoundError(f"no fortunes in {directory}: install them with "
                               "`sudo apt-get install fortunes`")
  documents = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if "." in name or not os.path.isfile(path):
      continue                          # .dat indexes, .u8 copies, the off/ directory
    # The .u8 copy is the UTF-8 text; the plain file may be Latin-1.
    utf8 = path + ".u8"
    with open(utf8 if os.path.exists(utf8) else path, encoding="utf-8",
              errors="replace") as f:
      content = f.read()
    for text in content.split("\n%\n"):
      text = text.strip("\n%")
      if text.strip():
        documents.append(Document(name, text))
  if not documents:
    raise DatasetNotFoundError(f"no fortunes found in {directory}")
  return documents


def read_sums(split_name: str) -> list[Document]:
  """The ``sums`` corpus's documents of ``split_name`` (``train`` or ``test``): problems
  with their worked solutions, drawn by the arithmetic task's seeded generator."""
  problems = arithmetic.generate_split(split_name, SUMS_DOCUMENTS[split_name], seed=0,
                                       difficulty=SUMS_DIFFICULTY)
  return [Document("sums", p.prompt + p.response) for p in problems]


def corpus_splits(name: str) -> tuple[list[Document], list[Document]]:
  """``(train, test)`` documents of corpus ``name`` (:data:`CORPORA`).

  Raises:
    ValueError: an unknown corpus.
    DatasetNotFoundError: the fortunes package is not installed.
  """
  if name == "fortunes":
    return split(read_fortunes())
  if name == "sums":
    return read_sums("train"), read_sums("test")
  raise ValueError(f"unknown text corpus {name!r}; valid: {', '.join(CORPORA)}")


def corpus_digest(name: str = "fortunes", directory: str | None = None) -> str:
  """A 16-hex-digit hash of every document of corpus ``name`` (the fortunes from
  ``directory``, default :data:`FORTUNES_DIR`): part of a text teacher's cache key, so
  that another version of the package (or of the generator) never reuses a teacher
  trained on different text."""
  if name == "sums":
    return identity_lib.digest([(d.collection, d.text) for part in corpus_splits("sums")
                                for d in part])
  return _digest(directory or FORTUNES_DIR)


@functools.lru_cache(maxsize=4)
def _digest(directory: str) -> str:
  return identity_lib.digest([(d.collection, d.text) for d in read_fortunes(directory)])


def split_of(document: Document) -> str:
  """``"test"`` for about ``TEST_FRACTION`` of documents (by a hash of the text), else ``"train"``."""
  digest = int(hashlib.sha256(document.text.encode()).hexdigest()[:8], 16)
  return "test" if digest % 1000 < TEST_FRACTION * 1000 else "train"


def split(documents: list[Document]) -> tuple[list[Document], list[Document]]:
  """``(train, test)``: disjoint by document text, order kept."""
  train = [d for d in documents if split_of(d) == "train"]
  test = [d for d in documents if split_of(d) == "test"]
  return train, test


def train_tokenizer(documents: list[Document], vocab_size: int, cache_dir: str):
  """A byte-level BPE ``tokenizers.Tokenizer`` trained on ``documents`` (cached).

  The cache file ``cache_dir/tokenizer-<key>.json`` is keyed by the documents'
  texts and ``vocab_size``: another corpus or size trains another tokenizer.
  """
  import tokenizers  # noqa: PLC0415  (only text experiments need it)
  from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: PLC0415
  key = identity_lib.digest({"texts": hashlib.sha256("\x00".join(
      d.text for d in documents).encode()).hexdigest(), "vocab_size": vocab_size,
                            "kind": "byte-level-bpe", "specials": SPECIAL_TOKENS})
  path = os.path.join(os.path.expanduser(cache_dir), f"tokenizer-{key}.json")
  if os.path.exists(path):
    return tokenizers.Tokenizer.from_file(path)
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator((d.text for d in documents), trainer=trainer)
  with files.atomic_path(path) as tmp:
    tokenizer.save(tmp)
  return tokenizer


def token_stream(documents: list[Document], tokenizer, *, bos: int = BOS,
                 eos: int = EOS, ended=None) -> np.ndarray:
  """int32 ``[n]``: the documents as one stream ``<bos> text <eos> <bos> text <eos> ...``.

  ``add_special_tokens=False``: the stream gets these BOS/EOS, whatever the tokenizer's
  post-processor would add. ``ended`` (bool per document; default all): a document that
  did not end (a sample the generation budget cut) gets no EOS.
  """
  encodings = tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
  ended = [True] * len(encodings) if ended is None else ended
  return np.concatenate([np.array([bos, *e.ids] + ([eos] if end else []), np.int32)
                         for e, end in zip(encodings, ended)] or [np.zeros(0, np.int32)])


def row_starts(stream_length: int, max_len: int) -> range:
  """Where each row of :func:`token_rows` starts in the stream (rows overlap by one token)."""
  return range(0, max(stream_length - 1, 1), max_len - 1)


def token_rows(documents: list[Document], tokenizer, max_len: int, *, bos: int = BOS,
               eos: int = EOS, pad: int = PAD):
  """The documents as one stream ``<bos> text <eos> <bos> text <eos> ...`` cut into rows.

  Rows are packed (no padding but in the last row), as in language-model
  pretraining: a row may hold the end of one document and the start of the next.
  Consecutive rows overlap by one token, so that every token but the first is a
  target exactly once.

  ``bos``, ``eos``, ``pad``: the tokenizer's ids (this module's tokenizers: 1, 2, 0).

  Returns:
    ``tokens`` int32 ``[N, max_len]`` and ``lengths`` int32 ``[N]`` (real tokens per row).
  """
  return rows_of(token_stream(documents, tokenizer, bos=bos, eos=eos), max_len, pad)


def rows_of(stream: np.ndarray, max_len: int, pad: int = PAD):
  """:func:`token_rows` of a stream: ``(tokens [N, max_len], lengths [N])``."""
  starts = row_starts(len(stream), max_len)
  tokens = np.full((len(starts), max_len), pad, np.int32)
  lengths = np.zeros(len(starts), np.int32)
  for i, start in enumerate(starts):
    row = stream[start:start + max_len]
    tokens[i, :len(row)], lengths[i] = row, len(row)
  return tokens, lengths
