"""A small convolutional classifier for 28x28 images (a fast student).

Stage i (i = 1..len(widths)) is a convolution to ``widths[i-1]`` channels
(+ BatchNorm if ``batch_norm``) + ReLU; stage 1 has a ``first_kernel`` kernel and
``first_stride`` stride, every later stage a 3x3 kernel and stride 2. Downsampling
uses strided convolutions rather than max-pooling because XLA:CPU's max-pool
backward pass (select-and-scatter) is slow. Then ``head="gap"`` (global average
pooling) or ``head="flatten"`` (keeps the spatial layout: more accurate on
Fashion-MNIST, more parameters), an optional Dense+ReLU ``hidden`` layer, and the
linear classifier.

With the defaults on [B, 28, 28, 1]: conv1 [B,28,28,32], conv2 [B,14,14,64],
conv3 [B,7,7,128], embedding [B,128]; 93,962 parameters for 10 classes.

Features: ``"conv1" .. "convN"`` (NHWC, post-ReLU) and ``"embedding"`` (the vector
fed to the classifier: pooled features, or the hidden layer's output).

Example::

    >>> from flax import nnx
    >>> model = CNN(num_classes=10, rngs=nnx.Rngs(0))
    >>> logits, feats = model(jnp.zeros((2, 28, 28, 1)), return_features=True)
    >>> feats["conv3"].shape
    (2, 7, 7, 128)
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import common


class CNN(nnx.Module):
  """Strided 3x3 conv stack → global average pool → [Dense] → classifier.

  Args:
    num_classes: number of output logits.
    rngs: parameter initialisation RNGs.
    dtype: computation dtype (params stay float32; logits are float32).
    input_shape: per-example ``(H, W, C)``; only ``C`` constrains the input.
    widths: output channels of the conv stages.
    batch_norm: BatchNorm after each conv (convs then have no bias); uses batch
      statistics when ``train=True`` and running averages otherwise.
    hidden: width of an optional Dense+ReLU layer after pooling (None: none).
  """

  def __init__(self, *, num_classes: int, rngs: nnx.Rngs, dtype=jnp.float32,
               input_shape: Sequence[int] = (28, 28, 1),
               widths: Sequence[int] = (32, 64, 128), batch_norm: bool = False,
               hidden: int | None = None, first_kernel: int = 3, first_stride: int = 1,
               head: str = "gap"):
    self.input_shape = common.as_image_shape(input_shape, "cnn")
    if not widths:
      raise ValueError("cnn: widths must name at least one conv stage")
    if head not in ("gap", "flatten"):
      raise ValueError(f"cnn: head must be 'gap' or 'flatten', got {head!r}")
    self.dtype = dtype
    self.head_kind = head
    channels = (self.input_shape[-1],) + tuple(int(w) for w in widths)
    kernels = [first_kernel] + [3] * (len(widths) - 1)
    strides = [first_stride] + [2] * (len(widths) - 1)
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, (k, k), strides=stride, padding=k // 2,
                 use_bias=not batch_norm, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=common.CONV_INIT, rngs=rngs)
        for c_in, c_out, k, stride in zip(channels[:-1], channels[1:], kernels, strides)
    ])
    self.norms = nnx.List(
        [common.batch_norm(c, dtype=dtype, rngs=rngs) for c in channels[1:]]
        if batch_norm else [])
    pooled = channels[-1]
    if head == "flatten":
      height, width = self.input_shape[:2]
      for k, stride in zip(kernels, strides):  # padding k // 2 on each side
        height = (height + 2 * (k // 2) - k) // stride + 1
        width = (width + 2 * (k // 2) - k) // stride + 1
      pooled = height * width * channels[-1]
    self.hidden = (
        nnx.Linear(pooled, hidden, dtype=dtype, param_dtype=jnp.float32,
                   bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        if hidden else None)
    self.head = common.classifier(hidden or pooled, num_classes,
                                  dtype=dtype, rngs=rngs)
    self.feature_names = tuple(
        f"conv{i + 1}" for i in range(len(widths))) + ("embedding",)

  def __call__(self, x: jax.Array, *, train: bool = False,
               return_features: bool = False):
    """Returns logits [B, num_classes] (and a feature dict if requested)."""
    common.check_input(x, self.input_shape, "cnn", spatial=self.head_kind == "flatten")
    h = x.astype(self.dtype)
    features = {}
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.norms:
        h = self.norms[i](h, use_running_average=not train)
      h = jax.nn.relu(h)
      features[f"conv{i + 1}"] = h
    h = jnp.mean(h, axis=(1, 2)) if self.head_kind == "gap" else h.reshape(h.shape[0], -1)
    if self.hidden is not None:
      h = jax.nn.relu(self.hidden(h))
    features["embedding"] = h
    logits = self.head(h).astype(jnp.float32)
    return (logits, features) if return_features else logits
