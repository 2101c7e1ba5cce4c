"""A Vision Transformer classifier, optionally with DeiT's distillation token.

The image is cut into ``patch_size`` × ``patch_size`` patches, each flattened and mapped
linearly to ``dim`` (the same as a strided convolution of that kernel, written as a matmul:
XLA:CPU runs matmuls several times faster than convolutions). A learnt class token — and,
with ``distillation_token``, a learnt distillation token (Touvron et al. 2021, "Training
data-efficient image transformers & distillation through attention") — go in front,
learnt position embeddings are added, then ``num_layers`` pre-norm blocks::

    x = x + Attention(LayerNorm(x));   x = x + MLP(LayerNorm(x))     (MLP: Dense-GELU-Dense)

and a final LayerNorm. The class head reads the class token. With a distillation token a
second head reads it: in training ``__call__`` returns the class head's logits and the
feature ``"distillation_logits"`` holds the distillation head's (what ``deit_hard`` /
``deit_soft`` train on the teacher); at test time (``train=False``) the logits are the
mean of the two heads', as DeiT's reference implementation does.

Features: ``"block1" .. "blockN"`` (``[B, tokens, dim]``), ``"embedding"`` (the normed
class token, ``[B, dim]``) and, with the distillation token, ``"distillation_logits"``.

Example::

    >>> from flax import nnx
    >>> model = ViT(num_classes=10, rngs=nnx.Rngs(0), distillation_token=True)
    >>> logits, feats = model(jnp.zeros((2, 28, 28, 1)), train=True, return_features=True)
    >>> logits.shape, feats["distillation_logits"].shape, feats["block4"].shape
    ((2, 10), (2, 10), (2, 51, 64))
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import common

INIT_STD = 0.02     # tokens, positions, projections: ViT/DeiT's truncated-normal scale


def _dense(d_in: int, d_out: int, *, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(d_in, d_out, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nnx.initializers.truncated_normal(INIT_STD),
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)


class Block(nnx.Module):
  """A pre-norm transformer block: multi-head self-attention, then a GELU MLP."""

  def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"vit: dim={dim} must be a multiple of num_heads={num_heads}")
    self.num_heads = num_heads
    self.norm1 = nnx.LayerNorm(dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.qkv = _dense(dim, 3 * dim, dtype=dtype, rngs=rngs)
    self.out = _dense(dim, dim, dtype=dtype, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.mlp_in = _dense(dim, mlp_dim, dtype=dtype, rngs=rngs)
    self.mlp_out = _dense(mlp_dim, dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, t, d = x.shape
    heads, width = self.num_heads, d // self.num_heads
    q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(b, t, 3 * heads, width), 3, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(width)).astype(q.dtype)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    attended = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, d)
    x = x + self.out(attended)
    return x + self.mlp_out(jax.nn.gelu(self.mlp_in(self.norm2(x))))


class ViT(nnx.Module):
  """Patch embedding → [class, (distillation)] tokens + positions → pre-norm blocks → heads.

  Args:
    num_classes: number of output logits.
    rngs: parameter initialisation RNGs.
    dtype: computation dtype (params stay float32; logits are float32).
    input_shape: per-example ``(H, W, C)``; ``H`` and ``W`` must be multiples of
      ``patch_size``.
    patch_size: side of the square patches.
    dim, num_layers, num_heads: width, depth and attention heads.
    mlp_dim: the MLP's hidden width; default ``4 · dim``.
    distillation_token: add DeiT's distillation token and its head.
  """

  def __init__(self, *, num_classes: int, rngs: nnx.Rngs, dtype=jnp.float32,
               input_shape: Sequence[int] = (28, 28, 1), patch_size: int = 4, dim: int = 64,
               num_layers: int = 4, num_heads: int = 4, mlp_dim: int | None = None,
               distillation_token: bool = False):
    self.input_shape = common.as_image_shape(input_shape, "vit")
    height, width, channels = self.input_shape
    if patch_size < 1 or height % patch_size or width % patch_size:
      raise ValueError(f"vit: input height and width {height}x{width} must be multiples of "
                       f"patch_size={patch_size}")
    if num_layers < 1:
      raise ValueError(f"vit: num_layers must be >= 1, got {num_layers}")
    self.dtype, self.patch_size = dtype, patch_size
    self.num_patches = (height // patch_size) * (width // patch_size)
    self.patch_embed = _dense(patch_size * patch_size * channels, dim, dtype=dtype, rngs=rngs)
    normal = nnx.initializers.truncated_normal(INIT_STD)
    self.class_token = nnx.Param(normal(rngs.params(), (1, 1, dim), jnp.float32))
    self.distillation_token = (nnx.Param(normal(rngs.params(), (1, 1, dim), jnp.float32))
                               if distillation_token else None)
    prefix = 2 if distillation_token else 1
    self.position = nnx.Param(normal(rngs.params(), (1, prefix + self.num_patches, dim),
                                     jnp.float32))
    self.blocks = nnx.List([Block(dim, num_heads, mlp_dim or 4 * dim, dtype=dtype, rngs=rngs)
                            for _ in range(num_layers)])
    self.norm = nnx.LayerNorm(dim, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.head = common.classifier(dim, num_classes, dtype=dtype, rngs=rngs)
    self.distillation_head = (common.classifier(dim, num_classes, dtype=dtype, rngs=rngs)
                              if distillation_token else None)
    self.feature_names = (tuple(f"block{i + 1}" for i in range(num_layers)) + ("embedding",)
                          + (("distillation_logits",) if distillation_token else ()))

  def patches(self, x):
    """``[B, H/p · W/p, p · p · C]``: the non-overlapping patches, row-major, flattened."""
    b, height, width, channels = x.shape
    p = self.patch_size
    x = x.reshape(b, height // p, p, width // p, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, self.num_patches, p * p * channels)

  def __call__(self, x: jax.Array, *, train: bool = False, return_features: bool = False):
    """Logits ``[B, num_classes]``: the class head's in training, the mean of both heads'
    at test time when there is a distillation token (and the features if requested)."""
    common.check_input(x, self.input_shape, "vit", spatial=True)
    b = x.shape[0]
    tokens = self.patch_embed(self.patches(x.astype(self.dtype)))
    learnt = [self.class_token]
    if self.distillation_token is not None:
      learnt.append(self.distillation_token)
    prefix = [jnp.broadcast_to(t[...].astype(self.dtype), (b, 1, tokens.shape[-1]))
              for t in learnt]
    h = jnp.concatenate(prefix + [tokens], axis=1) + self.position[...].astype(self.dtype)
    features = {}
    for i, block in enumerate(self.blocks):
      h = block(h)
      features[f"block{i + 1}"] = h
    h = self.norm(h)
    features["embedding"] = h[:, 0]
    logits = self.head(h[:, 0]).astype(jnp.float32)
    if self.distillation_head is not None:
      distillation = self.distillation_head(h[:, 1]).astype(jnp.float32)
      features["distillation_logits"] = distillation
      if not train:
        logits = (logits + distillation) / 2
    return (logits, features) if return_features else logits
