"""A training phase's log: ``metrics.jsonl`` and TensorBoard events, each step once.

``WORKDIR/metrics.jsonl`` holds one JSON object per line:

* train records ``{"step": s, "loss": ..., ...}`` — the metrics of optimiser
  step ``s`` (0-based), every ``log_every_steps`` steps and the last one;
* eval records ``{"step": n, "epoch": e, "test_accuracy": ...}`` — the test
  metrics after ``n`` steps, at the end of every epoch.

TensorBoard events (``WORKDIR/tb``, tags ``train/<metric>`` and ``test/<metric>``)
carry the same values. View them with
``tensorboard --logdir WORKDIR`` (``make install`` installs TensorBoard).

A run resumed from the checkpoint after ``n`` steps has already logged steps past
``n`` before it stopped; it logs them again. So that each step appears once,
resuming drops those records from ``metrics.jsonl`` and starts its event file
with TensorBoard's purge marker (``purge_step``), which hides the older files'
events from step ``n`` on; the eval record at step ``n`` itself (part of the
checkpoint) is written again.
"""

from __future__ import annotations

import json
import os
import sys

import jax
from absl import logging

from kd_jax.core import files

METRICS_FILE = "metrics.jsonl"


def read_records(path: str) -> list[dict]:
  """Every record of a ``metrics.jsonl`` (empty when it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def is_eval(record: dict) -> bool:
  return "epoch" in record


class RunLog:
  """Writes train and eval records of one phase (process 0 only; a no-op elsewhere)."""

  def __init__(self, workdir: str, *, resume_step: int, resumed_evals=()):
    """Opens the log of a phase that starts (or resumes) after ``resume_step`` steps.

    Args:
      workdir: the phase's directory.
      resume_step: steps already taken (0 for a fresh run).
      resumed_evals: eval records restored with the checkpoint; the one at
        ``resume_step`` is rewritten to TensorBoard after the purge.
    """
    self.path = os.path.join(workdir, METRICS_FILE)
    self._primary = jax.process_index() == 0
    self._writer = None
    if not self._primary:
      return
    kept = [r for r in read_records(self.path)
            if r["step"] < resume_step or (is_eval(r) and r["step"] == resume_step)]
    with files.atomic_open(self.path) as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._writer = _summary_writer(os.path.join(workdir, "tb"), resume_step)
    for record in resumed_evals:
      if record["step"] == resume_step:
        self._scalars("test", record)

  def train(self, record: dict) -> None:
    self._append(record)
    self._scalars("train", record)

  def eval(self, record: dict) -> None:
    self._append(record)
    self._scalars("test", record)

  def _append(self, record: dict) -> None:
    if self._primary:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def _scalars(self, prefix: str, record: dict) -> None:
    if self._writer is None:
      return
    for key, value in record.items():
      if key not in ("step", "epoch"):
        name = key.removeprefix("test_") if prefix == "test" else key
        self._writer.add_scalar(f"{prefix}/{name}", value, record["step"])

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _summary_writer(logdir: str, resume_step: int):
  """A tensorboardX writer (no TensorFlow needed), or None when it is not installed.

  Event files are named ``events.out.tfevents.<unix second>.<host>``; the
  ``.resume<step>`` suffix keeps a writer that resumes within the same second
  from reopening (and truncating) the previous file, and sorts it after that
  file, which TensorBoard needs to apply the purge in order.

  tensorboardX imports PyTorch at import time when it is installed (only to
  accept torch tensors, which kd_jax never logs), which costs about a second.
  Unless the process already has torch, it is hidden from that one import
  (``sys.modules["torch"] = None`` makes ``import torch`` raise ImportError,
  tensorboardX's own fallback) and restored at once, so later ``import torch``
  works as usual.
  """
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  except ImportError:
    logging.warning("tensorboardX is not installed; no TensorBoard events are written")
    return None
  finally:
    if hide_torch:
      del sys.modules["torch"]
  return SummaryWriter(logdir, purge_step=resume_step or None,
                       filename_suffix=f".resume{resume_step:09d}")
