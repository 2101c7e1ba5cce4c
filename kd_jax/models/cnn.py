"""A small convolutional classifier for 28x28 images (a fast student).

Stage i (i = 1..len(widths)) is a 3x3 convolution to ``widths[i-1]`` channels
(+ BatchNorm if ``batch_norm``) + ReLU; stage 1 has stride 1 and every later stage
stride 2. Downsampling uses strided convolutions rather than max-pooling because
XLA:CPU's max-pool backward pass (select-and-scatter) is slow. Then global average
pooling, an optional Dense+ReLU ``hidden`` layer, and the linear classifier.

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
               hidden: int | None = None):
    self.input_shape = common.as_image_shape(input_shape, "cnn")
    if not widths:
      raise ValueError("cnn: widths must name at least one conv stage")
    self.dtype = dtype
    channels = (self.input_shape[-1],) + tuple(int(w) for w in widths)
    self.convs = nnx.List([
        nnx.Conv(c_in, c_out, (3, 3), strides=1 if i == 0 else 2, padding=1,
                 use_bias=not batch_norm, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=common.CONV_INIT, rngs=rngs)
        for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:]))
    ])
    self.norms = nnx.List(
        [common.batch_norm(c, dtype=dtype, rngs=rngs) for c in channels[1:]]
        if batch_norm else [])
    self.hidden = (
        nnx.Linear(channels[-1], hidden, dtype=dtype, param_dtype=jnp.float32,
                   bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        if hidden else None)
    self.head = common.classifier(hidden or channels[-1], num_classes,
                                  dtype=dtype, rngs=rngs)
    self.feature_names = tuple(
        f"conv{i + 1}" for i in range(len(widths))) + ("embedding",)

  def __call__(self, x: jax.Array, *, train: bool = False,
               return_features: bool = False):
    """Returns logits [B, num_classes] (and a feature dict if requested)."""
    common.check_input(x, self.input_shape, "cnn", spatial=False)
    h = x.astype(self.dtype)
    features = {}
    for i, conv in enumerate(self.convs):
      h = conv(h)
      if self.norms:
        h = self.norms[i](h, use_running_average=not train)
      h = jax.nn.relu(h)
      features[f"conv{i + 1}"] = h
    h = jnp.mean(h, axis=(1, 2))
    if self.hidden is not None:
      h = jax.nn.relu(self.hidden(h))
    features["embedding"] = h
    logits = self.head(h).astype(jnp.float32)
    return (logits, features) if return_features else logits
