"""How good, how faithful and how fast a sentence encoder is: probes, neighbours, throughput.

Quality on real labels (e.g. the fortunes' collections):

* :func:`linear_probe_accuracy` — a softmax regression trained on frozen training
  embeddings (optax L-BFGS, L2-regularised), accuracy on the test embeddings;
* :func:`knn_accuracy` — the majority label of the k most cosine-similar training
  embeddings (ties broken by the nearest neighbour's label).

Fidelity to a teacher on the same sentences:

* :func:`mean_cosine` — mean cosine between the two models' embeddings (same width only);
* :func:`neighbour_overlap` — the fraction of each sentence's k nearest neighbours
  (cosine, among the same sentences, itself excluded) that the two models share,
  which needs no common width.

Cost: :func:`sentences_per_second` of an ``encode`` function at a batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def linear_probe_accuracy(train_x, train_y, test_x, test_y, *, l2: float = 1e-3,
                          steps: int = 200) -> float:
  """Test accuracy of a softmax regression on frozen embeddings ``[N, D]``, labels ``[N]``.

  The weights minimise mean cross-entropy + ``l2``·‖W‖² on the training embeddings
  (standardised with the training mean and deviation), by ``steps`` of L-BFGS.
  """
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  classes = int(max(train_y.max(), test_y.max())) + 1
  mean, std = np.mean(train_x, axis=0), np.std(train_x, axis=0) + 1e-6
  x = jnp.asarray((np.asarray(train_x) - mean) / std, jnp.float32)
  y = jnp.asarray(train_y, jnp.int32)
  params = {"w": jnp.zeros((x.shape[1], classes)), "b": jnp.zeros((classes,))}

  def loss(p):
    logits = x @ p["w"] + p["b"]
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            + l2 * jnp.sum(jnp.square(p["w"])))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  @jax.jit
  def step(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = solver.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  carry = (params, solver.init(params))
  for _ in range(steps):
    carry = step(carry)
  w, b = carry[0]["w"], carry[0]["b"]
  test = jnp.asarray((np.asarray(test_x) - mean) / std, jnp.float32)
  return float(np.mean(np.asarray(jnp.argmax(test @ w + b, axis=1)) == test_y))


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 10) -> float:
  """Accuracy of the majority label among the ``k`` most cosine-similar training embeddings."""
  train_y, test_y = np.asarray(train_y), np.asarray(test_y)
  similarity = _unit(test_x) @ _unit(train_x).T
  nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
  correct = 0
  for row, label in zip(nearest, test_y):
    votes = np.bincount(train_y[row], minlength=train_y.max() + 1)
    winners = np.flatnonzero(votes == votes.max())
    # A tie goes to the nearest neighbour's label among the tied ones.
    choice = next(train_y[i] for i in row if train_y[i] in winners)
    correct += choice == label
  return correct / len(test_y)


def mean_cosine(student, teacher) -> float:
  """Mean cosine similarity between matching rows of two ``[N, D]`` embeddings."""
  student, teacher = np.asarray(student), np.asarray(teacher)
  if student.shape != teacher.shape:
    raise ValueError(f"mean_cosine needs embeddings of one shape, got {student.shape} and "
                     f"{teacher.shape} (use neighbour_overlap across widths)")
  return float(np.mean(np.sum(_unit(student) * _unit(teacher), axis=1)))


def _neighbours(x, k: int) -> np.ndarray:
  similarity = _unit(x) @ _unit(x).T
  np.fill_diagonal(similarity, -np.inf)
  return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def neighbour_overlap(student, teacher, *, k: int = 10) -> float:
  """Mean fraction of each row's ``k`` nearest neighbours (cosine, itself excluded) shared."""
  a, b = _neighbours(student, k), _neighbours(teacher, k)
  return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(a, b)]))


def sentences_per_second(encode: Callable[[Sequence[str], int], np.ndarray],
                         sentences: Sequence[str], batch_size: int, repeats: int = 3) -> dict:
  """``{"sentences_per_second", "latency_ms"}``: the median of ``repeats`` timed passes over
  ``sentences`` after a warm-up pass (compilation); latency is per batch."""
  encode(sentences, batch_size)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    encode(sentences, batch_size)
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  batches = -(-len(sentences) // batch_size)
  return {"sentences_per_second": len(sentences) / seconds,
          "latency_ms": seconds / batches * 1e3}
