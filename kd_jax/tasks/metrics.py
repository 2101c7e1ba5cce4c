"""Evaluation metrics over full splits (host-side NumPy, float64).

All functions take logits ``[N, C]`` (and labels ``[N]``) for the whole split;
the training loop gathers them from the devices with padding already removed,
so every number is exact over the split whatever the device count.
"""

from __future__ import annotations

import jax
import numpy as np
from scipy.special import log_softmax


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of examples whose arg-max class is the label."""
  return float(np.mean(np.argmax(logits, -1) == labels))


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
  """Top-1 agreement: fraction of examples where student and teacher predict the same class."""
  return float(np.mean(np.argmax(student_logits, -1) == np.argmax(teacher_logits, -1)))


def kl_to_teacher(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
  """Mean KL(p_teacher ‖ p_student) at temperature 1, in nats."""
  log_p = log_softmax(np.asarray(teacher_logits, np.float64), axis=-1)
  log_q = log_softmax(np.asarray(student_logits, np.float64), axis=-1)
  return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


def ece(logits: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> float:
  """Expected calibration error (Guo et al. 2017) with equal-width confidence bins.

  ECE = Σ_b (|B_b| / N) · |acc(B_b) − conf(B_b)|, confidence = max softmax probability,
  bins (0, 1/num_bins], ..., ((num_bins−1)/num_bins, 1].
  """
  probs = np.exp(log_softmax(np.asarray(logits, np.float64), axis=-1))
  confidence = probs.max(-1)
  correct = probs.argmax(-1) == labels
  bins = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
  total = 0.0
  for b in range(num_bins):
    in_bin = bins == b
    if in_bin.any():
      total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return float(total)


def count_params(params) -> int:
  """Number of scalar parameters in a pytree (e.g. ``nnx.state(model, nnx.Param)``)."""
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def classification_report(logits: np.ndarray, labels: np.ndarray,
                          teacher_logits: np.ndarray | None = None) -> dict:
  """The per-model keys of ``results.json``: accuracy, ECE and (with a teacher) agreement and KL."""
  report = {"test_accuracy": accuracy(logits, labels), "ece": ece(logits, labels)}
  if teacher_logits is not None:
    report["agreement"] = agreement(logits, teacher_logits)
    report["kl_to_teacher"] = kl_to_teacher(logits, teacher_logits)
  return report


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float]:
  """Accuracy on each class's test examples (NaN for a class with none)."""
  predictions = np.argmax(logits, -1)
  return [float(np.mean(predictions[labels == c] == c)) if np.any(labels == c) else float("nan")
          for c in range(num_classes)]


def bias_corrected(logits: np.ndarray, labels: np.ndarray, classes,
                   shifts: np.ndarray = np.arange(0.0, 10.001, 0.25)) -> dict:
  """Hinton et al. 2015 §3's correction for classes missing from the transfer set.

  A student distilled on data without class ``c`` still learns to recognise it
  from the teacher's soft targets, but its bias for ``c`` is too low. Following
  the paper ("the bias for the 3 is increased by 3.5, which optimizes overall
  performance on the test set"), adds one shift ``b`` to the logits of ``classes``
  and picks the ``b`` in ``shifts`` that maximises overall test accuracy.

  Returns:
    ``{"classes", "accuracy"`` (on those classes' examples, uncorrected),
    ``"bias_shift", "corrected_accuracy"`` (on those classes),
    ``"corrected_test_accuracy"`` (overall)``}``.
  """
  classes = [int(c) for c in classes]
  on_classes = np.isin(labels, classes)
  bump = np.zeros(logits.shape[-1])
  bump[classes] = 1.0
  overall = [accuracy(logits + b * bump, labels) for b in shifts]
  best = int(np.argmax(overall))
  corrected = logits + shifts[best] * bump
  return {
      "classes": classes,
      "accuracy": accuracy(logits[on_classes], labels[on_classes]),
      "bias_shift": float(shifts[best]),
      "corrected_accuracy": accuracy(corrected[on_classes], labels[on_classes]),
      "corrected_test_accuracy": float(overall[best]),
  }
