"""End-to-end training: every method, resumption, one compile, NaN handling."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax import config as config_lib
from kd_jax import train
from kd_jax.experiment import run_experiment
from tests.conftest import needs_fashion_mnist, tiny_config

pytestmark = [needs_fashion_mnist, pytest.mark.usefixtures("idx_source")]

RESULT_KEYS = {"params", "test_accuracy", "best_test_accuracy", "agreement", "kl_to_teacher", "ece"}


def _final_student_state(workdir):
  directory = os.path.join(workdir, "student", "checkpoints")
  last = max(int(d) for d in os.listdir(directory) if d.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(directory, str(last), "state"))


@pytest.mark.parametrize("method", config_lib.METHODS)
def test_every_method_runs_end_to_end(method, tmp_path, teacher_dir):
  overrides = {"feature_layers": {"conv2": "conv2"}} if method == "fitnets" else {}
  c = tiny_config(method, **overrides)
  results = run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir,
                           show_progress=False)
  with open(tmp_path / "run" / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk["student"]["test_accuracy"] == results["student"]["test_accuracy"]
  assert set(on_disk) >= {"experiment", "config", "git_commit", "teacher", "student", "timing"}
  assert {"params", "test_accuracy"} <= set(on_disk["teacher"])
  student = on_disk["student"]
  assert RESULT_KEYS <= set(student)
  for key in ("test_accuracy", "best_test_accuracy", "agreement"):
    assert 0.0 <= student[key] <= 1.0
  assert np.isfinite(student["kl_to_teacher"]) and student["kl_to_teacher"] >= 0
  assert student["best_test_accuracy"] >= student["test_accuracy"]
  assert on_disk["timing"]["train_seconds"] > 0
  # Every step logged, and every logged loss finite.
  with open(tmp_path / "run" / "student" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == list(range(8))
  assert all(np.isfinite(r["loss"]) for r in records)


def test_teacher_is_trained_once_and_cached(tmp_path):
  teachers = str(tmp_path / "teachers")
  first = run_experiment(tiny_config(), str(tmp_path / "a"), teacher_dir=teachers,
                         show_progress=False)
  second = run_experiment(tiny_config(alpha=0.9), str(tmp_path / "b"), teacher_dir=teachers,
                          show_progress=False)
  assert first["teacher"]["cached"] is False
  assert second["teacher"]["cached"] is True
  assert second["teacher"]["test_accuracy"] == first["teacher"]["test_accuracy"]
  assert len(os.listdir(teachers)) == 1


def test_resumed_run_matches_uninterrupted_run(tmp_path, teacher_dir):
  teachers = teacher_dir
  c = tiny_config(**{"checkpoint.every_steps": 2, "baseline": True})
  straight = run_experiment(c, str(tmp_path / "straight"), teacher_dir=teachers,
                            show_progress=False)
  with pytest.raises(KeyboardInterrupt):
    run_experiment(c, str(tmp_path / "resumed"), teacher_dir=teachers, show_progress=False,
                   stop_at_step=5)
  assert not os.path.exists(tmp_path / "resumed" / "results.json")
  # The interrupted student phase left checkpoints at steps 2 and 4; the baseline finished.
  assert sorted(os.listdir(tmp_path / "resumed" / "student" / "checkpoints")) == ["2", "4"]
  resumed = run_experiment(c, str(tmp_path / "resumed"), teacher_dir=teachers,
                           show_progress=False)
  a = _final_student_state(str(tmp_path / "straight"))
  b = _final_student_state(str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert resumed["student"]["test_accuracy"] == straight["student"]["test_accuracy"]
  assert resumed["student"]["best_test_accuracy"] == straight["student"]["best_test_accuracy"]
  assert resumed["baseline"] == straight["baseline"]


def test_checkpoints_keep_last_n(tmp_path, teacher_dir):
  c = tiny_config(**{"checkpoint.every_steps": 1, "checkpoint.keep": 2})
  run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  assert sorted(os.listdir(tmp_path / "run" / "student" / "checkpoints")) == ["7", "8"]


def test_one_compile_across_epochs_with_ragged_last_batch(tmp_path, teacher_dir):
  # 200 examples / batch 64 = 3 full batches + 1 of 8: two epochs, 8 steps, one compile.
  results = run_experiment(tiny_config(), str(tmp_path / "run"),
                           teacher_dir=teacher_dir, show_progress=False)
  assert results["student"]["steps"] == 8
  assert results["student"]["step_compiles"] == 1


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, teacher_dir):
  c = tiny_config(**{"checkpoint.every_steps": 2})
  c.train.learning_rate = 1e30   # diverges within a few steps
  c.train.optimizer = "sgd"
  with pytest.raises(train.NonFiniteLossError, match="loss became"):
    run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir,
                   show_progress=False)
  steps = os.listdir(tmp_path / "run" / "student" / "checkpoints")
  for step in steps:     # whatever was saved was saved before the loss went bad
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(tmp_path / "run" / "student" / "checkpoints" / step / "state")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


# Multi-device and multi-process runs: tests/test_parallel.py and tests/test_multihost.py.
