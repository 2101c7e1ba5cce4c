"""A small UNet denoiser for 28x28 images (the diffusion teacher and its students, DESIGN §8).

    model = models.create("unet", rngs=nnx.Rngs(0), widths=(32, 64), num_classes=10)
    prediction = model(x_t, t, labels)        # [B, 28, 28, 1] float32: v (or x), per config

``x_t`` is a noised NHWC batch ``[B, H, W, C]``; ``t`` ``[B]`` (or a scalar) the diffusion
time in [0, 1]; ``labels`` ``[B]`` int32 class labels when the model is class-conditional
(``num_classes`` set), where the label ``num_classes`` means "no label" (the null class
that classifier-free guidance trains with and samples against); None gives every row
the null class. The output has the input's shape and is float32.

Layout (Ho et al. 2020's, shrunk): a 3x3 stem to ``widths[0]``; per resolution level i,
``blocks`` residual blocks at ``widths[i]`` channels and then (except at the last
level) a stride-2 3x3 convolution down; a middle residual block; the way up mirrors it,
each block taking the matching skip (concatenated), nearest-neighbour 2x upsampling +
3x3 convolution between levels; GroupNorm + SiLU + a 3x3 convolution out. A residual
block is GroupNorm → SiLU → conv → + the embedding's per-channel shift → GroupNorm →
SiLU → conv, added to a 1x1 projection of its input when the widths differ. The
embedding is a sinusoidal encoding of 1000·t through a two-layer SiLU MLP, plus the
class embedding. Downsampling by strided convolution, not pooling: XLA:CPU's pooling
backward pass is slow (as kd_jax.models.cnn). With widths (32, 64) on 28x28 the levels
are 28 and 14; with (32, 64, 64) also 7.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import common

GROUPS = 8


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """``[B, dim]`` sinusoidal features of ``1000·t`` (the Transformer's, as DDPM uses them)."""
  t = jnp.atleast_1d(jnp.asarray(t, jnp.float32)) * 1000.0
  half = dim // 2
  frequencies = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = t[:, None] * frequencies[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _conv(cin, cout, rngs, *, kernel=3, stride=1, dtype=jnp.float32):
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride), padding="SAME",
                  dtype=dtype, rngs=rngs)


def _norm(channels, rngs, dtype):
  return nnx.GroupNorm(channels, num_groups=min(GROUPS, channels), dtype=dtype, rngs=rngs)


class ResBlock(nnx.Module):
  """GroupNorm → SiLU → conv, + the embedding's shift, → GroupNorm → SiLU → conv, + skip."""

  def __init__(self, cin: int, cout: int, embed_dim: int, *, rngs: nnx.Rngs, dtype):
    self.norm1, self.conv1 = _norm(cin, rngs, dtype), _conv(cin, cout, rngs, dtype=dtype)
    self.shift = nnx.Linear(embed_dim, cout, dtype=dtype, rngs=rngs)
    self.norm2, self.conv2 = _norm(cout, rngs, dtype), _conv(cout, cout, rngs, dtype=dtype)
    self.skip = (_conv(cin, cout, rngs, kernel=1, dtype=dtype) if cin != cout else None)

  def __call__(self, x, embedding):
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = h + self.shift(jax.nn.silu(embedding))[:, None, None, :]
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return h + (x if self.skip is None else self.skip(x))


class UNet(nnx.Module):
  """The denoiser: ``model(x_t, t, labels=None, *, train=False) -> prediction``.

  Args:
    rngs: parameter initialisation RNGs.
    dtype: computation dtype (params stay float32; the output is float32).
    input_shape: per-example ``(H, W, C)``; H and W divisible by 2^(levels − 1).
    widths: channels per resolution level (2 or 3 levels for 28x28).
    blocks: residual blocks per level on the way down (the way up has one more, as
      each level's skips include the one before its first block).
    embed_dim: width of the time (and class) embedding.
    num_classes: class-conditional with this many classes (and one null label);
      None: unconditional.
  """

  def __init__(self, *, rngs: nnx.Rngs, dtype=jnp.float32,
               input_shape: Sequence[int] = (28, 28, 1), widths: Sequence[int] = (32, 64),
               blocks: int = 1, embed_dim: int = 128, num_classes: int | None = None):
    self.input_shape = common.as_image_shape(input_shape, "unet")
    widths = tuple(int(w) for w in widths)
    if not 1 <= len(widths) <= 4:
      raise ValueError(f"unet: widths must name 1 to 4 levels, got {widths!r}")
    factor = 2 ** (len(widths) - 1)
    if self.input_shape[0] % factor or self.input_shape[1] % factor:
      raise ValueError(f"unet: input height and width must be divisible by {factor} for "
                       f"{len(widths)} levels, got {self.input_shape[:2]}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
      raise ValueError(f"unet: num_classes must be a positive int or None, got {num_classes!r}")
    self.dtype, self.widths, self.blocks = dtype, widths, blocks
    self.num_classes, self.embed_dim = num_classes, embed_dim
    self.time_mlp = nnx.List([nnx.Linear(embed_dim, embed_dim, dtype=dtype, rngs=rngs),
                              nnx.Linear(embed_dim, embed_dim, dtype=dtype, rngs=rngs)])
    self.class_embed = (nnx.Embed(num_classes + 1, embed_dim, rngs=rngs)
                        if num_classes is not None else None)
    channels = self.input_shape[-1]
    self.stem = _conv(channels, widths[0], rngs, dtype=dtype)
    down, downsample, skip_widths, width = [], [], [widths[0]], widths[0]
    for level, w in enumerate(widths):
      for _ in range(blocks):
        down.append(ResBlock(width, w, embed_dim, rngs=rngs, dtype=dtype))
        width = w
        skip_widths.append(width)
      if level < len(widths) - 1:
        downsample.append(_conv(width, width, rngs, stride=2, dtype=dtype))
        skip_widths.append(width)
    self.down, self.downsample = nnx.List(down), nnx.List(downsample)
    self.middle = ResBlock(width, width, embed_dim, rngs=rngs, dtype=dtype)
    up, upsample = [], []
    for level, w in reversed(list(enumerate(widths))):
      for _ in range(blocks + 1):
        up.append(ResBlock(width + skip_widths.pop(), w, embed_dim, rngs=rngs, dtype=dtype))
        width = w
      if level > 0:
        upsample.append(_conv(width, width, rngs, dtype=dtype))
    self.up, self.upsample = nnx.List(up), nnx.List(upsample)
    self.out_norm = _norm(width, rngs, dtype)
    self.out = nnx.Conv(width, channels, (3, 3), padding="SAME", dtype=dtype,
                        kernel_init=nnx.initializers.zeros_init(), rngs=rngs)

  def embedding(self, t, labels, batch: int):
    e = timestep_embedding(jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,)),
                           self.embed_dim)
    e = self.time_mlp[1](jax.nn.silu(self.time_mlp[0](e.astype(self.dtype))))
    if self.class_embed is not None:
      if labels is None:
        labels = jnp.full((batch,), self.num_classes, jnp.int32)
      e = e + self.class_embed(labels).astype(self.dtype)
    return e

  def __call__(self, x, t, labels=None, *, train: bool = False):
    del train   # no dropout or batch statistics: the same function in training and sampling
    common.check_input(x, self.input_shape, "unet", spatial=True)
    embedding = self.embedding(t, labels, x.shape[0])
    h = self.stem(x.astype(self.dtype))
    skips = [h]
    blocks = iter(self.down)
    for level in range(len(self.widths)):
      for _ in range(self.blocks):
        h = next(blocks)(h, embedding)
        skips.append(h)
      if level < len(self.widths) - 1:
        h = self.downsample[level](h)
        skips.append(h)
    h = self.middle(h, embedding)
    blocks, upsample = iter(self.up), iter(self.upsample)
    for level in reversed(range(len(self.widths))):
      for _ in range(self.blocks + 1):
        h = next(blocks)(jnp.concatenate([h, skips.pop()], axis=-1), embedding)
      if level > 0:
        # Nearest-neighbour 2x by repetition (jax.image.resize's equal, but exportable with
        # a symbolic batch: jax2onnx's resize needs a constant shape).
        h = next(upsample)(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
    return self.out(jax.nn.silu(self.out_norm(h))).astype(jnp.float32)
