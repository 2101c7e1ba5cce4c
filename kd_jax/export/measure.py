"""Parity and latency of an exported model against the JAX student it came from."""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import numpy as np


def parity(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray) -> dict:
  """How far the exported logits ``[N, C]`` are from the JAX student's on the same inputs.

  Returns ``max_abs_logit_difference``, ``top1_agreement`` (fraction of examples with
  the same argmax) and the two accuracies on ``labels`` (``accuracy_change`` = exported
  − JAX, which quantisation may move).
  """
  reference, exported = np.asarray(reference, np.float32), np.asarray(exported, np.float32)
  jax_accuracy = float(np.mean(reference.argmax(-1) == labels))
  exported_accuracy = float(np.mean(exported.argmax(-1) == labels))
  return {"max_abs_logit_difference": float(np.max(np.abs(reference - exported))),
          "top1_agreement": float(np.mean(reference.argmax(-1) == exported.argmax(-1))),
          "jax_accuracy": jax_accuracy, "exported_accuracy": exported_accuracy,
          "accuracy_change": exported_accuracy - jax_accuracy, "examples": int(len(labels))}


def pixel_parity(reference: np.ndarray, exported: np.ndarray) -> dict:
  """How far the exported uint8 images ``[N, H, W, C]`` are from the JAX student's on the
  same noise: ``max_abs_pixel_difference`` and ``equal_pixels`` (the fraction equal)."""
  reference, exported = np.asarray(reference, np.int32), np.asarray(exported, np.int32)
  return {"max_abs_pixel_difference": int(np.max(np.abs(reference - exported))),
          "equal_pixels": float(np.mean(reference == exported)),
          "examples": int(len(reference))}


def rows(inputs, start: int, stop: int):
  """Rows ``start:stop`` of ``inputs``: an array, or a tuple of arrays (several inputs)."""
  if isinstance(inputs, tuple):
    return tuple(np.ascontiguousarray(x[start:stop]) for x in inputs)
  return np.ascontiguousarray(inputs[start:stop])


def count(inputs) -> int:
  """How many examples ``inputs`` (an array or a tuple of arrays) hold."""
  return len(inputs[0] if isinstance(inputs, tuple) else inputs)


def median_latency_ms(run: Callable[[np.ndarray], object], batch: np.ndarray,
                      repeats: int = 50) -> float:
  """The median wall time of ``run(batch)`` in ms, after two warm-up calls (compilation)."""
  for _ in range(2):
    jax.block_until_ready(run(batch))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(batch))
    times.append(time.perf_counter() - start)
  return float(np.median(times)) * 1e3


def in_batches(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray,
               batch_size: int = 256) -> np.ndarray:
  """``run`` over ``inputs`` (an array, or a tuple of arrays) in batches, concatenated."""
  return np.concatenate([np.asarray(run(rows(inputs, i, i + batch_size)))
                         for i in range(0, count(inputs), batch_size)])
