"""Byte-offset alignment of two tokenizations (kd_jax/data/token_alignment.py) on hand-made
tokenizations, and the bytes of real tokenizers' tokens."""

import numpy as np
import pytest

from kd_jax.data import text as text_data
from kd_jax.data import token_alignment as ta


def _stream(tokens: list[bytes | str], vocab: list[bytes | str]):
  """Ids of ``tokens`` in ``vocab`` (a str entry is a special token: no bytes) and the
  vocabulary's byte lengths."""
  ids = [vocab.index(t) for t in tokens]
  lengths = [0 if isinstance(t, str) else len(t) for t in vocab]
  return ids, lengths


def test_a_multibyte_character_split_on_one_side_aligns_only_where_both_end():
  # "é a": the student's bytes split é (C3 A9); the teacher has é and " a" as tokens.
  s_vocab = [b"\xc3", b"\xa9", b" ", b"a"]
  t_vocab = ["é".encode(), b" a"]
  s_ids, s_len = _stream([b"\xc3", b"\xa9", b" ", b"a"], s_vocab)
  t_ids, t_len = _stream(["é".encode(), b" a"], t_vocab)
  s_ends, t_ends = ta.unit_ends(s_ids, s_len), ta.unit_ends(t_ids, t_len)
  np.testing.assert_array_equal(s_ends, [1, 2, 3, 4])
  np.testing.assert_array_equal(t_ends, [2, 4])
  # After the first byte of é no teacher token ends: not aligned (a decode there is "\ufffd").
  np.testing.assert_array_equal(ta.align_ends(s_ends, t_ends), [-1, 0, -1, 1])
  np.testing.assert_array_equal(ta.align_ends(t_ends, s_ends), [1, 3])


def test_digits_grouped_against_digits_split():
  t_vocab = [b"123", b"+", b"45"]
  s_vocab = [b"1", b"2", b"3", b"4", b"5", b"+"]
  text = [b"1", b"2", b"3", b"+", b"4", b"5"]
  s_ids, s_len = _stream(text, s_vocab)
  t_ids, t_len = _stream([b"123", b"+", b"45"], t_vocab)
  got = ta.align_ends(ta.unit_ends(s_ids, s_len), ta.unit_ends(t_ids, t_len))
  np.testing.assert_array_equal(got, [-1, -1, 0, 1, -1, 2])


def test_a_bos_on_one_side_only_counts_no_unit_and_the_shared_eos_one():
  # Teacher: <bos> hi <eos> <bos> yo <eos>; student: hi <eos> yo <eos> (no BOS).
  t_vocab = ["<bos>", "<eos>", b"hi", b"yo"]
  s_vocab = ["<eos>", b"h", b"i", b"y", b"o"]
  t_ids, t_len = _stream(["<bos>", b"hi", "<eos>", "<bos>", b"yo", "<eos>"], t_vocab)
  s_ids, s_len = _stream([b"h", b"i", "<eos>", b"y", b"o", "<eos>"], s_vocab)
  t_ends = ta.unit_ends(t_ids, t_len, unit_ids=[t_vocab.index("<eos>")])
  s_ends = ta.unit_ends(s_ids, s_len, unit_ids=[s_vocab.index("<eos>")])
  np.testing.assert_array_equal(t_ends, [0, 2, 3, 3, 5, 6])
  np.testing.assert_array_equal(s_ends, [1, 2, 3, 4, 5, 6])
  # The student's "i" meets the teacher's "hi"; its EOS meets the teacher's second BOS
  # (the last teacher token ending there: it predicts the next document's text too).
  np.testing.assert_array_equal(ta.align_ends(s_ends, t_ends), [-1, 1, 3, -1, 4, 5])
  # Counted as a unit on both sides, EOS and BOS stay distinct boundaries.
  t_both = ta.unit_ends(t_ids, t_len, unit_ids=[0, 1])
  np.testing.assert_array_equal(t_both, [1, 3, 4, 5, 7, 8])


def test_an_empty_document_and_an_empty_stream():
  vocab = ["<bos>", "<eos>", b"a"]
  ids, lengths = _stream(["<bos>", "<eos>", "<bos>", b"a", "<eos>"], vocab)
  ends = ta.unit_ends(ids, lengths, unit_ids=[0, 1])
  np.testing.assert_array_equal(ta.align_ends(ends, ends), np.arange(5))
  assert ta.align_ends(np.array([], np.int64), ends).shape == (0,)
  np.testing.assert_array_equal(ta.align_ends(ends, np.array([], np.int64)), [-1] * 5)
  assert ta.unit_ends([], lengths).shape == (0,)


def test_vocabulary_map_matches_byte_strings_and_specials_by_role():
  teacher = [b"", b"", b"ab", b"a", b"c", b"\xc3\xa9"]
  student = [b"", b"a", b"b", b"\xc3\xa9", b"c"]
  got = ta.vocabulary_map(teacher, student, special_pairs={1: 0})
  np.testing.assert_array_equal(got, [-1, 0, -1, 1, 4, 3])


def test_vocabulary_map_gives_a_student_id_shared_by_two_roles_to_the_later_pair():
  # The teacher's BOS (0) and EOS (1) are two ids; the student's BOS is its EOS (id 0).
  teacher, student = [b"", b"", b"a"], [b"", b"a"]
  got = ta.vocabulary_map(teacher, student, special_pairs={0: 0, 1: 0})
  np.testing.assert_array_equal(got, [-1, 0, 1])         # EOS → EOS only: still injective


def test_target_counts_count_a_split_character_once():
  vocab = [b"", b"\xc3", b"\xa9", "é".encode(), b"ab"]
  counted_bytes, chars = ta.target_counts([0, 1, 2, 3, 4], vocab)
  np.testing.assert_array_equal(counted_bytes, [0, 1, 1, 2, 2])
  np.testing.assert_array_equal(chars, [0, 1, 0, 1, 2])


@pytest.fixture(scope="module")
def two_tokenizers(tmp_path_factory):
  docs = [text_data.Document("t", s) for s in (
      "Café au lait, s'il vous plaît — 12345 + 678 = 13023.",
      "Naïve façades: 3.14159 and ümlauts; emoji \U0001F600 too.",
      "The quick brown fox jumps over the lazy dog 42 times.") * 20]
  cache = str(tmp_path_factory.mktemp("tok"))
  return docs, text_data.train_tokenizer(docs, 300, cache), text_data.train_tokenizer(
      docs, 259, cache)


def test_byte_level_tokens_spell_the_documents_bytes(two_tokenizers):
  docs, bpe, byte_level = two_tokenizers
  for tokenizer in (bpe, byte_level):
    token_bytes = ta.token_bytes(tokenizer)
    assert token_bytes[text_data.BOS] == b"" and token_bytes[text_data.EOS] == b""
    for doc in docs[:3]:
      ids = tokenizer.encode(doc.text, add_special_tokens=False).ids
      assert b"".join(token_bytes[i] for i in ids) == doc.text.encode()
  # The 259-token tokenizer is the bytes: every byte-level token of the BPE that is one
  # byte maps to it, and the multi-byte merges map nowhere.
  vocab_map = ta.vocabulary_map(ta.token_bytes(bpe), ta.token_bytes(byte_level))
  bpe_bytes = ta.token_bytes(bpe)
  assert all((vocab_map[i] >= 0) == (len(b) == 1) for i, b in enumerate(bpe_bytes) if b)


def test_a_tokenizer_without_byte_tokens_is_refused():
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, pre_tokenizers  # noqa: PLC0415
  word_level = tokenizers.Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  word_level.pre_tokenizer = pre_tokenizers.Whitespace()
  word_level.decoder = decoders.WordPiece()
  with pytest.raises(ValueError, match="ByteLevel"):
    ta.token_bytes(word_level)


def test_byte_fallback_tokens_read_as_their_bytes_and_the_metaspace_as_a_space():
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models  # noqa: PLC0415
  vocab = {"<unk>": 0, "<0xC3>": 1, "<0xA9>": 2, "\u2581a": 3, "a": 4, "\u2581": 5}
  tokenizer = tokenizers.Tokenizer(models.BPE(vocab, [], unk_token="<unk>", byte_fallback=True))
  tokenizer.add_special_tokens(["<unk>"])
  tokenizer.decoder = decoders.Sequence([decoders.Replace("\u2581", " "),
                                         decoders.ByteFallback(), decoders.Fuse()])
  assert ta.token_bytes(tokenizer) == [b"", b"\xc3", b"\xa9", b" a", b"a", b" "]
