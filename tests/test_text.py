"""The text corpus, its BPE tokenizer and packed rows (kd_jax/data/text.py), and the text task."""

import os

import numpy as np
import pytest

from kd_jax.reporting import report
from kd_jax.data import text
from kd_jax.data.core import DatasetNotFoundError
from tests.conftest import needs_fortunes


def _write_fortunes(directory, collections):
  os.makedirs(directory)
  for name, items in collections.items():
    with open(os.path.join(directory, name), "w") as f:
      f.write("\n%\n".join(items) + "\n%\n")
    with open(os.path.join(directory, name + ".dat"), "wb") as f:
      f.write(b"\x00index")                               # strfile's index: not text


def test_fortunes_are_documents_labelled_by_collection(tmp_path):
  directory = tmp_path / "fortunes"
  _write_fortunes(directory, {"love": ["Roses are red.", "Two\nlines."], "law": ["Objection!"]})
  os.makedirs(directory / "off")
  documents = text.read_fortunes(str(directory))
  assert [(d.collection, d.text) for d in documents] == [
      ("law", "Objection!"), ("love", "Roses are red."), ("love", "Two\nlines.")]


def test_a_missing_corpus_names_the_package(tmp_path):
  with pytest.raises(DatasetNotFoundError, match="apt-get install fortunes"):
    text.read_fortunes(str(tmp_path / "nowhere"))


def test_the_split_is_by_document_hash_and_disjoint():
  documents = [text.Document("c", f"fortune number {i}") for i in range(2000)]
  train, test = text.split(documents)
  assert len(train) + len(test) == 2000 and not {d.text for d in train} & {d.text for d in test}
  assert 0.03 < len(test) / 2000 < 0.07                    # TEST_FRACTION = 5%
  shuffled_train, _ = text.split(documents[::-1])
  assert {d.text for d in shuffled_train} == {d.text for d in train}


def test_tokenizer_is_trained_once_per_corpus_and_size(tmp_path):
  documents = [text.Document("c", f"the quick brown fox {i} jumps") for i in range(200)]
  first = text.train_tokenizer(documents, 300, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 1 and first.get_vocab_size() == 300
  assert [first.token_to_id(t) for t in text.SPECIAL_TOKENS] == [text.PAD, text.BOS, text.EOS]
  again = text.train_tokenizer(documents, 300, str(tmp_path))
  assert again.to_str() == first.to_str() and len(os.listdir(tmp_path)) == 1
  text.train_tokenizer(documents, 280, str(tmp_path))
  text.train_tokenizer(documents[:100], 300, str(tmp_path))
  assert len(os.listdir(tmp_path)) == 3
  assert first.decode(first.encode("the quick fox 7").ids) == "the quick fox 7"


def test_rows_pack_the_stream_and_every_token_is_a_target_once(tmp_path):
  documents = [text.Document("c", "ab " * n) for n in (1, 5, 30, 2)]
  tokenizer = text.train_tokenizer(documents, 270, str(tmp_path))
  tokens, lengths = text.token_rows(documents, tokenizer, 8)
  stream = np.concatenate([[text.BOS, *tokenizer.encode(d.text).ids, text.EOS]
                           for d in documents])
  assert (lengths[:-1] == 8).all() and 2 <= lengths[-1] <= 8
  # Rows overlap by one token: the targets (every token after a row's first) are the
  # stream after its first token, each exactly once.
  targets = np.concatenate([row[1:n] for row, n in zip(tokens, lengths)])
  np.testing.assert_array_equal(targets, stream[1:])
  assert (tokens[-1, lengths[-1]:] == text.PAD).all()


@needs_fortunes
def test_the_installed_corpus_reads():
  documents = text.read_fortunes()
  assert len(documents) > 10_000 and len({d.collection for d in documents}) > 30


def test_the_report_reads_nll_as_lower_is_better():
  row = lambda nll: {"params": 10, "nll": nll, "perplexity": float(np.exp(nll)),
                     "token_accuracy": 0.3, "kl_to_teacher": 0.1, "agreement": 0.5}
  results = {"headline": "nll", "config": {"method": "kd"}, "teacher": row(2.0),
             "baseline": row(3.0), "student": row(2.75),
             "timing": {"teacher_train_seconds": 1.0, "student_wall_seconds": 1.0,
                        "total_seconds": 3.0}}
  results["student"].update(steps=10, resumed_from_step=0)
  table = report.summary_table(results)
  assert "KD gain (from scratch − student, final nll per token): +0.2500 nats" in table
  assert "no better" not in table
  results["teacher"]["nll"] = 3.5
  assert "the teacher (3.5000) is no better" in report.summary_table(results)


@needs_fortunes
@pytest.mark.slow
def test_a_hugging_face_teacher_brings_its_tokenizer_and_vocabulary(tmp_path):
  """teacher.checkpoint = a Llama directory with tokenizer.json: the student is built for its
  vocabulary and the rows are tokenized by its tokenizer."""
  import json
  from kd_jax.config import cli
  from kd_jax.run.pipeline import run_experiment
  from kd_jax.models import gpt, hf_checkpoint
  checkpoint = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "text_llama")
  config = cli.load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                             "experiments", "text", "token_kd.py:smoke"))
  config.teacher.checkpoint = checkpoint
  results = run_experiment(config, str(tmp_path / "run"), teacher_dir=str(tmp_path / "t"),
                           show_progress=False)
  with open(os.path.join(checkpoint, "config.json")) as f:
    vocab = json.load(f)["vocab_size"]
  assert results["teacher"]["params"] == gpt.from_hf(checkpoint).num_params()
  assert results["student"]["params"] == gpt.param_count(
      vocab_size=vocab, num_layers=1, num_heads=2, dim=16, tie_embeddings=True)
  tokenizer, bos, eos = hf_checkpoint.load_tokenizer(checkpoint)
  assert (bos, eos) == (tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>"))
  assert results["teacher"]["nll"] > 0 and results["student"]["kl_to_teacher"] >= 0
  from kd_jax.reporting import report
  assert f"teacher loaded from the Hugging Face checkpoint {checkpoint}" in (
      report.summary_table(results))


def test_a_text_teachers_cache_key_follows_the_corpus(tmp_path, monkeypatch):
  from kd_jax.config import cli
  from kd_jax.run import teachers
  config = cli.load_config_file(os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                             "experiments", "text", "token_kd.py:smoke"))
  keys = []
  for texts in (["one", "two"], ["one", "two"], ["one", "three"]):
    directory = tmp_path / f"corpus{len(keys)}"
    _write_fortunes(directory, {"c": texts})
    monkeypatch.setattr(text, "FORTUNES_DIR", str(directory))
    keys.append(teachers.teacher_key(config))
  assert keys[0] == keys[1] != keys[2]
