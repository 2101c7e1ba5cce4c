"""Hugging Face Llama / Qwen2 checkpoints load as kd_jax GPTs with transformers' logits.

The fixtures (tests/fixtures/hf/, made by make_fixtures.py in a side environment with
PyTorch and transformers) hold tiny random-weight models saved with save_pretrained
and transformers' float32 logits; this test needs neither library.
"""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from kd_jax.llm import generate
from kd_jax.core.errors import ConfigError
from kd_jax.models import gpt

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_logits_match_transformers(name):
  model = gpt.from_hf(os.path.join(FIXTURES, name))
  reference = np.load(os.path.join(FIXTURES, name, "reference.npz"))
  logits = np.asarray(model(jnp.asarray(reference["tokens"])))
  np.testing.assert_allclose(logits, reference["logits"], atol=1e-4, rtol=0)


def test_the_architectures_are_read_from_config_json():
  llama = gpt.from_hf(os.path.join(FIXTURES, "llama")).config
  qwen2 = gpt.from_hf(os.path.join(FIXTURES, "qwen2")).config   # sharded, with an index
  assert llama["num_kv_heads"] == qwen2["num_kv_heads"] == 2 and llama["num_heads"] == 4
  assert not llama["qkv_bias"] and not llama["tie_embeddings"]
  assert qwen2["qkv_bias"] and qwen2["tie_embeddings"] and qwen2["max_len"] == 64


def test_a_loaded_teacher_generates_and_runs_in_bf16():
  model = gpt.from_hf(os.path.join(FIXTURES, "qwen2"), dtype=jnp.bfloat16)
  graphdef, state = nnx.split(model)
  tokens, lengths = generate.generate(graphdef, state, np.ones((2, 3), np.int32),
                                      np.array([3, 2]), max_new_tokens=5)
  assert tokens.shape == (2, 5) and lengths.tolist() == [5, 5]
  reference = np.load(os.path.join(FIXTURES, "qwen2", "reference.npz"))
  logits = np.asarray(model(jnp.asarray(reference["tokens"])))
  np.testing.assert_allclose(logits, reference["logits"], atol=0.1)


def _copy(tmp_path, name="llama"):
  target = tmp_path / name
  shutil.copytree(os.path.join(FIXTURES, name), target)
  return target


def _edit_config(directory, **changes):
  with open(directory / "config.json") as f:
    config = json.load(f)
  config.update(changes)
  with open(directory / "config.json", "w") as f:
    json.dump(config, f)


@pytest.mark.parametrize("changes, message", [
    ({"model_type": "mistral"}, "model_type 'mistral' is not supported; valid: llama, qwen2"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "RoPE scaling 'llama3'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"mlp_bias": True}, "MLP biases"),
])
def test_unsupported_architectures_are_refused_by_name(tmp_path, changes, message):
  directory = _copy(tmp_path)
  _edit_config(directory, **changes)
  with pytest.raises(ConfigError, match=message):
    gpt.from_hf(str(directory))


def _edit_tensors(directory, edit):
  tensors = load_file(directory / "model.safetensors")
  edit(tensors)
  save_file(tensors, directory / "model.safetensors")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"),
     r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((32, 32), np.float32)}),
     r"tensor model.layers.0.self_attn.k_proj.weight has shape \(32, 32\), but the config "
     r"makes it \(16, 32\)"),
    (lambda t: t.update({"model.layers.0.self_attn.q_norm.weight": np.ones(8, np.float32)}),
     r"unexpected tensors \['model.layers.0.self_attn.q_norm.weight'\]"),
])
def test_a_missing_misshapen_or_unknown_tensor_is_named(tmp_path, edit, message):
  directory = _copy(tmp_path)
  _edit_tensors(directory, edit)
  with pytest.raises(ConfigError, match=message):
    gpt.from_hf(str(directory))


def test_a_directory_without_weights_or_config_is_refused(tmp_path):
  with pytest.raises(ConfigError, match="no config.json"):
    gpt.from_hf(str(tmp_path))
  directory = _copy(tmp_path)
  os.remove(directory / "model.safetensors")
  with pytest.raises(ConfigError, match="no model.safetensors or model.safetensors.index.json"):
    gpt.from_hf(str(directory))
