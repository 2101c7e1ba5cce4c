"""Transfer sets: rejection sampling keeps exactly the verified samples; reuse and resumption."""

import os

import ml_collections
import numpy as np
import pytest
from flax import nnx

from kd_jax.llm import generate as generate_lib
from kd_jax import models
from kd_jax.llm import transfer
from kd_jax.data import arithmetic as ar

TOKENIZER = ar.CharTokenizer()
SAMPLING = ml_collections.ConfigDict(dict(temperature=1.0, top_k=0, top_p=1.0))


def _teacher():
  return models.create("gpt", rngs=nnx.Rngs(0), vocab_size=TOKENIZER.vocab_size, max_len=32,
                       num_layers=1, num_heads=2, dim=16)


def _prompts(n=10):
  problems = ar.generate_split("train", n, difficulty=ar.Difficulty(steps=2, digits=1))
  tokens, prompt_lengths, _ = ar.encode_pairs(problems, TOKENIZER, 32)
  return tokens[:, :8], prompt_lengths, np.arange(n) % 2


def _parity_check(text, answer):
  """An arbitrary verifier that passes about half of random samples."""
  return len(text) % 2 == answer


def _build(directory, k=3, **kwargs):
  prompts, prompt_lengths, answers = _prompts()
  options = dict(k=k, sampling=SAMPLING, max_new_tokens=8, decode=TOKENIZER.decode,
                 eos_id=TOKENIZER.eos_id, pad_id=TOKENIZER.pad_id, directory=str(directory),
                 identity={"teacher": "test"}, answers=answers, check=_parity_check,
                 chunk_size=4)
  return transfer.build(_teacher(), prompts, prompt_lengths, **{**options, **kwargs})


def test_rejection_sampling_keeps_exactly_the_verified_samples(tmp_path):
  result = _build(tmp_path)
  # The raw samples, read back from the chunk files, verified independently.
  files = transfer.chunk_files(str(tmp_path))
  assert len(files) == 3                                   # 10 prompts in chunks of 4
  raw = [np.load(f) for f in files]
  tokens = np.concatenate([r["tokens"] for r in raw], axis=1)     # [k, N, T]
  lengths = np.concatenate([r["lengths"] for r in raw], axis=1)
  answers = np.arange(10) % 2
  expected = [(j, tokens[i, j].tolist()) for j in range(10) for i in range(3)
              if _parity_check(TOKENIZER.decode(tokens[i, j]), answers[j])]
  assert 0 < len(expected) < 30                            # the verifier really rejects some
  got = list(zip(result.prompt_index.tolist(), result.responses.tolist()))
  assert got == expected
  assert result.lengths.tolist() == [int(lengths[i, j]) for j in range(10) for i in range(3)
                                     if _parity_check(TOKENIZER.decode(tokens[i, j]), answers[j])]
  stats = result.stats
  assert stats["samples"] == 30 and stats["accepted"] == len(expected)
  assert stats["acceptance_rate"] == pytest.approx(len(expected) / 30)
  distinct = [len({tuple(t) for p, t in expected if p == j}) for j in range(10)]
  assert stats["distinct_accepted_per_prompt"] == pytest.approx(np.mean(distinct))
  assert stats["generated_tokens"] == int(lengths.sum()) and stats["generation_tokens_per_second"] > 0


def test_a_transfer_set_is_reused_and_an_interrupted_one_resumed(tmp_path, monkeypatch):
  calls = []
  real = generate_lib.generate

  def counting(*args, **kwargs):
    if len(calls) == fail_at[0]:
      raise KeyboardInterrupt("killed")
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(generate_lib, "generate", counting)
  fail_at = [None]
  straight = _build(tmp_path / "straight")
  assert len(calls) == 9                                   # 3 chunks × k = 3 samples
  _build(tmp_path / "straight")
  assert len(calls) == 9                                   # read back: nothing generated
  calls.clear()
  fail_at[0] = 5                                           # killed inside the second chunk
  with pytest.raises(KeyboardInterrupt):
    _build(tmp_path / "resumed")
  assert len(transfer.chunk_files(str(tmp_path / "resumed"))) == 1
  calls.clear()
  fail_at[0] = None
  resumed = _build(tmp_path / "resumed")
  assert len(calls) == 6                                   # only the two unfinished chunks
  np.testing.assert_array_equal(resumed.responses, straight.responses)
  np.testing.assert_array_equal(resumed.prompt_index, straight.prompt_index)


def test_the_cache_key_covers_teacher_prompts_and_settings(tmp_path):
  base = _build(tmp_path)
  for kwargs in (dict(k=2), dict(identity={"teacher": "other"}),
                 dict(sampling=ml_collections.ConfigDict(dict(temperature=0.5, top_k=0,
                                                              top_p=1.0)))):
    _build(tmp_path, **kwargs)
  assert len(os.listdir(tmp_path)) == 4
  assert base.stats["samples"] == 30


def test_majority_vote_keeps_the_most_common_answer():
  texts = [["1####5", "####7", "garbage"],
           ["2####5", "####8", "####"],
           ["3####6", "####8", "x"]]                       # [k = 3, N = 3]
  accepted = transfer._majority(texts, ar.extract_answer)
  assert accepted.tolist() == [[True, False, False], [True, True, False], [False, True, False]]


def test_missing_verifier_pieces_are_refused(tmp_path):
  with pytest.raises(ValueError, match="needs answers and check"):
    _build(tmp_path, check=None)
  with pytest.raises(ValueError, match="needs extract"):
    _build(tmp_path, label_free=True)


def test_transfer_rows_put_each_accepted_answer_after_its_prompt():
  from kd_jax.tasks import arithmetic
  tokens = np.array([[1, 5, 6, 0, 0], [1, 7, 8, 9, 0]], np.int32)
  prompt_lengths = np.array([3, 4], np.int32)
  written = transfer.TransferSet(
      prompt_index=np.array([0, 1, 1], np.int32),
      responses=np.array([[10, 2, 0], [11, 12, 2], [13, 0, 0]], np.int32),
      lengths=np.array([2, 3, 1], np.int32), stats={})
  rows, row_prompt_lengths, lengths = arithmetic.transfer_rows(written, tokens, prompt_lengths, 6)
  assert rows.tolist() == [[1, 5, 6, 10, 2, 0], [1, 7, 8, 9, 11, 12], [1, 7, 8, 9, 13, 0]]
  assert row_prompt_lengths.tolist() == [3, 4, 4]
  assert lengths.tolist() == [5, 6, 5]               # the second row is cut at max_len
