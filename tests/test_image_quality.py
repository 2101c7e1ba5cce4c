"""Sample-quality metrics (kd_jax/tasks/image_quality.py) against closed forms and known sets."""

import numpy as np
import pytest

from kd_jax.tasks import image_quality as iq


def _rotation(d, seed):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q


def _symmetric_sqrt(m):
  w, v = np.linalg.eigh(m)
  return (v * np.sqrt(np.maximum(w, 0))) @ v.T


def test_the_frechet_distance_of_commuting_gaussians_is_the_closed_form():
  # Σ_a = R diag(a) Rᵀ, Σ_b = R diag(b) Rᵀ: FD = ‖Δμ‖² + Σ_i (√a_i − √b_i)².
  a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.25, 2.0, 2.0, 1.0])
  r = _rotation(4, 0)
  mean_a, mean_b = np.array([0.0, 1.0, -1.0, 2.0]), np.array([1.0, 1.0, 0.0, 0.0])
  want = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = iq.frechet_distance_of(mean_a, r @ np.diag(a) @ r.T, mean_b, r @ np.diag(b) @ r.T)
  np.testing.assert_allclose(got, want, rtol=1e-9)


def test_the_frechet_distance_of_general_gaussians_matches_the_symmetric_form():
  # Tr((Σ_a Σ_b)^½) = Tr((Σ_a^½ Σ_b Σ_a^½)^½), computed here by eigendecompositions alone.
  rng = np.random.default_rng(1)
  m_a, m_b = rng.normal(size=(2, 6, 6))
  cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T + 0.1 * np.eye(6)
  root_a = _symmetric_sqrt(cov_a)
  want = (np.trace(cov_a) + np.trace(cov_b)
          - 2 * np.trace(_symmetric_sqrt(root_a @ cov_b @ root_a)))
  np.testing.assert_allclose(iq.frechet_distance_of(np.zeros(6), cov_a, np.zeros(6), cov_b),
                             want, rtol=1e-8)


def test_the_frechet_distance_of_samples_estimates_their_gaussians():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(50000, 3))
  y = rng.normal(size=(50000, 3)) * np.array([1.0, 2.0, 1.0]) + np.array([0.5, 0.0, 0.0])
  # ‖Δμ‖² = 0.25, (√1 − √4)² = 1: 1.25 (sampling error about 0.02 at this size).
  np.testing.assert_allclose(iq.frechet_distance(x, y), 1.25, atol=0.05)
  assert abs(iq.frechet_distance(x, x)) < 1e-8


def test_precision_and_recall_on_sets_of_known_overlap():
  rng = np.random.default_rng(3)
  centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])
  real = np.concatenate([c + 0.01 * rng.normal(size=(50, 2)) for c in centres])
  assert iq.precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
  # Copies of two clusters' real points: all generated points are real-like (precision 1),
  # half of the real points are covered (recall 1/2).
  half = real[:100]
  assert iq.precision_recall(real, half) == {"precision": 1.0, "recall": 0.5}
  # As many again far from every real point: precision halves, recall stays.
  far = half + 1000.0
  assert iq.precision_recall(real, np.concatenate([half, far])) == {"precision": 0.5,
                                                                    "recall": 0.5}
  assert iq.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}


def test_the_knn_radius_is_the_distance_to_the_kth_other_point():
  points = np.array([[0.0], [1.0], [3.0], [7.0]])
  # Squared distances to the 1st and 2nd nearest other point.
  np.testing.assert_allclose(iq.knn_radii(points, 1), [1.0, 1.0, 4.0, 16.0])
  np.testing.assert_allclose(iq.knn_radii(points, 2), [9.0, 4.0, 9.0, 36.0])


def test_coverage_kl_is_zero_for_uniform_labels_and_log_c_for_one_class():
  np.testing.assert_allclose(iq.coverage_kl(np.arange(1000) % 10, 10), 0.0, atol=1e-12)
  np.testing.assert_allclose(iq.coverage_kl(np.full(100, 3), 10), np.log(10))
  np.testing.assert_allclose(iq.coverage_kl(np.array([0, 1, 0, 1]), 4), np.log(2))


def test_bad_inputs_are_refused_with_the_valid_range():
  with pytest.raises(ValueError, match=r"k must be in \[1, 2\]"):
    iq.knn_radii(np.zeros((3, 2)), 3)
  with pytest.raises(ValueError, match="must be"):
    iq.precision_recall(np.zeros((5, 2)), np.zeros((5, 3)))
  with pytest.raises(ValueError, match=r"ints in \[0, 10\)"):
    iq.coverage_kl(np.array([10]), 10)
  with pytest.raises(ValueError, match="features must be"):
    iq.gaussian_statistics(np.zeros((1, 4)))
