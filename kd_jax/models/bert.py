"""A BERT encoder in Flax NNX, loaded from a Hugging Face / sentence-transformers checkpoint.

The architecture is Hugging Face's ``BertModel`` (post-norm: ``x = LN(x + attn(x))``,
``x = LN(x + ffn(x))`` with exact-erf GELU; word + position + token-type embeddings
with a LayerNorm), and the parameter names follow it, so a checkpoint's
``model.safetensors`` maps one to one (linear weights transposed). A
:class:`SentenceEncoder` adds what sentence-transformers does for
all-MiniLM-L6-v2 (``modules.json``: Transformer → mean Pooling → Normalize):
WordPiece tokenisation with the checkpoint's ``tokenizer.json`` (the
``tokenizers`` library) truncated at ``max_seq_length``, the mean of the last
hidden states over the real tokens, and L2 normalisation::

    encoder = SentenceEncoder.from_pretrained(path)
    encoder.encode(["A fortune a day.", "Computers are like air conditioners."])  # [2, 384]

``Bert(tokens, mask, *, return_features=True)`` also returns ``embeddings``,
``hidden_<i>`` (the output of layer i), ``attention_<i>`` (its attention
probabilities ``[B, H, T, T]``) and its queries, keys and values ``query_<i>``,
``key_<i>``, ``value_<i>`` ``[B, T, D]``: what DistilBERT-style (hidden states) and
MiniLM-style (:mod:`kd_jax.objectives.attention_losses`) distillation match.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.core.errors import ConfigError
from kd_jax.models import hf_checkpoint


def _linear(d_in, d_out, rngs, dtype):
  return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


def _layer_norm(dim, eps, rngs, dtype):
  return nnx.LayerNorm(dim, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class Layer(nnx.Module):
  """One post-norm encoder layer (names as Hugging Face's ``BertLayer``, flattened)."""

  def __init__(self, dim, heads, mlp_dim, eps, rngs, dtype):
    self.heads, self.dtype = heads, dtype
    self.query, self.key, self.value = (_linear(dim, dim, rngs, dtype) for _ in range(3))
    self.attention_output = _linear(dim, dim, rngs, dtype)
    self.attention_norm = _layer_norm(dim, eps, rngs, dtype)
    self.intermediate = _linear(dim, mlp_dim, rngs, dtype)
    self.output = _linear(mlp_dim, dim, rngs, dtype)
    self.output_norm = _layer_norm(dim, eps, rngs, dtype)

  def __call__(self, x, mask):
    """``(output, attention probabilities [B, H, T, T], (q, k, v) each [B, T, D])``."""
    b, t, d = x.shape
    split = lambda y: y.reshape(b, t, self.heads, d // self.heads).transpose(0, 2, 1, 3)
    qkv = self.query(x), self.key(x), self.value(x)
    q, k, v = map(split, qkv)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(d // self.heads))
    scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    attended = jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v.dtype), v)
    attended = attended.transpose(0, 2, 1, 3).reshape(b, t, d)
    x = self.attention_norm(x + self.attention_output(attended))
    x = self.output_norm(x + self.output(jax.nn.gelu(self.intermediate(x), approximate=False)))
    return x, probs, qkv


class Bert(nnx.Module):
  """BERT encoder: ``(tokens [B, T], mask [B, T]) -> hidden states [B, T, D]`` (float32)."""

  def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int,
               mlp_dim: int, max_len: int = 512, type_vocab_size: int = 2,
               eps: float = 1e-12, rngs: nnx.Rngs, dtype=jnp.float32):
    if dim % num_heads:
      raise ValueError(f"bert: dim={dim} must be a multiple of num_heads={num_heads}")
    self._config = tuple(dict(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                              num_heads=num_heads, mlp_dim=mlp_dim, max_len=max_len,
                              type_vocab_size=type_vocab_size, eps=eps).items())
    embed = lambda n: nnx.Embed(n, dim, dtype=dtype, param_dtype=jnp.float32,
                                embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.word_embeddings, self.position_embeddings = embed(vocab_size), embed(max_len)
    self.token_type_embeddings = embed(type_vocab_size)
    self.embeddings_norm = _layer_norm(dim, eps, rngs, dtype)
    self.layers = nnx.List([Layer(dim, num_heads, mlp_dim, eps, rngs, dtype)
                            for _ in range(num_layers)])

  @property
  def config(self) -> dict:
    return dict(self._config)

  def num_params(self) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))

  def __call__(self, tokens, mask, *, return_features: bool = False):
    t = tokens.shape[1]
    x = (self.word_embeddings(tokens) + self.position_embeddings(jnp.arange(t))[None]
         + self.token_type_embeddings(jnp.zeros_like(tokens)))
    x = self.embeddings_norm(x)
    features = {"embeddings": x}
    mask = mask.astype(bool)
    for i, layer in enumerate(self.layers):
      x, probs, (q, k, v) = layer(x, mask)
      features.update({f"hidden_{i}": x, f"attention_{i}": probs, f"query_{i}": q,
                       f"key_{i}": k, f"value_{i}": v})
    x = x.astype(jnp.float32)
    return (x, features) if return_features else x


def mean_pool(hidden, mask):
  """Sentence embeddings ``[B, D]`` float32: the mean of ``hidden`` ``[B, T, D]`` over the real
  tokens (``mask`` ``[B, T]``), L2-normalised (sentence-transformers' Pooling + Normalize)."""
  weights = mask[..., None].astype(jnp.float32)
  mean = jnp.sum(hidden * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


class SentenceBert(nnx.Module):
  """A :class:`Bert` with mean pooling, as the engine runs a sentence encoder.

  ``model(tokens [B, T] int32, *, train=False, return_features=False)`` returns the
  unit-norm sentence embeddings ``[B, D]`` float32 (the engine's "logits") and, with
  ``return_features``, the :class:`Bert` features plus ``qkv_<i>`` ``[B, T, 3·D]``
  (layer i's queries, keys and values, what MiniLM's loss compares). Token id
  :data:`PAD_ID` is padding: BERT's ``[PAD]``, never a real token, so the mask is
  the tokens themselves.
  """
  PAD_ID = 0
  input_dtype = jnp.int32

  def __init__(self, *, vocab_size: int, dim: int, num_layers: int, num_heads: int,
               mlp_dim: int, max_len: int = 512, rngs: nnx.Rngs, dtype=jnp.float32):
    self.bert = Bert(vocab_size=vocab_size, dim=dim, num_layers=num_layers,
                     num_heads=num_heads, mlp_dim=mlp_dim, max_len=max_len, rngs=rngs,
                     dtype=dtype)
    self.input_shape = (max_len,)
    self.feature_names = ("embeddings", *(f"{kind}_{i}" for i in range(num_layers)
                                          for kind in ("hidden", "attention", "qkv")))

  @classmethod
  def wrap(cls, bert: Bert) -> SentenceBert:
    """The sentence encoder of an existing (e.g. pretrained) :class:`Bert`, sharing its
    variables."""
    config = {k: v for k, v in bert.config.items() if k not in ("type_vocab_size", "eps")}
    model = nnx.eval_shape(lambda: cls(**config, rngs=nnx.Rngs(0)))
    model.bert = bert
    return model

  def num_params(self) -> int:
    return self.bert.num_params()

  def __call__(self, tokens, *, train: bool = False, return_features: bool = False):
    del train        # no dropout
    mask = tokens != self.PAD_ID
    hidden, features = self.bert(tokens, mask, return_features=True)
    embedding = mean_pool(hidden, mask)
    if not return_features:
      return embedding
    for i in range(len(self.bert.layers)):
      features[f"qkv_{i}"] = jnp.concatenate(
          [features.pop(f"{kind}_{i}") for kind in ("query", "key", "value")], axis=-1)
    return embedding, features


# --------------------------------------------------------------------------- checkpoints

def _targets(model: Bert) -> dict:
  """Hugging Face ``BertModel`` tensor name → (variable, transpose)."""
  targets = {"embeddings.word_embeddings.weight": (model.word_embeddings.embedding, False),
             "embeddings.position_embeddings.weight": (model.position_embeddings.embedding, False),
             "embeddings.token_type_embeddings.weight": (model.token_type_embeddings.embedding,
                                                         False),
             "embeddings.LayerNorm.weight": (model.embeddings_norm.scale, False),
             "embeddings.LayerNorm.bias": (model.embeddings_norm.bias, False)}
  names = {"attention.self.query": "query", "attention.self.key": "key",
           "attention.self.value": "value", "attention.output.dense": "attention_output",
           "intermediate.dense": "intermediate", "output.dense": "output"}
  norms = {"attention.output.LayerNorm": "attention_norm", "output.LayerNorm": "output_norm"}
  for i, layer in enumerate(model.layers):
    prefix = f"encoder.layer.{i}."
    for hf, ours in names.items():
      targets[f"{prefix}{hf}.weight"] = (getattr(layer, ours).kernel, True)
      targets[f"{prefix}{hf}.bias"] = (getattr(layer, ours).bias, False)
    for hf, ours in norms.items():
      targets[f"{prefix}{hf}.weight"] = (getattr(layer, ours).scale, False)
      targets[f"{prefix}{hf}.bias"] = (getattr(layer, ours).bias, False)
  return targets


# Tensors a BertModel checkpoint may hold that the encoder does not use.
_UNUSED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def load(path: str, *, dtype=jnp.float32) -> Bert:
  """The :class:`Bert` of a Hugging Face ``BertModel`` directory (``config.json``,
  ``model.safetensors``), every tensor mapped and shape-checked.

  Raises:
    ConfigError: no such checkpoint, another model type, or a tensor missing,
      misshapen or unexpected (named).
  """
  from safetensors.numpy import load_file  # noqa: PLC0415
  path = os.path.expanduser(path)
  config_path, weights = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
  if not os.path.exists(config_path) or not os.path.exists(weights):
    raise ConfigError("teacher.checkpoint", f"{path}: expected config.json and model.safetensors "
                      "(a Hugging Face BertModel)")
  with open(config_path) as f:
    config = json.load(f)
  if config.get("model_type") != "bert":
    raise ConfigError("teacher.checkpoint", f"{config_path}: model_type "
                      f"{config.get('model_type')!r} is not 'bert'")
  model = nnx.eval_shape(lambda: Bert(
      vocab_size=config["vocab_size"], dim=config["hidden_size"],
      num_layers=config["num_hidden_layers"], num_heads=config["num_attention_heads"],
      mlp_dim=config["intermediate_size"], max_len=config["max_position_embeddings"],
      type_vocab_size=config.get("type_vocab_size", 2), eps=config.get("layer_norm_eps", 1e-12),
      rngs=nnx.Rngs(0), dtype=dtype))
  hf_checkpoint.copy_tensors(model, load_file(weights), _targets(model), weights, ignored=_UNUSED)
  return model


class SentenceEncoder:
  """A BERT sentence encoder as sentence-transformers runs all-MiniLM-L6-v2.

  ``encode(sentences, batch_size=64) -> np.ndarray [N, D]`` float32, unit norm: the
  mean of the last hidden states over the real tokens, L2-normalised. Batches are
  padded to a multiple of 16 tokens (few compilations); the result does not depend
  on the batch size or the padding.
  """

  def __init__(self, model: Bert, tokenizer, max_seq_length: int):
    self.model, self.tokenizer, self.max_seq_length = model, tokenizer, max_seq_length
    self.tokenizer.enable_truncation(max_seq_length)
    self.tokenizer.no_padding()
    graphdef, state = nnx.split(model)

    @jax.jit
    def embed(state, tokens, mask):
      return mean_pool(nnx.merge(graphdef, state)(tokens, mask), mask)

    self._state, self._embed = state, embed

  @classmethod
  def from_pretrained(cls, path: str, *, dtype=jnp.float32) -> SentenceEncoder:
    """Loads ``path`` (a sentence-transformers directory: the BertModel files, its
    ``tokenizer.json`` and ``sentence_bert_config.json``)."""
    import tokenizers  # noqa: PLC0415
    path = os.path.expanduser(path)
    settings_path = os.path.join(path, "sentence_bert_config.json")
    max_seq_length = 512
    if os.path.exists(settings_path):
      with open(settings_path) as f:
        max_seq_length = json.load(f).get("max_seq_length", max_seq_length)
    return cls(load(path, dtype=dtype), tokenizers.Tokenizer.from_file(
        os.path.join(path, "tokenizer.json")), max_seq_length)

  def tokenize(self, sentences: list[str]) -> list[list[int]]:
    """Token ids of each sentence, ``[CLS] ... [SEP]``, truncated at ``max_seq_length``."""
    return [e.ids for e in self.tokenizer.encode_batch(list(sentences))]

  def encode(self, sentences: list[str], batch_size: int = 64) -> np.ndarray:
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = self.tokenize(sentences)
    out = []
    for start in range(0, len(ids), batch_size):
      batch = ids[start:start + batch_size]
      width = -(-max(len(row) for row in batch) // 16) * 16
      tokens = np.zeros((len(batch), width), np.int32)
      mask = np.zeros((len(batch), width), bool)
      for i, row in enumerate(batch):
        tokens[i, :len(row)], mask[i, :len(row)] = row, True
      out.append(np.asarray(self._embed(self._state, tokens, mask)))
    return np.concatenate(out) if out else np.zeros((0, self.model.config["dim"]), np.float32)


def student_from_teacher(teacher: Bert, layers: tuple[int, ...], *, dtype=jnp.float32) -> Bert:
  """A DistilBERT-style student: the teacher's embeddings and the teacher layers ``layers``
  (e.g. every other one, ``(0, 2, 4)``), copied (Sanh et al. 2019).

  Raises:
    ValueError: a layer index outside the teacher.
  """
  config = teacher.config
  if any(not 0 <= i < config["num_layers"] for i in layers):
    raise ValueError(f"layers {layers} must index the teacher's {config['num_layers']} layers")
  student = Bert(**{**config, "num_layers": len(layers)}, rngs=nnx.Rngs(0), dtype=dtype)
  for name in ("word_embeddings", "position_embeddings", "token_type_embeddings",
               "embeddings_norm"):
    nnx.update(getattr(student, name), jax.tree.map(jnp.copy, nnx.state(getattr(teacher, name))))
  for target, source in zip(student.layers, layers):
    nnx.update(target, jax.tree.map(jnp.copy, nnx.state(teacher.layers[source])))
  return student
