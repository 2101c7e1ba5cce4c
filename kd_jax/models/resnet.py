"""CIFAR-style ResNets (He et al. 2016, §4.2) as used throughout the KD literature.

A depth-d network (d = 6n + 2) is a 3x3 stem conv, three stages of n basic blocks
(two 3x3 convs with BatchNorm; the second stage and third stage start with stride
2) and global average pooling into a linear classifier. Channel plans follow the
CRD benchmark (Tian et al. 2020, "Contrastive Representation Distillation"):

  resnet{8,14,20,32,44,56,110}: stem 16, stages (16, 32, 64)
  resnet8x4, resnet32x4:        stem 32, stages (64, 128, 256)

Where a block changes shape, its shortcut is a 1x1 strided conv + BatchNorm
(option B of He et al. 2016; their CIFAR table used zero-padding, option A, which
is why resnet20 here has 0.272M parameters rather than 0.270M). Padding is
symmetric (1 pixel), so 28x28 and 32x32 inputs give stage maps of 28/14/7 and
32/16/8 pixels.

Features (NHWC, all post-ReLU): ``"stem"``, ``"stage1"``, ``"stage2"``,
``"stage3"`` (each stage's last block output), and ``"embedding"`` [B, C3], the
pooled vector fed to the classifier.

Example::

    >>> from flax import nnx
    >>> model = ResNet(depth=20, widths=(16, 16, 32, 64), num_classes=10,
    ...                rngs=nnx.Rngs(0), input_shape=(32, 32, 3))
    >>> logits, feats = model(jnp.zeros((2, 32, 32, 3)), return_features=True)
    >>> feats["stage3"].shape
    (2, 8, 8, 64)
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import common

# name -> (depth, (stem, stage1, stage2, stage3) widths).
CONFIGS = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}


def _conv(c_in: int, c_out: int, kernel: int, stride: int, *, dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
  # No bias: every conv is followed by BatchNorm, whose shift replaces it.
  return nnx.Conv(c_in, c_out, (kernel, kernel), strides=stride,
                  padding=kernel // 2, use_bias=False, dtype=dtype,
                  param_dtype=jnp.float32, kernel_init=common.CONV_INIT,
                  rngs=rngs)


class BasicBlock(nnx.Module):
  """relu(BN(conv3x3(relu(BN(conv3x3_s(x))))) + shortcut(x))."""

  def __init__(self, c_in: int, c_out: int, stride: int, *, dtype,
               rngs: nnx.Rngs):
    self.conv1 = _conv(c_in, c_out, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = common.batch_norm(c_out, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(c_out, c_out, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = common.batch_norm(c_out, dtype=dtype, rngs=rngs)
    if stride != 1 or c_in != c_out:
      self.proj_conv = _conv(c_in, c_out, 1, stride, dtype=dtype, rngs=rngs)
      self.proj_bn = common.batch_norm(c_out, dtype=dtype, rngs=rngs)
    else:
      self.proj_conv = self.proj_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    norm = dict(use_running_average=not train)
    h = jax.nn.relu(self.bn1(self.conv1(x), **norm))
    h = self.bn2(self.conv2(h), **norm)
    shortcut = x
    if self.proj_conv is not None:
      shortcut = self.proj_bn(self.proj_conv(x), **norm)
    return jax.nn.relu(h + shortcut)


class ResNet(nnx.Module):
  """CIFAR ResNet of depth 6n+2 with stem/stage widths ``widths``.

  Args:
    depth: total number of weighted layers, 6n + 2 (n blocks per stage).
    widths: channels of (stem, stage1, stage2, stage3).
    num_classes: number of output logits.
    rngs: parameter initialisation RNGs.
    dtype: computation dtype (params and BatchNorm statistics stay float32;
      logits are float32).
    input_shape: per-example ``(H, W, C)``; only ``C`` constrains the input.
    name: model name used in error messages.
  """

  def __init__(self, *, depth: int, widths: Sequence[int], num_classes: int,
               rngs: nnx.Rngs, dtype=jnp.float32,
               input_shape: Sequence[int] = (28, 28, 1), name: str = "resnet"):
    if depth < 8 or (depth - 2) % 6:
      raise ValueError(f"{name}: depth must be 6n + 2 with n >= 1, got {depth}")
    if len(widths) != 4:
      raise ValueError(f"{name}: widths must be (stem, stage1, stage2, stage3),"
                       f" got {widths!r}")
    self.name = name
    self.input_shape = common.as_image_shape(input_shape, name)
    self.dtype = dtype
    blocks_per_stage = (depth - 2) // 6
    self.stem_conv = _conv(self.input_shape[-1], widths[0], 3, 1, dtype=dtype,
                           rngs=rngs)
    self.stem_bn = common.batch_norm(widths[0], dtype=dtype, rngs=rngs)
    stages = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
      first_stride = 1 if i == 0 else 2
      stages.append(nnx.List([
          BasicBlock(c_in if b == 0 else c_out, c_out,
                     first_stride if b == 0 else 1, dtype=dtype, rngs=rngs)
          for b in range(blocks_per_stage)
      ]))
    self.stages = nnx.List(stages)
    self.head = common.classifier(widths[-1], num_classes, dtype=dtype,
                                  rngs=rngs)
    self.feature_names = ("stem", "stage1", "stage2", "stage3", "embedding")

  def __call__(self, x: jax.Array, *, train: bool = False,
               return_features: bool = False):
    """Returns logits [B, num_classes] (and a feature dict if requested).

    ``train=True`` normalises with batch statistics and updates the BatchNorm
    running averages in place (momentum 0.9); ``train=False`` uses the running
    averages and leaves them unchanged.
    """
    common.check_input(x, self.input_shape, self.name, spatial=False)
    h = self.stem_bn(self.stem_conv(x.astype(self.dtype)),
                     use_running_average=not train)
    h = jax.nn.relu(h)
    features = {"stem": h}
    for i, stage in enumerate(self.stages):
      for block in stage:
        h = block(h, train=train)
      features[f"stage{i + 1}"] = h
    h = jnp.mean(h, axis=(1, 2))
    features["embedding"] = h
    logits = self.head(h).astype(jnp.float32)
    return (logits, features) if return_features else logits
