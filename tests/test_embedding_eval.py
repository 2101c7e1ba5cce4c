"""Probes, neighbours and fidelity of sentence embeddings (kd_jax/tasks/embedding_eval.py)."""

import numpy as np
import pytest

from kd_jax.tasks import embedding_eval as ev


def _clusters(seed, n_per_class=30, classes=3, dim=8, spread=0.1):
  rng = np.random.default_rng(seed)
  centres = np.eye(classes, dim) * 5.0
  x = np.concatenate([c + spread * rng.normal(size=(n_per_class, dim)) for c in centres])
  return x, np.repeat(np.arange(classes), n_per_class)


def test_separable_clusters_are_probed_and_voted_perfectly():
  (train_x, train_y), (test_x, test_y) = _clusters(0), _clusters(1)
  assert ev.linear_probe_accuracy(train_x, train_y, test_x, test_y) == 1.0
  assert ev.knn_accuracy(train_x, train_y, test_x, test_y, k=5) == 1.0


def test_a_probe_cannot_learn_random_labels():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
  test_x, test_y = rng.normal(size=(300, 8)), rng.integers(0, 4, 300)
  assert ev.linear_probe_accuracy(x, y, test_x, test_y) < 0.4       # chance: 0.25


def test_knn_votes_by_majority_and_breaks_ties_by_the_nearest():
  train_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.2]])
  train_y = np.array([0, 0, 1, 1, 1])
  # Nearest three of (0.8, 0.2): row 4 (label 1) first, then rows 1 and 0 (label 0):
  # the majority, 0, wins over the nearest.
  assert ev.knn_accuracy(train_x, train_y, [[0.8, 0.2]], [0], k=3) == 1.0
  assert ev.knn_accuracy(train_x, train_y, [[0.8, 0.2]], [1], k=1) == 1.0
  # k = 2 on (0.85, 0.15): rows 1 (0) and 4 (1) tie -> the nearest, row 1 or 4 by cosine.
  sims = ev._unit(train_x) @ ev._unit(np.array([[0.85, 0.15]])).T
  nearest = int(np.argmax(sims[:, 0]))
  assert ev.knn_accuracy(train_x, train_y, [[0.85, 0.15]], [train_y[nearest]], k=2) == 1.0


def test_fidelity_of_identical_rotated_and_unrelated_embeddings():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6))
  rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  assert ev.mean_cosine(x, 2.0 * x) == pytest.approx(1.0)
  assert ev.mean_cosine(x, -x) == pytest.approx(-1.0)
  # A rotation keeps every cosine between rows, so every neighbour list.
  assert ev.neighbour_overlap(x, x @ rotation, k=10) == 1.0
  assert ev.neighbour_overlap(x, rng.normal(size=(50, 12)), k=10) < 0.5
  with pytest.raises(ValueError, match="one shape"):
    ev.mean_cosine(x, rng.normal(size=(50, 12)))


def test_throughput_counts_sentences_and_batches():
  calls = []
  encode = lambda sentences, batch_size: calls.append(batch_size) or np.zeros((len(sentences), 2))
  out = ev.sentences_per_second(encode, ["a"] * 10, batch_size=4, repeats=2)
  assert calls == [4, 4, 4] and out["sentences_per_second"] > 0 and out["latency_ms"] >= 0
