"""Sample-quality metrics of generated images in a classifier's feature space (DESIGN §8).

Host-side NumPy/SciPy on features already computed (``[N, D]`` arrays): the diffusion
task family computes the features of N generated images and of the test images with
its cached Fashion-MNIST classifier and calls these.

* :func:`frechet_distance` — the Fréchet distance between Gaussians fitted to two
  feature sets (Heusel et al. 2017, "FID"; here in the Fashion-MNIST classifier's
  features, "FD-FMNIST"):  ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2·(Σ_a Σ_b)^½).
* :func:`precision_recall` — improved precision and recall (Kynkäänniemi et al. 2019):
  each set's manifold is the union of balls around its points, each of radius the
  distance to that point's k-th nearest neighbour in its own set; precision is the
  share of generated points inside the real manifold, recall the share of real points
  inside the generated one.
* :func:`coverage_kl` — KL(label histogram ‖ uniform) of the classifier's labels of the
  generated images: 0 when every class is drawn equally often, log C when one class is
  all there is (mode collapse).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

DISTANCE_CHUNK = 1024     # rows of a pairwise-distance block: bounds the host memory used


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean ``[D]`` and (unbiased) covariance ``[D, D]`` of ``features`` ``[N, D]``, in float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or len(features) < 2:
    raise ValueError(f"features must be [N >= 2, D], got shape {features.shape}")
  return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_of(mean_a, cov_a, mean_b, cov_b) -> float:
  """The Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b) (formula above).

  The matrix square root is SciPy's; a product that is numerically singular (fewer
  samples than dimensions) gets ε·I added to both covariances first, as the reference
  FID implementation does, and an imaginary part left by rounding is dropped.
  """
  diff = np.asarray(mean_a, np.float64) - np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("error", scipy.linalg.LinAlgWarning)
    try:
      root = scipy.linalg.sqrtm(cov_a @ cov_b)
      singular = not np.isfinite(root).all()
    except scipy.linalg.LinAlgWarning:
      singular = True
  if singular:
    offset = 1e-6 * np.eye(len(cov_a))
    root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  root = np.real(root)
  return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """The Fréchet distance between Gaussians fitted to ``[N, D]`` and ``[M, D]`` features."""
  return frechet_distance_of(*gaussian_statistics(features_a), *gaussian_statistics(features_b))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """``[len(a), len(b)]`` squared Euclidean distances (clipped at 0 against rounding)."""
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Each point's squared distance to its ``k``-th nearest neighbour in ``features`` (itself
  excluded): the radii of its manifold's balls."""
  features = np.asarray(features, np.float64)
  if not 1 <= k < len(features):
    raise ValueError(f"k must be in [1, {len(features) - 1}] for {len(features)} points, got {k}")
  radii = np.empty(len(features))
  for start in range(0, len(features), DISTANCE_CHUNK):
    block = _squared_distances(features[start:start + DISTANCE_CHUNK], features)
    # Column 0 of the sorted row is the point itself (distance 0).
    radii[start:start + DISTANCE_CHUNK] = np.partition(block, k, axis=1)[:, k]
  return radii


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
  """Whether each of ``points`` lies in some ball (``centres``, squared ``radii``)."""
  inside = np.empty(len(points), bool)
  for start in range(0, len(points), DISTANCE_CHUNK):
    block = _squared_distances(points[start:start + DISTANCE_CHUNK], centres)
    inside[start:start + DISTANCE_CHUNK] = (block <= radii[None, :]).any(axis=1)
  return inside


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3, *,
                     real_radii: np.ndarray | None = None) -> dict[str, float]:
  """Improved precision and recall of ``generated`` ``[M, D]`` against ``real`` ``[N, D]``
  features, k-nearest-neighbour manifolds (the paper's k = 3); ``real_radii``:
  :func:`knn_radii` of ``real`` already computed (several generated sets, one real)."""
  real, generated = np.asarray(real, np.float64), np.asarray(generated, np.float64)
  if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
    raise ValueError(f"real and generated must be [N, D] and [M, D], got {real.shape} and "
                     f"{generated.shape}")
  radii = knn_radii(real, k) if real_radii is None else real_radii
  precision = _inside(generated, real, radii).mean()
  recall = _inside(real, generated, knn_radii(generated, k)).mean()
  return {"precision": float(precision), "recall": float(recall)}


def coverage_kl(labels: np.ndarray, num_classes: int) -> float:
  """KL(histogram of ``labels`` ‖ uniform over ``num_classes``), in nats (0 log 0 = 0)."""
  labels = np.asarray(labels)
  if labels.size == 0 or labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f"labels must be a non-empty array of ints in [0, {num_classes})")
  p = np.bincount(labels.ravel(), minlength=num_classes) / labels.size
  nonzero = p > 0
  return float(np.sum(p[nonzero] * np.log(p[nonzero] * num_classes)))
