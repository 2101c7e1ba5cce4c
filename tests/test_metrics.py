"""Evaluation metrics against hand-computed values."""

import math

import numpy as np
import pytest

from kd_jax.tasks import metrics


def test_accuracy_and_agreement():
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 1.0], [0.0, 1.0]])
  labels = np.array([0, 1, 1, 0])
  teacher = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  assert metrics.accuracy(logits, labels) == 0.5
  assert metrics.agreement(logits, teacher) == 0.75


def test_kl_to_teacher_closed_form():
  # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3).
  teacher = np.log([[0.5, 0.5]])
  student = np.log([[0.25, 0.75]])
  expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
  assert metrics.kl_to_teacher(student, teacher) == pytest.approx(expected, rel=1e-12)


def test_ece_closed_form():
  # Confidences 0.8 (correct), 0.8 (wrong), 0.6 (correct): bins (0.73,0.8] and (0.53,0.6].
  logits = np.log([[0.8, 0.2], [0.8, 0.2], [0.6, 0.4]])
  labels = np.array([0, 1, 0])
  expected = 2 / 3 * abs(0.5 - 0.8) + 1 / 3 * abs(1.0 - 0.6)
  assert metrics.ece(logits, labels) == pytest.approx(expected, rel=1e-9)
  # Perfectly calibrated one-hot-confident correct predictions: ECE 0.
  assert metrics.ece(np.array([[50.0, 0.0]]), np.array([0])) == pytest.approx(0.0, abs=1e-12)


def test_bias_correction_recovers_an_under_biased_class():
  # Class 2 is always the runner-up by 1.0 on its own examples: a shift just over 1 fixes it,
  # and the other classes' margins (3.0) survive it.
  logits = np.array([[4.0, 1.0, 1.0], [1.0, 4.0, 1.0], [3.0, 0.0, 2.0], [0.0, 3.0, 2.0]])
  labels = np.array([0, 1, 2, 2])
  out = metrics.bias_corrected(logits, labels, [2], shifts=np.array([0.0, 0.5, 1.5, 5.0]))
  assert out["accuracy"] == 0.0
  assert out["bias_shift"] == 1.5
  assert out["corrected_accuracy"] == 1.0
  assert out["corrected_test_accuracy"] == 1.0


def test_per_class_accuracy_and_params():
  logits = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  labels = np.array([0, 1, 1])
  assert metrics.per_class_accuracy(logits, labels, 3)[:2] == [1.0, 0.5]
  assert math.isnan(metrics.per_class_accuracy(logits, labels, 3)[2])
  assert metrics.count_params({"w": np.zeros((3, 4)), "b": np.zeros(4)}) == 16
