"""Multi-layer perceptron on flattened images.

    h_0 = flatten(x),  h_i = relu(W_i h_{i-1} + b_i)  (i = 1..L),  logits = W h_L + b

Features: ``"hidden1" .. "hiddenL"`` ([B, hidden[i-1]], post-ReLU) and
``"embedding"`` = h_L (the flattened input when ``hidden=()``).

Example::

    >>> from flax import nnx
    >>> model = MLP(num_classes=10, rngs=nnx.Rngs(0), hidden=(128,))
    >>> model(jnp.zeros((2, 28, 28, 1))).shape
    (2, 10)
"""

from collections.abc import Sequence
import math

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.models import common


class MLP(nnx.Module):
  """Flatten → (Dense → ReLU) × len(hidden) → Dense classifier.

  Args:
    num_classes: number of output logits.
    rngs: parameter initialisation RNGs.
    dtype: computation dtype (params stay float32; logits are float32).
    input_shape: per-example ``(H, W, C)``; the first layer's width depends on it.
    hidden: widths of the hidden layers.
  """

  def __init__(self, *, num_classes: int, rngs: nnx.Rngs, dtype=jnp.float32,
               input_shape: Sequence[int] = (28, 28, 1),
               hidden: Sequence[int] = (256,)):
    self.input_shape = common.as_image_shape(input_shape, "mlp")
    self.dtype = dtype
    widths = (math.prod(self.input_shape),) + tuple(int(h) for h in hidden)
    self.layers = nnx.List([
        nnx.Linear(w_in, w_out, dtype=dtype, param_dtype=jnp.float32,
                   bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        for w_in, w_out in zip(widths[:-1], widths[1:])
    ])
    self.head = common.classifier(widths[-1], num_classes, dtype=dtype,
                                  rngs=rngs)
    self.feature_names = tuple(
        f"hidden{i + 1}" for i in range(len(widths) - 1)) + ("embedding",)

  def __call__(self, x: jax.Array, *, train: bool = False,
               return_features: bool = False):
    """Returns logits [B, num_classes] (and a feature dict if requested).

    ``train`` has no effect (no dropout/BatchNorm); it keeps the common API.
    """
    del train
    common.check_input(x, self.input_shape, "mlp", spatial=True)
    h = x.reshape(x.shape[0], -1).astype(self.dtype)
    features = {}
    for i, layer in enumerate(self.layers):
      h = jax.nn.relu(layer(h))
      features[f"hidden{i + 1}"] = h
    features["embedding"] = h
    logits = self.head(h).astype(jnp.float32)
    return (logits, features) if return_features else logits
