"""Two tokenizations of the same text, aligned by byte offsets (DESIGN §9).

A teacher and a student with different tokenizers see the same documents cut into
different tokens. Everything here works on the bytes each token stands for
(:func:`token_bytes`), never on decoded strings: a byte-level tokenizer may split a
multi-byte UTF-8 character across tokens, where character offsets (and
``tokenizer.decode`` of one token) are wrong — the bug TRL's GOLD trainer shipped and
fixed with byte offsets.

A token stream is a sequence of ids in which the special tokens (BOS, EOS, pad) stand for
no text. To align two streams of the same documents, each token gets a length in *units*:
its bytes, or one unit for a special token (so that "EOS of one document, BOS of the
next", zero bytes of text, still gives distinct boundaries). Two streams whose specials
sit in the same places (the same documents, the same BOS/EOS convention: the run's
pre-flight checks see to that) then have the same unit offsets at every common boundary.

* :func:`token_bytes`: the bytes of every id of a ``tokenizers.Tokenizer`` (byte-level
  BPE such as GPT-2's, Qwen's and this package's; or a byte-fallback SentencePiece-style
  vocabulary such as Llama's).
* :func:`unit_ends`: where each token of a stream ends, in units.
* :func:`align_ends`: for each token of one stream, the token of the other that ends at
  the same offset (−1 where none does).
* :func:`vocabulary_map`: teacher id → student id of the same byte string (−1: none).
* :func:`target_counts`: the bytes and characters each token stands for (bits per byte).
"""

from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

_METASPACE = "\u2581"    # SentencePiece's word-boundary mark, a space in the text


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
  """The byte-level (GPT-2) alphabet: the printable character that stands for each byte.

  Bytes that are printable Latin-1 stand for themselves; the others (control bytes, space,
  ...) are shifted to 256 + n in the order they occur, as the ``tokenizers`` library's
  ``ByteLevel`` pre-tokenizer does.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars, shift = {}, 0
  for byte in range(256):
    if byte in printable:
      chars[chr(byte)] = byte
    else:
      chars[chr(256 + shift)] = byte
      shift += 1
  return chars


def _decoder_kinds(spec: dict) -> set[str]:
  decoder = spec.get("decoder") or {}
  kinds = {decoder.get("type")}
  for sub in decoder.get("decoders") or []:
    kinds.add(sub.get("type"))
  return kinds


def tokenizer_digest(tokenizer) -> str:
  """A 16-hex-digit digest of a ``tokenizers.Tokenizer``'s whole definition (its
  ``tokenizer.json``): equal digests, the same tokenizer."""
  return hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:16]


def special_ids(tokenizer) -> dict[str, int]:
  """The tokenizer's special (added) tokens: ``{content: id}``."""
  spec = json.loads(tokenizer.to_str())
  return {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t.get("special")}


def id_count(tokenizer) -> int:
  """How many ids ``tokenizer`` can produce: one past its largest id (added tokens included)."""
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  return max(tokenizer.get_vocab_size(with_added_tokens=True), max(vocab.values()) + 1)


def token_bytes(tokenizer) -> list[bytes]:
  """The bytes every id of ``tokenizer`` stands for (``b""`` for its special tokens).

  Raises:
    ValueError: a tokenizer whose tokens are neither byte-level (``ByteLevel`` decoder)
      nor SentencePiece-style with byte fallback (``ByteFallback`` decoder): their bytes
      cannot be read from the vocabulary, so byte offsets are not defined.
  """
  spec = json.loads(tokenizer.to_str())
  kinds = _decoder_kinds(spec)
  vocab = tokenizer.get_vocab(with_added_tokens=True)
  specials = set(special_ids(tokenizer).values())
  # Added (non-special) tokens are stored as their raw text, not in the model's alphabet.
  added = {t["id"]: t["content"].encode() for t in spec.get("added_tokens", [])
           if not t.get("special")}
  out = [b""] * id_count(tokenizer)
  if "ByteLevel" in kinds:
    alphabet = _byte_level_alphabet()
    for token, i in vocab.items():
      if i in added:
        out[i] = added[i]
      elif i not in specials:
        try:
          out[i] = bytes(alphabet[c] for c in token)
        except KeyError:
          raise ValueError(f"token {token!r} (id {i}) is not in the byte-level alphabet") from None
  elif "ByteFallback" in kinds:
    for token, i in vocab.items():
      if i in specials:
        continue
      if i in added:
        out[i] = added[i]
      elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        out[i] = bytes([int(token[3:5], 16)])
      else:
        out[i] = token.replace(_METASPACE, " ").encode()
  else:
    raise ValueError(f"tokenizer with decoder {sorted(k for k in kinds if k)}: byte offsets "
                     "need a byte-level (ByteLevel) or byte-fallback (ByteFallback) "
                     "tokenizer, whose tokens' bytes the vocabulary gives")
  return out


def check_spelling(tokenizer, token_byte_strings: list[bytes], texts) -> None:
  """Refuses a tokenizer whose tokens' bytes do not spell the text they encode (a
  normalizer that prepends a space, as Llama-2's and Mistral's do, or lower-cases;
  ``add_prefix_space``): byte offsets would drift by document, silently.

  Raises:
    ValueError: naming the first text whose bytes differ.
  """
  for text in texts:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    spelled = b"".join(token_byte_strings[i] for i in ids)
    if spelled != text.encode():
      raise ValueError(f"its tokens spell {spelled[:40]!r} for the text {text[:40]!r} (a "
                       "normalizer or a prefix space changes the text): byte offsets would "
                       "not match the text")


def unit_ends(ids, lengths, unit_ids=()) -> np.ndarray:
  """``[n]`` int64: the unit offset where each token of the stream ``ids`` ends.

  ``lengths[id]`` is the token's byte length (0 for a special token); an id in
  ``unit_ids`` (the special tokens both streams have, e.g. BOS and EOS) counts one unit.
  A special token only one side has (a BOS the other tokenizer does not add) counts none:
  it ends where the token before it ends.
  """
  ids = np.asarray(ids, np.int64)
  units = np.asarray(lengths, np.int64)[ids]
  units[np.isin(ids, np.asarray(list(unit_ids), np.int64))] = 1
  return np.cumsum(units)


def align_ends(ends: np.ndarray, other_ends: np.ndarray) -> np.ndarray:
  """``[len(ends)]``: for each token ``i``, the index of the token of the other stream
  that ends at ``ends[i]``, or −1 where none does.

  Offsets are non-decreasing; where several tokens of the other stream end at the same
  offset (a zero-unit special after a text token), the last is taken: its prediction is
  the one made with all the text up to that offset *and* that special in context.
  """
  ends, other_ends = np.asarray(ends), np.asarray(other_ends)
  if len(other_ends) == 0:
    return np.full(len(ends), -1, np.int64)
  at = np.searchsorted(other_ends, ends, side="right") - 1
  found = (at >= 0) & (other_ends[np.maximum(at, 0)] == ends)
  return np.where(found, at, -1)


def vocabulary_map(teacher_bytes: list[bytes], student_bytes: list[bytes],
                   special_pairs: dict[int, int] | None = None) -> np.ndarray:
  """``[V_t]`` int32: the student id whose token is the same byte string as each teacher
  id's, −1 where none is; ``special_pairs`` maps the special ids by role (teacher BOS →
  student BOS, ...). Special tokens (``b""``) are otherwise never matched.

  The map is injective: where a vocabulary holds one byte string twice (a byte-fallback
  ``<0x41>`` beside ``A``), only the first id of each side is matched, so that no student
  probability is counted twice in the matched KL; where two special pairs name one student
  id (a student whose BOS is its EOS), the later pair keeps it (pass EOS after BOS: EOS is
  the one ever predicted).
  """
  index: dict[bytes, int] = {}
  for u, b in enumerate(student_bytes):
    if b:
      index.setdefault(b, u)
  seen: set[bytes] = set()
  out = np.full(len(teacher_bytes), -1, np.int32)
  for v, b in enumerate(teacher_bytes):
    if b and b not in seen and b in index:
      out[v] = index[b]
    seen.add(b)
  for v, u in (special_pairs or {}).items():
    out[out == u] = -1
    out[v] = u
  return out


def target_counts(ids, token_byte_strings: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """``(bytes, characters)`` ``[n]``: the UTF-8 bytes each token of ``ids`` stands for and
  the characters that start in them (bytes that are not UTF-8 continuation bytes,
  ``0b10xxxxxx``), so that a character split across tokens counts once."""
  lengths = np.array([len(b) for b in token_byte_strings], np.int64)
  starts = np.array([sum(1 for c in b if c & 0xC0 != 0x80) for b in token_byte_strings],
                    np.int64)
  ids = np.asarray(ids)
  return lengths[ids], starts[ids]


def teacher_views(student_stream: np.ndarray, student_ends: np.ndarray,
                  teacher_stream: np.ndarray, teacher_ends: np.ndarray, vocab_map: np.ndarray,
                  starts, max_len: int, teacher_max_len: int, teacher_pad: int):
  """The teacher's tokens of the text of every student row, and where the two align.

  The student's rows are ``student_stream[a : a + max_len]`` for ``a`` in ``starts``
  (:func:`kd_jax.data.text.row_starts`). Each row's teacher view starts at the first
  teacher token that starts at or after the row's first token and runs on for the
  teacher tokens the row's text needs (at most ``teacher_max_len``).

  Returns:
    ``tokens`` int32 ``[N, T_t]`` (padded with ``teacher_pad``), ``lengths`` int32
    ``[N]``, ``index`` int32 ``[N, max_len - 1]`` (for student input position ``j``, the
    teacher view's position that ends at the same offset, −1 where none does or it lies
    past the view) and ``exact`` bool ``[N, max_len - 1]`` (aligned, and both next tokens
    the same string: ``vocab_map[teacher next] == student next``).
  """
  starts = np.asarray(list(starts), np.int64)
  teacher_starts = np.concatenate([[0], teacher_ends[:-1]])
  at = align_ends(student_ends, teacher_ends)                 # student token -> teacher token
  student_start_offsets = np.concatenate([[0], student_ends[:-1]])[starts]
  first = np.searchsorted(teacher_starts, student_start_offsets, side="left")
  last_input = np.minimum(starts + max_len - 2, len(student_stream) - 1)
  needed = np.searchsorted(teacher_ends, student_ends[last_input], side="right") - first
  width = int(min(max(needed.max(initial=1), 1), teacher_max_len))
  n = len(starts)
  tokens = np.full((n, width), teacher_pad, np.int32)
  lengths = np.zeros(n, np.int32)
  index = np.full((n, max_len - 1), -1, np.int32)
  exact = np.zeros((n, max_len - 1), bool)
  for r in range(n):
    view = teacher_stream[first[r]:first[r] + width]
    tokens[r, :len(view)], lengths[r] = view, len(view)
    positions = np.arange(starts[r], min(starts[r] + max_len - 1, len(student_stream) - 1))
    k = at[positions] - first[r]
    ok = (at[positions] >= 0) & (k >= 0) & (k < len(view))
    index[r, :len(positions)] = np.where(ok, k, -1)
    teacher_next = np.minimum(at[positions] + 1, len(teacher_stream) - 1)
    same = vocab_map[teacher_stream[teacher_next]] == student_stream[positions + 1]
    exact[r, :len(positions)] = ok & (at[positions] + 1 < len(teacher_stream)) & same
  return tokens, lengths, index, exact
