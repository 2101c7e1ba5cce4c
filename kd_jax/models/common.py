"""Pieces shared by the image classifiers in `kd_jax.models`.

Every model follows one calling convention::

    logits = model(x, train=False)                       # [B, num_classes] float32
    logits, feats = model(x, train=True, return_features=True)

`x` is a float NHWC batch ``[B, H, W, C]`` that is already normalised. Parameters
are always float32; ``dtype`` is the computation dtype (``jnp.bfloat16`` for mixed
precision) and logits are cast back to float32 so losses see full precision.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Kaiming-normal with fan_out = kh*kw*out_channels, as in He et al. 2015 and the
# CIFAR ResNets of He et al. 2016 (untruncated, like torch.nn.init.kaiming_normal_).
CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# BatchNorm momentum 0.9: running = 0.9 * running + 0.1 * batch (PyTorch's 0.1).
# Flax averages the biased batch variance (PyTorch the unbiased one).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def as_image_shape(input_shape: Sequence[int], model: str) -> tuple[int, int, int]:
  """Validates a per-example ``(H, W, C)`` shape given to a model constructor."""
  shape = tuple(int(d) for d in input_shape)
  if len(shape) != 3 or min(shape) <= 0:
    raise ValueError(
        f"{model}: input_shape must be a per-example (H, W, C) tuple of positive"
        f" ints, got {input_shape!r}")
  return shape


def check_input(x: jax.Array, input_shape: tuple[int, int, int], model: str,
                *, spatial: bool) -> None:
  """Raises a readable error (at trace time) for a batch the model cannot take.

  Args:
    x: the batch, expected ``[B, H, W, C]``.
    input_shape: the ``(H, W, C)`` the model was built for.
    model: model name for the message.
    spatial: whether ``H, W`` must match too (flattening models) or only ``C``
      (fully convolutional models with global pooling).
  """
  expected = input_shape if spatial else input_shape[-1:]
  got = tuple(x.shape[1:]) if spatial else tuple(x.shape[-1:])
  if x.ndim != 4 or got != expected:
    what = "[B, H, W, C] with (H, W, C)" if spatial else "[B, H, W, C] with C"
    raise ValueError(
        f"{model} expects an NHWC batch {what} = {expected}, got shape"
        f" {tuple(x.shape)}; pass input_shape=(H, W, C) to models.create")


def batch_norm(num_features: int, *, dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm over the channel axis with the momentum/epsilon used throughout."""
  return nnx.BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                       dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def classifier(in_features: int, num_classes: int, *, dtype,
               rngs: nnx.Rngs) -> nnx.Linear:
  """The final linear layer: LeCun-normal kernel, zero bias."""
  return nnx.Linear(in_features, num_classes, dtype=dtype,
                    param_dtype=jnp.float32,
                    bias_init=nnx.initializers.zeros_init(), rngs=rngs)
