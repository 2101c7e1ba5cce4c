"""On-device image augmentation and normalisation, jittable, NHWC.

Everything here is a pure function of a JAX PRNG key and a batch, meant to run
inside the jitted train step on the whole batch at once; each example gets its
own random crop offset and flip from the single key. Apply the crop to the raw
images (uint8 or [0, 1] floats) before `normalize`, so that zero padding means
black, as in the standard CIFAR recipe (He et al. 2016, "Deep Residual Learning
for Image Recognition", §4.2: pad 4, random 32x32 crop, horizontal flip).

Example:
  >>> rng = jax.random.key(0)
  >>> batch = jnp.zeros((128, 28, 28, 1), jnp.uint8)
  >>> x = normalize(augment(rng, batch, crop_padding=2, flip=True))
  >>> x.shape, x.dtype
  ((128, 28, 28, 1), dtype('float32'))
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

# Per-pixel mean and standard deviation of the Fashion-MNIST training images on
# the [0, 1] scale (all 60000 x 28 x 28 pixels, float64), measured with
#   python -c "import numpy as np; from kd_jax.data import idx; \
#     x = idx.read_idx('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz') / 255.0; \
#     print(x.mean(), x.std())"
# -> 0.2860405969887955 0.35302424451492254
FASHION_MNIST_MEAN = 0.2860405969887955
FASHION_MNIST_STD = 0.35302424451492254


def normalize(images: jax.Array,
              mean: float | Sequence[float] = FASHION_MNIST_MEAN,
              std: float | Sequence[float] = FASHION_MNIST_STD) -> jax.Array:
  """Maps uint8 pixels to standardised float32: (x / 255 − mean) / std.

  Args:
    images: uint8 [..., C] (NHWC batch or single image) in [0, 255].
    mean: mean on the [0, 1] scale, a scalar or one value per channel.
    std: standard deviation on the [0, 1] scale, scalar or per channel.

  Returns:
    float32 array of `images.shape`. With the default constants the Fashion-MNIST
    training set maps to mean 0 and standard deviation 1.

  Example:
    >>> normalize(jnp.array([0, 255], jnp.uint8), mean=0.5, std=0.5)
    Array([-1.,  1.], dtype=float32)
  """
  scaled = jnp.asarray(images, jnp.float32) / 255.0
  return (scaled - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop(rng: jax.Array, images: jax.Array, padding: int, *,
                pad_mode: str = "constant") -> jax.Array:
  """Pads by `padding` pixels on each side, then crops back at a random offset.

  Output example i is `pad(images[i])[dy_i : dy_i + H, dx_i : dx_i + W]` with
  (dy_i, dx_i) uniform on {0, …, 2·padding}², independently per example: the
  content moves by (padding − dy_i, padding − dx_i) pixels.

  Args:
    rng: a PRNG key.
    images: [B, H, W, C], any dtype.
    padding: static Python int ≥ 0 (it fixes the padded shape); 0 is a no-op.
    pad_mode: `jnp.pad` mode: "constant" (zeros) or "edge" (repeat border).

  Returns:
    Array of `images.shape` and dtype.
  """
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  if padding == 0:
    return images
  batch, height, width, channels = images.shape
  pad = (padding, padding)
  padded = jnp.pad(images, ((0, 0), pad, pad, (0, 0)), mode=pad_mode)
  offsets = jax.random.randint(rng, (batch, 2), 0, 2 * padding + 1)

  def crop(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (height, width, channels))

  # vmap turns the per-example dynamic_slice into one XLA gather.
  return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
  """Mirrors each example left-right (the W axis) with probability 1/2.

  Args:
    rng: a PRNG key.
    images: [B, H, W, C], any dtype.

  Returns:
    Array of `images.shape`: example i is `images[i, :, ::-1]` or `images[i]`.
  """
  flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], images[:, :, ::-1], images)


def augment(rng: jax.Array, images: jax.Array, *, crop_padding: int = 0,
            flip: bool = False, pad_mode: str = "constant") -> jax.Array:
  """`random_crop` (when `crop_padding` > 0) then `random_flip` (when `flip`).

  Args:
    rng: one PRNG key for the batch; split internally.
    images: [B, H, W, C], any dtype (raw pixels: crop before `normalize`).
    crop_padding: static int ≥ 0, see `random_crop`.
    flip: static bool, random horizontal flips.
    pad_mode: see `random_crop`.

  Returns:
    Array of `images.shape` and dtype; `images` itself when there is nothing
    to do (crop_padding=0, flip=False).
  """
  crop_rng, flip_rng = jax.random.split(rng)
  images = random_crop(crop_rng, images, crop_padding, pad_mode=pad_mode)
  if flip:
    images = random_flip(flip_rng, images)
  return images


def mix_partners(batch: int) -> jax.Array:
  """The example each example is mixed with: the batch in reverse order (timm's "flip"
  pairing; an example in the middle of an odd batch is mixed with itself)."""
  return jnp.arange(batch)[::-1]


def mixup(rng: jax.Array, images: jax.Array, concentration: float
          ) -> tuple[jax.Array, jax.Array]:
  """Mixup (Zhang et al. 2018), per example: ``λ_i · x_i + (1 − λ_i) · x_partner(i)`` with
  ``λ_i ~ Beta(a, a)`` (:func:`mix_partners`).

  Args:
    rng: a PRNG key.
    images: float ``[B, H, W, C]`` (normalised: mixing happens after `normalize`).
    concentration: ``a`` > 0 of the Beta distribution.

  Returns:
    ``(mixed, λ [B])``: what is left of each example's own image.
  """
  weight = jax.random.beta(rng, concentration, concentration, (images.shape[0],))
  partner = images[mix_partners(images.shape[0])]
  w = weight.astype(images.dtype)[:, None, None, None]
  return w * images + (1 - w) * partner, weight


def cutmix(rng: jax.Array, images: jax.Array, concentration: float
           ) -> tuple[jax.Array, jax.Array]:
  """CutMix (Yun et al. 2019), per example: a box of ``x_partner(i)`` pasted into ``x_i``,
  of area ``(1 − λ_i)·H·W`` for ``λ_i ~ Beta(a, a)``, centred uniformly and clipped to the
  image.

  Returns:
    ``(mixed, λ [B])`` with λ the fraction of each image's pixels that stayed its own
    (after clipping, so the labels' weights match the pixels).
  """
  batch, height, width, _ = images.shape
  draw, ys, xs = jax.random.split(rng, 3)
  side = jnp.sqrt(1.0 - jax.random.beta(draw, concentration, concentration, (batch,)))
  cy = jax.random.uniform(ys, (batch,)) * height
  cx = jax.random.uniform(xs, (batch,)) * width
  half_h, half_w = side * height / 2, side * width / 2
  rows, cols = jnp.arange(height)[None, :] + 0.5, jnp.arange(width)[None, :] + 0.5
  in_rows = (rows >= (cy - half_h)[:, None]) & (rows < (cy + half_h)[:, None])
  in_cols = (cols >= (cx - half_w)[:, None]) & (cols < (cx + half_w)[:, None])
  box = in_rows[:, :, None] & in_cols[:, None, :]                       # [B, H, W]
  mixed = jnp.where(box[..., None], images[mix_partners(batch)], images)
  weight = 1.0 - box.mean(axis=(1, 2))
  return mixed, weight
