"""Types shared by every dataset loader in `kd_jax.data`."""

from __future__ import annotations

import dataclasses

import numpy as np

from kd_jax.core.errors import DatasetNotFoundError  # noqa: F401  (kd_jax.data's name for it)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """One split of an image-classification dataset, held in host memory.

  Attributes:
    images: uint8 array [N, H, W, C] (NHWC, JAX's layout), read-only.
    labels: int32 array [N] of class ids in [0, num_classes), read-only.
    num_classes: number of classes.
    source: where the arrays came from: "tfds" (a prepared TFDS dataset) or
      "idx" (the raw IDX files read with NumPy). Both give identical arrays when
      TFDS was prepared by kd_jax (see `kd_jax.data.fashion_mnist`).
    class_names: human-readable class names, index = class id.

  `eq=False`: element-wise `==` on arrays has no single truth value, so splits
  compare by identity (the in-process cache returns the same object).
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  source: str
  class_names: tuple[str, ...]

  def __len__(self) -> int:
    return int(self.labels.shape[0])
