"""A decoder-only transformer (Llama / Qwen2 family) in Flax NNX, with a KV cache.

    x_0 = embed(tokens)
    x_i = x_{i-1} + attn_i(rmsnorm(x_{i-1}))          causal self-attention with RoPE
    x_i = x_i + mlp_i(rmsnorm(x_i))                    SwiGLU (or GELU) MLP
    logits = lm_head(rmsnorm(x_L))                     (or embed^T with tied embeddings)

The architecture options are those of the Hugging Face Llama and Qwen2 models, so
that their checkpoints can be loaded (the names of the parameters follow theirs):
grouped-query attention (``num_kv_heads`` < ``num_heads``), optional q/k/v biases
(Qwen2), tied input/output embeddings, RoPE base ``rope_theta``, RMSNorm ``norm_eps``.
RoPE uses the "rotate half" layout of those models: the head dimension is split
in two halves that form the (real, imaginary) pairs.

``model(tokens [B, T] int32, *, train=False, return_features=False, mask=None)``
returns float32 logits ``[B, T, V]``; with ``return_features=True`` also a dict with
``hidden_<i>`` ``[B, T, D]`` (the residual stream after block i, i = 0 .. L-1) and
``attention_<i>`` ``[B, H, T, T]`` (the attention probabilities of block i).
``mask`` ``[B, T]`` marks the real tokens; padding keys are never attended to
(right padding is already excluded by causality for the real positions).

Parameters are float32; ``dtype`` is the computation dtype (bf16 for mixed
precision); softmaxes, norms and logits are computed in float32.

:func:`GPT.decode` runs positions ``[B, L]`` against a KV cache (see
:mod:`kd_jax.generate`), so that sampling costs one token's compute per step.

Example::

    >>> from flax import nnx
    >>> model = GPT(vocab_size=20, max_len=32, num_layers=2, num_heads=4, dim=32,
    ...             rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 5), jnp.int32)).shape
    (2, 5, 20)
    >>> model.num_params() == param_count(vocab_size=20, num_layers=2, num_heads=4, dim=32)
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import hf_checkpoint

MLPS = ("swiglu", "gelu")


def param_count(*, vocab_size: int, num_layers: int, num_heads: int, dim: int,
                num_kv_heads: int | None = None, head_dim: int | None = None,
                mlp_dim: int | None = None, mlp: str = "swiglu", qkv_bias: bool = False,
                tie_embeddings: bool = False) -> int:
  """The closed-form parameter count of a :class:`GPT` with these options.

  Per block: two norms (2D), q and o projections (2·D·H·h), k and v (2·D·K·h),
  q/k/v biases ((H + 2K)·h), and the MLP (3·D·F for SwiGLU, 2·D·F for GELU);
  plus the embedding (V·D), the final norm (D) and the head (D·V, untied).
  """
  num_kv_heads = num_kv_heads or num_heads
  head_dim = head_dim or dim // num_heads
  mlp_dim = mlp_dim or default_mlp_dim(dim, mlp)
  attention = 2 * dim * num_heads * head_dim + 2 * dim * num_kv_heads * head_dim
  if qkv_bias:
    attention += (num_heads + 2 * num_kv_heads) * head_dim
  mlp_params = (3 if mlp == "swiglu" else 2) * dim * mlp_dim
  block = 2 * dim + attention + mlp_params
  head = 0 if tie_embeddings else dim * vocab_size
  return vocab_size * dim + num_layers * block + dim + head


def forward_flops(config: Mapping[str, Any], tokens: int, context: int | None = None) -> int:
  """Matmul FLOPs (2 per multiply-add) of a :class:`GPT` forward pass over one sequence.

  ``config`` is :attr:`GPT.config` (or its constructor's keyword arguments, defaults
  resolved here); ``tokens`` positions run, each attending over ``context`` key positions
  (default ``tokens``). Attention is computed densely, so masked keys count: the upper
  triangle of a causal forward and a KV cache's unwritten tail. Per position and block:
  the q and o projections 2·2·D·H·h, k and v 2·2·D·K·h, the attention scores and their
  weighted sum 2·2·H·h·context, the MLP 2·3·D·F (SwiGLU) or 2·2·D·F (GELU); then the
  head 2·D·V. The embedding is a lookup; norms, RoPE, softmax and biases are elementwise
  (O(D) per position) and left out, as in Kaplan et al. 2020, Table 1.
  """
  dim, heads = config["dim"], config["num_heads"]
  kv_heads = config.get("num_kv_heads") or heads
  head_dim = config.get("head_dim") or dim // heads
  mlp = config.get("mlp", "swiglu")
  mlp_dim = config.get("mlp_dim") or default_mlp_dim(dim, mlp)
  context = tokens if context is None else context
  projections = 2 * dim * head_dim * (2 * heads + 2 * kv_heads)
  attention = 2 * 2 * heads * head_dim * context
  mlp_flops = 2 * (3 if mlp == "swiglu" else 2) * dim * mlp_dim
  per_position = config["num_layers"] * (projections + attention + mlp_flops)
  return tokens * (per_position + 2 * dim * config["vocab_size"])


def default_mlp_dim(dim: int, mlp: str) -> int:
  """4·D for GELU; for SwiGLU ⅔ of that (the same parameter count), rounded up to 8."""
  if mlp == "gelu":
    return 4 * dim
  return -(-(8 * dim // 3) // 8) * 8


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x²) + eps) · weight, in float32 (as Llama and Qwen2 compute it)."""

  def __init__(self, dim: int, *, eps: float, dtype):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps, self.dtype = eps, dtype

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (x32 * self.weight[...]).astype(self.dtype)


def rope_tables(positions, head_dim: int, theta: float):
  """cos, sin ``[..., head_dim]`` for integer ``positions`` (the rotate-half layout)."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  angles = jnp.concatenate([angles, angles], axis=-1)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
  """Rotates ``x`` ``[B, T, heads, head_dim]`` by position; cos/sin ``[B, T, head_dim]``."""
  # jnp.split, not x[..., half:]: indexing lowers to a gather under a symbolic batch
  # (jax2tf), which the LiteRT converter refuses; split lowers to plain slices.
  first, second = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-second, first], axis=-1)
  x32 = x.astype(jnp.float32)
  out = x32 * cos[:, :, None, :] + rotated.astype(jnp.float32) * sin[:, :, None, :]
  return out.astype(x.dtype)


def _linear(d_in, d_out, *, bias, dtype, rngs, std):
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.normal(std),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class Attention(nnx.Module):
  """Grouped-query causal self-attention with RoPE (q/k/v biases optional)."""

  def __init__(self, *, dim, num_heads, num_kv_heads, head_dim, qkv_bias, rope_theta, dtype,
               rngs, std, out_std):
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta, self.dtype = rope_theta, dtype
    self.q_proj = _linear(dim, num_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs, std=std)
    self.k_proj = _linear(dim, num_kv_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs,
                          std=std)
    self.v_proj = _linear(dim, num_kv_heads * head_dim, bias=qkv_bias, dtype=dtype, rngs=rngs,
                          std=std)
    self.o_proj = _linear(num_heads * head_dim, dim, bias=False, dtype=dtype, rngs=rngs,
                          std=out_std)

  def project(self, x, positions):
    """q ``[B, T, H, h]`` and k, v ``[B, T, K, h]`` for the tokens at ``positions``."""
    b, t, _ = x.shape
    q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
    cos, sin = rope_tables(positions, self.head_dim, self.rope_theta)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

  def attend(self, q, k, v, allowed):
    """Attention of q ``[B, T, H, h]`` over k, v ``[B, S, K, h]``; ``allowed`` ``[B, T, S]``.

    Returns the output ``[B, T, D]`` and the probabilities ``[B, H, T, S]`` (float32).
    """
    b, t = q.shape[:2]
    groups = self.num_heads // self.num_kv_heads
    q = q.reshape(b, t, self.num_kv_heads, groups, self.head_dim)
    scores = jnp.einsum("btkgh,bskh->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(self.head_dim))
    scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bkgts,bskh->btkgh", probs.astype(v.dtype), v)
    out = self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim))
    return out, probs.reshape(b, self.num_heads, t, -1)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) · up(x)); GELU: down(gelu(up(x))). No biases."""

  def __init__(self, *, dim, mlp_dim, kind, dtype, rngs, std, out_std):
    self.kind = kind
    if kind == "swiglu":
      self.gate_proj = _linear(dim, mlp_dim, bias=False, dtype=dtype, rngs=rngs, std=std)
    self.up_proj = _linear(dim, mlp_dim, bias=False, dtype=dtype, rngs=rngs, std=std)
    self.down_proj = _linear(mlp_dim, dim, bias=False, dtype=dtype, rngs=rngs, std=out_std)

  def __call__(self, x):
    if self.kind == "swiglu":
      return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
    return self.down_proj(jax.nn.gelu(self.up_proj(x), approximate=False))


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  def __init__(self, *, dim, norm_eps, dtype, mlp_dim, mlp, rngs, std, out_std, **attention):
    self.input_layernorm = RMSNorm(dim, eps=norm_eps, dtype=dtype)
    self.self_attn = Attention(dim=dim, dtype=dtype, rngs=rngs, std=std, out_std=out_std,
                               **attention)
    self.post_attention_layernorm = RMSNorm(dim, eps=norm_eps, dtype=dtype)
    self.mlp = MLP(dim=dim, mlp_dim=mlp_dim, kind=mlp, dtype=dtype, rngs=rngs, std=std,
                   out_std=out_std)

  def __call__(self, x, positions, allowed, kv=None):
    """``kv``: None (attend within x) or ``(k, v, write)`` — the layer's cache and a function
    that writes this call's k, v into it and returns the new cache."""
    q, k, v = self.self_attn.project(self.input_layernorm(x), positions)
    if kv is not None:
      cache_k, cache_v, write = kv
      k, v = write(cache_k, k), write(cache_v, v)
    attended, probs = self.self_attn.attend(q, k, v, allowed)
    x = x + attended
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, probs, (k, v)


class GPT(nnx.Module):
  """Decoder-only transformer; see the module docstring.

  Args:
    vocab_size: number of token ids (V).
    max_len: longest sequence (prompt + generated) the model accepts.
    num_layers, num_heads, dim: depth, query heads and width (D).
    rngs: initialisation RNGs.
    dtype: computation dtype.
    num_kv_heads: key/value heads (grouped-query attention); default ``num_heads``.
    head_dim: default ``dim // num_heads``.
    mlp_dim: MLP width; default :func:`default_mlp_dim`.
    mlp: ``"swiglu"`` (Llama, Qwen2) or ``"gelu"``.
    qkv_bias: biases on the q, k, v projections (Qwen2).
    tie_embeddings: the output head is the transposed input embedding.
    rope_theta: RoPE base.
    norm_eps: RMSNorm epsilon.
    init_std: standard deviation of the weights (output projections are further
      scaled by 1/sqrt(2·num_layers), GPT-2's residual scaling).
    output_vocab: the ids the tokenizer can produce, when fewer than ``vocab_size`` (a
      checkpoint's embedding padded to a round size, as Qwen2.5's 151,936 rows for a
      151,665-token tokenizer): the logits are those of ids ``< output_vocab`` only. That is
      the padding rows' logits masked to −inf and dropped, so two models of one tokenizer
      and different row counts give logits of one width. None: all ``vocab_size``.
  """

  def __init__(self, *, vocab_size: int, max_len: int, num_layers: int, num_heads: int,
               dim: int, rngs: nnx.Rngs, dtype=jnp.float32, num_kv_heads: int | None = None,
               head_dim: int | None = None, mlp_dim: int | None = None, mlp: str = "swiglu",
               qkv_bias: bool = False, tie_embeddings: bool = False,
               rope_theta: float = 10000.0, norm_eps: float = 1e-6, init_std: float = 0.02,
               output_vocab: int | None = None):
    num_kv_heads = num_kv_heads or num_heads
    head_dim = head_dim or dim // num_heads
    if mlp not in MLPS:
      raise ValueError(f"gpt: mlp must be one of {MLPS}, got {mlp!r}")
    if num_heads % num_kv_heads:
      raise ValueError(f"gpt: num_heads={num_heads} must be a multiple of "
                       f"num_kv_heads={num_kv_heads}")
    if head_dim % 2:
      raise ValueError(f"gpt: head_dim={head_dim} must be even for RoPE")
    if output_vocab is not None and not 0 < output_vocab <= vocab_size:
      raise ValueError(f"gpt: output_vocab={output_vocab} must be in [1, vocab_size="
                       f"{vocab_size}]")
    # A tuple, not a dict: module attributes end up in the (hashable) graph definition.
    self._config = tuple(dict(
        vocab_size=vocab_size, max_len=max_len, num_layers=num_layers, num_heads=num_heads,
        dim=dim, num_kv_heads=num_kv_heads, head_dim=head_dim,
        mlp_dim=mlp_dim or default_mlp_dim(dim, mlp), mlp=mlp, qkv_bias=qkv_bias,
        tie_embeddings=tie_embeddings, rope_theta=rope_theta, norm_eps=norm_eps,
        output_vocab=output_vocab).items())
    self.output_vocab = vocab_size if output_vocab is None else output_vocab
    self.vocab_size, self.max_len, self.dtype = vocab_size, max_len, dtype
    self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
    self.embed_tokens = nnx.Embed(vocab_size, dim, dtype=dtype, param_dtype=jnp.float32,
                                  embedding_init=nnx.initializers.normal(init_std), rngs=rngs)
    out_std = init_std / (2 * num_layers) ** 0.5
    self.layers = nnx.List([
        Block(dim=dim, norm_eps=norm_eps, dtype=dtype, mlp_dim=self.config["mlp_dim"], mlp=mlp,
              rngs=rngs, std=init_std, out_std=out_std, num_heads=num_heads,
              num_kv_heads=num_kv_heads, head_dim=head_dim, qkv_bias=qkv_bias,
              rope_theta=rope_theta)
        for _ in range(num_layers)])
    self.norm = RMSNorm(dim, eps=norm_eps, dtype=dtype)
    self.lm_head = None if tie_embeddings else _linear(dim, vocab_size, bias=False, dtype=dtype,
                                                       rngs=rngs, std=init_std)
    self.feature_names = tuple(f"hidden_{i}" for i in range(num_layers)) + tuple(
        f"attention_{i}" for i in range(num_layers))

  @property
  def config(self) -> dict:
    """The architecture: every constructor option (defaults resolved) but rngs and dtype."""
    return dict(self._config)

  def num_params(self) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(self, nnx.Param)))

  def _logits(self, x):
    x = self.norm(x)
    if self.lm_head is None:
      logits = self.embed_tokens.attend(x)
    else:
      logits = self.lm_head(x)
    return logits[..., :self.output_vocab].astype(jnp.float32)

  def hidden_and_head(self, tokens):
    """``(hidden [B, T, D], head [D, V])`` (V: ``output_vocab``) with ``logits = hidden @
    head``: the final normed hidden states and the output projection (the transposed
    embedding when tied), the inputs of :func:`kd_jax.losses.fused_linear_kd_loss`, which never makes the logits."""
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    allowed = jnp.tril(jnp.ones((t, t), bool))[None]
    x = self.embed_tokens(tokens)
    for layer in self.layers:
      x, _, _ = layer(x, positions, allowed)
    head = (self.embed_tokens.embedding[...].T if self.lm_head is None
            else self.lm_head.kernel[...])
    return self.norm(x), head[:, :self.output_vocab]

  def __call__(self, tokens, *, train: bool = False, return_features: bool = False, mask=None):
    """Logits ``[B, T, V]`` float32, V = ``output_vocab`` (and the features); ``train`` has no
    effect (no dropout)."""
    del train
    b, t = tokens.shape
    if t > self.max_len:
      raise ValueError(f"gpt: sequence length {t} exceeds max_len={self.max_len}")
    positions = jnp.broadcast_to(jnp.arange(t), (b, t))
    allowed = jnp.tril(jnp.ones((t, t), bool))[None]
    if mask is not None:
      allowed = allowed & mask[:, None, :].astype(bool)
    x = self.embed_tokens(tokens)
    features = {}
    for i, layer in enumerate(self.layers):
      x, probs, _ = layer(x, positions, allowed)
      if return_features:
        features[f"hidden_{i}"] = x
        features[f"attention_{i}"] = probs
    logits = self._logits(x)
    return (logits, features) if return_features else logits

  def init_cache(self, batch: int, length: int) -> list:
    """An empty KV cache: per layer ``(k, v)`` of shape ``[batch, length, K, head_dim]``."""
    if length > self.max_len:
      raise ValueError(f"gpt: cache length {length} exceeds max_len={self.max_len}")
    zeros = jnp.zeros((batch, length, self.num_kv_heads, self.head_dim), self.dtype)
    return [(zeros, zeros) for _ in self.layers]

  def decode(self, tokens, positions, cache):
    """Runs ``tokens`` ``[B, L]`` at ``positions`` ``[B, L]`` against the KV ``cache``.

    Each row's k, v are written into the cache at its positions (rows may be at
    different positions); each query attends to the cache entries at positions
    up to its own. Returns ``(logits [B, L, V] float32, new_cache)``.
    """
    length = cache[0][0].shape[1]
    allowed = jnp.arange(length)[None, None, :] <= positions[:, :, None]        # [B, L, S]
    rows = jnp.arange(tokens.shape[0])[:, None]

    def write(old, new):
      # A scatter of each row's keys/values to its own positions (distinct per row).
      return old.at[rows, positions].set(new.astype(old.dtype), unique_indices=True)

    x = self.embed_tokens(tokens)
    new_cache = []
    for layer, (k, v) in zip(self.layers, cache):
      x, _, kv = layer(x, positions, allowed, kv=(k, v, write))
      new_cache.append(kv)
    return self._logits(x), new_cache


def _hf_targets(model) -> dict[str, tuple[nnx.Variable, bool]]:
  """Hugging Face tensor name → (the GPT variable it fills, whether to transpose)."""
  targets = {"model.embed_tokens.weight": (model.embed_tokens.embedding, False),
             "model.norm.weight": (model.norm.weight, False)}
  if model.lm_head is not None:
    targets["lm_head.weight"] = (model.lm_head.kernel, True)
  for i, layer in enumerate(model.layers):
    prefix = f"model.layers.{i}."
    for norm in ("input_layernorm", "post_attention_layernorm"):
      targets[f"{prefix}{norm}.weight"] = (getattr(layer, norm).weight, False)
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
      linear = getattr(layer.self_attn, proj)
      targets[f"{prefix}self_attn.{proj}.weight"] = (linear.kernel, True)
      if linear.bias is not None:
        targets[f"{prefix}self_attn.{proj}.bias"] = (linear.bias, False)
    for proj in ("gate_proj", "up_proj", "down_proj"):
      targets[f"{prefix}mlp.{proj}.weight"] = (getattr(layer.mlp, proj).kernel, True)
  return targets


def from_hf(path: str, dtype=jnp.float32, *, max_len: int | None = None,
            output_vocab: int | None = None) -> GPT:
  """The GPT of a Llama/Qwen2 Hugging Face checkpoint directory, weights loaded (float32
  parameters).

  Args:
    path: the directory (``config.json`` and safetensors weights; read and checked by
      :mod:`kd_jax.models.hf_checkpoint`).
    dtype: the computation dtype (``jnp.bfloat16`` for mixed precision).
    max_len: the longest sequence to accept; default the checkpoint's
      ``max_position_embeddings``.
    output_vocab: the ids its tokenizer produces, when fewer than its rows (:class:`GPT`).

  Raises:
    ConfigError: an unsupported architecture, or a tensor missing, misshapen or
      unexpected (naming it and the file).
  """
  path = os.path.expanduser(path)
  kwargs = hf_checkpoint.gpt_kwargs(hf_checkpoint.read_config(path))
  if max_len:
    kwargs["max_len"] = max_len
  if output_vocab is not None and output_vocab != kwargs["vocab_size"]:
    kwargs["output_vocab"] = output_vocab
  model = nnx.eval_shape(lambda: GPT(rngs=nnx.Rngs(0), dtype=dtype, **kwargs))
  hf_checkpoint.copy_tensors(model, hf_checkpoint.read_tensors(path), _hf_targets(model), path,
                             ignored=hf_checkpoint.IGNORED_SUFFIXES)
  return model
