"""Sequence-level KD on the text task (issue 25): the teacher's samples, turned back into text
and read in the student's own tokens, also when the two tokenizers differ."""

import ml_collections
import numpy as np
import pytest

from kd_jax import config as config_lib
from kd_jax.core.errors import ConfigError
from kd_jax.data import text as text_data
from kd_jax.run import validation
from kd_jax.tasks import text, text_transfer
from tests.conftest import needs_fortunes
from tests.test_cross_tokenizer_text import DOCS, SMOKE, _smoke

EOS = 2


def test_sample_texts_spell_the_tokens_and_mark_the_samples_that_ended():
  token_bytes = [b"", b"", b"", b"Caf", "é".encode(), b"\xc3", b" ok"]
  tokens = np.array([[3, 4, EOS, 0], [3, 5, 0, 0], [6, 99, EOS, 0], [0, 0, 0, 0]])
  lengths = np.array([3, 2, 3, 0])
  texts = text_transfer.sample_texts(tokens, lengths, token_bytes)
  ended = text_transfer.samples_ended(tokens, lengths, EOS)
  # A cut multi-byte character becomes U+FFFD; an id past the vocabulary (a padding row)
  # spells nothing; an empty sample is empty text that did not end.
  assert texts == ["Café", "Caf\ufffd", " ok", ""]
  np.testing.assert_array_equal(ended, [True, False, True, False])


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
  """The teacher's (a 320 BPE) and the student's (bytes) :class:`text.Tokenization` of DOCS."""
  cache = str(tmp_path_factory.mktemp("tok"))
  special = dict(bos=text_data.BOS, eos=text_data.EOS, pad=text_data.PAD)
  return {size: text._tokenization(text_data.train_tokenizer(DOCS, size, cache), special,
                                   DOCS, DOCS[:4]) for size in (320, 259)}


def test_the_student_reads_the_teachers_text_in_its_own_tokens(sides, tmp_path):
  from flax import nnx
  from kd_jax import models
  teacher_side, student_side = sides[320], sides[259]
  teacher = models.create("gpt", vocab_size=320, max_len=12, num_layers=1, num_heads=2, dim=16,
                          rngs=nnx.Rngs(0))
  config = ml_collections.ConfigDict(dict(
      transfer=config_lib.transfer_config(k=2, temperature=1.0), seed=3,
      dataset=dict(max_len=12)))
  stream, stats = text_transfer.write(config, teacher, {"teacher": "random"}, str(tmp_path),
                                      documents=5, teacher_side=teacher_side,
                                      student_side=student_side)
  assert stats["samples"] == 10
  # Independently of token_bytes: the teacher's own decoder on its samples, and the
  # student's decoder on its stream, document by document.
  from kd_jax.llm import transfer
  chunks = [np.load(f) for f in transfer.chunk_files(str(tmp_path))]
  tokens, lengths = chunks[0]["tokens"][0], chunks[0]["lengths"][0]
  expected = [teacher_side.tokenizer.decode([int(t) for t in row[:n] if t != EOS])
              for row, n in zip(tokens, lengths)]
  documents = np.split(stream, np.flatnonzero(stream == text_data.BOS)[1:])
  assert len(documents) == 10 and all(d[0] == text_data.BOS for d in documents)
  got = [student_side.tokenizer.decode([int(t) for t in d[1:] if t != text_data.EOS])
         for d in documents]
  assert got == expected
  ended = [bool(n and row[n - 1] == EOS) for row, n in zip(tokens, lengths)]
  assert [bool(d[-1] == text_data.EOS) for d in documents] == ended
  assert stats["ended_fraction"] == pytest.approx(np.mean(ended))
  assert stats["generated_tokens"] == int(lengths.sum())
  assert stats["student_tokens"] == len(stream)
  # A second call reads the samples back (same key) rather than sampling again.
  again, _ = text_transfer.write(config, teacher, {"teacher": "random"}, str(tmp_path),
                                 documents=5, teacher_side=teacher_side, student_side=student_side)
  np.testing.assert_array_equal(again, stream)
  config.transfer.max_examples = 3          # that many documents instead of k per document
  fewer, stats = text_transfer.write(config, teacher, {"teacher": "random"}, str(tmp_path),
                                     documents=5, teacher_side=teacher_side,
                                     student_side=student_side)
  assert stats["samples"] == 3 and np.sum(fewer == text_data.BOS) == 3


def test_text_transfer_needs_its_block_and_has_no_votes():
  config = _smoke(method="none", student_data="transfer")
  del config.transfer
  with pytest.raises(ConfigError, match="transfer block"):
    validation.validate(config)
  config.transfer = config_lib.transfer_config(label_free=True)
  with pytest.raises(ConfigError, match="transfer.label_free"):
    validation.validate(config)
  config.transfer.label_free = False
  validation.validate(config)
  with pytest.raises(ConfigError, match="student_data.*gold.*transfer"):
    validation.validate(_smoke(method="none", student_data="teacher"))


@needs_fortunes
def test_the_seqkd_smoke_trains_a_byte_student_on_the_teachers_text(tmp_path):
  from kd_jax.run.pipeline import run_experiment
  config = _smoke(method="none", student_data="transfer",
                  **{"dataset.student_vocab_size": 259})
  results = run_experiment(config, str(tmp_path / "run"), teacher_dir=str(tmp_path / "t"),
                           show_progress=False)
  written = results["transfer_set"]
  assert written["samples"] == 64 and written["rows"] > 0
  assert written["student_tokens"] >= written["text_bytes"]   # bytes: one token per byte (+BOS)
  assert results["student"]["bits_per_byte"] > 0


def test_the_sums_corpus_is_worked_arithmetic_whose_digits_a_bpe_groups_and_bytes_spell(
    tmp_path):
  from kd_jax.data import arithmetic
  train, test = text_data.corpus_splits("sums")
  assert len(train) == text_data.SUMS_DOCUMENTS["train"]
  assert len(test) == text_data.SUMS_DOCUMENTS["test"]
  assert not {d.text for d in train} & {d.text for d in test}
  for document in train[:50]:      # a prompt, its worked steps and the checked answer
    prompt, _, worked = document.text.partition("=")
    answer = arithmetic.extract_answer(worked)
    assert answer == eval(prompt) and arithmetic.check_answer(worked, answer)  # noqa: S307
  assert text_data.corpus_splits("sums")[1] == test            # the same every time
  teacher = text_data.train_tokenizer(train, 512, str(tmp_path))
  student = text_data.train_tokenizer(train, text.BYTE_VOCAB, str(tmp_path))
  digits = lambda tokens: [t for t in tokens if t.isdigit()]
  grouped = digits(teacher.encode(train[0].text).tokens)
  spelled = digits(student.encode(train[0].text).tokens)
  assert max(map(len, grouped)) > 1 and set(map(len, spelled)) == {1}
  with pytest.raises(ValueError, match="unknown text corpus 'poems'; valid: fortunes, sums"):
    text_data.corpus_splits("poems")


def test_every_point_of_the_sums_table_is_a_valid_config():
  from kd_jax.config import cli
  from kd_jax.run import grid
  config = cli.load_config_file(SMOKE.replace(":smoke", ":sums"))
  assert config.dataset.name == "sums"
  for name, point in grid.parse_points(config.sweep.points, config):
    validation.validate(grid.apply_point(config, point))
