"""End-to-end training: every method, resumption, one compile, NaN handling."""

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from kd_jax.reporting import report
from kd_jax import engine
from kd_jax import methods
from kd_jax.core.errors import WorkdirConflictError
from kd_jax.run.pipeline import run_experiment
from tests.conftest import needs_fashion_mnist, tiny_config

pytestmark = [needs_fashion_mnist, pytest.mark.usefixtures("idx_source")]

RESULT_KEYS = {"params", "test_accuracy", "best_test_accuracy", "agreement", "kl_to_teacher", "ece"}


def _final_student_state(workdir):
  directory = os.path.join(workdir, "student", "checkpoints")
  last = max(int(d) for d in os.listdir(directory) if d.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(os.path.join(directory, str(last), "state"))


# The method's own loss term, as logged in metrics.jsonl (kd_jax.methods.make_objective).
OWN_TERM = {"none": None, "kd": "distill", "dkd": "dkd", "fitnets": "feature_loss",
            "at": "feature_loss", "rkd": "feature_loss", "sp": "feature_loss",
            "pkt": "feature_loss", "deit_hard": "feature_loss", "deit_soft": "feature_loss"}
# DeiT's methods need a ViT student with its distillation token.
DEIT_STUDENT = dict(model="vit", kwargs=dict(patch_size=7, dim=16, num_layers=1, num_heads=2,
                                             distillation_token=True))


def _records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("method", methods.accepting("classification"))
def test_every_method_runs_end_to_end(method, tmp_path, teacher_dir):
  overrides = {"feature_layers": {"conv2": "conv2"}} if method == "fitnets" else {}
  c = tiny_config(method, **overrides)
  if method.startswith("deit"):
    c.student.model, c.student.kwargs = DEIT_STUDENT["model"], DEIT_STUDENT["kwargs"]
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
  # Two epochs evaluated; the reported accuracy is the last evaluation's, the best the maximum.
  history = [h["test_accuracy"] for h in student["history"]]
  assert [h["step"] for h in student["history"]] == [4, 8]
  assert student["test_accuracy"] == pytest.approx(history[-1])
  assert student["best_test_accuracy"] == max(history)
  assert on_disk["timing"]["train_seconds"] > 0
  # Throughput counts training alone: evaluation and checkpoint time are taken out.
  assert student["eval_seconds"] > 0 and student["checkpoint_seconds"] > 0
  stepping = student["train_seconds"] - student["eval_seconds"] - student["checkpoint_seconds"]
  assert student["steps_per_second"] == pytest.approx(7 / stepping)
  records = _records(tmp_path / "run" / "student" / "metrics.jsonl")
  steps = [r for r in records if "loss" in r]
  evals = [r for r in records if "test_accuracy" in r]
  assert [r["step"] for r in steps] == list(range(8))      # every step, once
  assert [(r["step"], r["test_accuracy"]) for r in evals] == list(zip([4, 8], history))
  assert all(np.isfinite(r["loss"]) for r in steps)
  # The method's own term is computed, non-zero, and is what the loss is made of.
  term = OWN_TERM[method]
  for r in steps:
    if term is None:
      assert "distill" not in r and "feature_loss" not in r
      continue
    assert r[term] > 0, (method, r)
    if method == "dkd":
      expected = r["ce"] + r["dkd"]                          # dkd.warmup_steps = 0
    else:
      # (DeiT's logit term is α·CE alone: its teacher term is the feature term)
      expected = c.alpha * r["ce"] + (1 - c.alpha) * r.get("distill", 0.0)
      expected += c.feature_weight * r.get("feature_loss", 0.0)
    assert r["loss"] == pytest.approx(expected, rel=1e-5)


def test_training_learns(tmp_path, teacher_dir):
  # Chance is 10%: a teacher and a baseline that train at all are far above it, and
  # the distilled student's loss falls.
  c = tiny_config(baseline=True, **{"dataset.train_examples": 1000})
  c.teacher.model, c.teacher.kwargs = "mlp", dict(hidden=(64,))
  c.student.model, c.student.kwargs = "mlp", dict(hidden=(16,))
  for t in (c.teacher.train, c.train):
    t.epochs, t.learning_rate = 3, 3e-3
  results = run_experiment(c, str(tmp_path / "run"), teacher_dir=str(tmp_path / "teachers"),
                           show_progress=False)
  assert results["teacher"]["test_accuracy"] > 0.5
  assert results["baseline"]["test_accuracy"] > 0.5
  assert results["student"]["test_accuracy"] > 0.5
  losses = [r["loss"] for r in _records(tmp_path / "run" / "student" / "metrics.jsonl")
            if "loss" in r]
  assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])


def test_teacher_is_trained_once_and_cached(tmp_path):
  teachers = str(tmp_path / "teachers")
  first = run_experiment(tiny_config(), str(tmp_path / "a"), teacher_dir=teachers,
                         show_progress=False)
  second = run_experiment(tiny_config(alpha=0.9), str(tmp_path / "b"), teacher_dir=teachers,
                          show_progress=False)
  assert first["teacher"]["cached"] is False
  assert second["teacher"]["cached"] is True
  assert second["teacher"]["test_accuracy"] == first["teacher"]["test_accuracy"]
  # One teacher (beside the hidden .locks/ that parallel runs take turns by).
  assert [n for n in os.listdir(teachers) if not n.startswith(".")] == [
      first["teacher"]["source"].rsplit("/", 1)[-1]]


def test_a_baseline_with_its_own_budget_is_the_warm_started_students_start(tmp_path):
  # baseline_steps=3: the base trains 3 steps, the student from it its own 8 (2 epochs of 4).
  c = tiny_config(method="none", baseline=True, student_init="baseline", baseline_steps=3)
  results = run_experiment(c, str(tmp_path / "run"), teacher_dir=str(tmp_path / "teachers"),
                           show_progress=False)
  assert results["baseline"]["steps"] == 3 and results["student"]["steps"] == 8
  logged = [r["step"] for r in _records(tmp_path / "run" / "student" / "metrics.jsonl")
            if "loss" in r]
  assert logged == list(range(8))      # its own 8 steps from 0, not from the base's 3


# Also with augmentation and mixup (issue 27): the views of a resumed step are the same.
@pytest.mark.parametrize("augmentation", [{}, {"dataset.crop_padding": 2, "dataset.flip": True,
                                               "dataset.mixup": 0.4, "alpha": 0.0}])
def test_resumed_run_matches_uninterrupted_run(tmp_path, augmentation):
  c = tiny_config(**{"checkpoint.every_steps": 2, "baseline": True, **augmentation})
  # Separate teacher and baseline caches, so the resumed run trains its own of each
  # instead of reading the straight run's.
  straight = run_experiment(c, str(tmp_path / "straight"),
                            teacher_dir=str(tmp_path / "cache_a" / "teachers"),
                            show_progress=False)
  teachers_b = str(tmp_path / "cache_b" / "teachers")
  with pytest.raises(KeyboardInterrupt):
    run_experiment(c, str(tmp_path / "resumed"), teacher_dir=teachers_b, show_progress=False,
                   stop_at_step=5)
  assert not os.path.exists(tmp_path / "resumed" / "results.json")
  # The interrupted student phase left checkpoints at steps 2 and 4; the baseline finished.
  assert sorted(os.listdir(tmp_path / "resumed" / "student" / "checkpoints")) == ["2", "4"]
  resumed = run_experiment(c, str(tmp_path / "resumed"), teacher_dir=teachers_b,
                           show_progress=False)
  assert resumed["student"]["resumed_from_step"] == 4
  assert straight["student"]["resumed_from_step"] == 0
  a = _final_student_state(str(tmp_path / "straight"))
  b = _final_student_state(str(tmp_path / "resumed"))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  for key in ("test_accuracy", "best_test_accuracy", "agreement", "kl_to_teacher", "history"):
    assert resumed["student"][key] == straight["student"][key], key
  # The baseline and teacher were trained twice, independently: deterministic training.
  assert resumed["teacher"]["source"].startswith(str(tmp_path / "cache_b"))
  assert straight["teacher"]["source"].startswith(str(tmp_path / "cache_a"))
  for key in ("test_accuracy", "history"):
    assert resumed["baseline"][key] == straight["baseline"][key], key
  # Each step is logged once, with the same values as the uninterrupted run, in
  # metrics.jsonl and in the TensorBoard events as TensorBoard reads them back.
  assert (_records(tmp_path / "resumed" / "student" / "metrics.jsonl")
          == _records(tmp_path / "straight" / "student" / "metrics.jsonl"))
  resumed_events = _tensorboard_scalars(tmp_path / "resumed" / "student" / "tb")
  assert [step for step, _ in resumed_events["train/loss"]] == list(range(8))
  assert [step for step, _ in resumed_events["test/accuracy"]] == [4, 8]
  assert resumed_events == _tensorboard_scalars(tmp_path / "straight" / "student" / "tb")


def _tensorboard_scalars(logdir):
  """``{tag: [(step, value), ...]}`` as TensorBoard shows them (purges applied)."""
  from tensorboard.backend.event_processing import event_accumulator
  accumulator = event_accumulator.EventAccumulator(str(logdir))
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()["scalars"]}


def test_rerun_of_a_finished_run_returns_its_record_unchanged(tmp_path, teacher_dir):
  c = tiny_config()
  first = run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  mtime = os.path.getmtime(tmp_path / "run" / "results.json")
  again = run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  assert again == json.loads(json.dumps(first, default=float))
  assert os.path.getmtime(tmp_path / "run" / "results.json") == mtime


def test_workdir_of_another_config_is_refused_naming_each_field(tmp_path, teacher_dir):
  run_experiment(tiny_config(), str(tmp_path / "run"), teacher_dir=teacher_dir,
                 show_progress=False)
  before = (tmp_path / "run" / "results.json").read_text()
  other = tiny_config(divergence="tvd", temperature={"schedule": "constant", "init": 9.0})
  with pytest.raises(WorkdirConflictError) as error:
    run_experiment(other, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  message = str(error.value)
  assert 'divergence: "kl" → "tvd"' in message
  assert "temperature.init: 4.0 → 9.0" in message
  assert "new --workdir" in message
  assert (tmp_path / "run" / "results.json").read_text() == before    # nothing lost
  # Fields that change no result may differ.
  neutral = tiny_config(log_every_steps=3, **{"train.eval_batch_size": 50,
                                              "checkpoint.every_steps": 3})
  run_experiment(neutral, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)


def test_resume_with_another_config_is_refused_before_training(tmp_path, teacher_dir):
  c = tiny_config(**{"checkpoint.every_steps": 2})
  with pytest.raises(KeyboardInterrupt):
    run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False,
                   stop_at_step=3)
  with pytest.raises(WorkdirConflictError, match=r"alpha: 0\.5 → 0\.9"):
    run_experiment(tiny_config(alpha=0.9), str(tmp_path / "run"), teacher_dir=teacher_dir,
                   show_progress=False)
  # The checkpoints carry the identity too: a workdir whose config.json is gone is still safe.
  os.remove(tmp_path / "run" / "config.json")
  with pytest.raises(WorkdirConflictError, match="(?s)checkpoints in .* alpha: 0\\.5 → 0\\.9"):
    run_experiment(tiny_config(alpha=0.9), str(tmp_path / "run"), teacher_dir=teacher_dir,
                   show_progress=False)
  assert sorted(os.listdir(tmp_path / "run" / "student" / "checkpoints")) == ["2"]


def test_resume_at_the_final_checkpoint_reports_and_prints(tmp_path, teacher_dir):
  # Killed after the last checkpoint but before result.json: the rerun trains nothing.
  c = tiny_config()
  run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  os.remove(tmp_path / "run" / "results.json")
  os.remove(tmp_path / "run" / "student" / "result.json")
  results = run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir,
                           show_progress=False)
  assert results["student"]["resumed_from_step"] == 8
  assert results["student"]["steps_per_second"] is None
  table = report.summary_table(results)
  assert "0 steps" in table and "resumed at step 8 of 8" in table


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


def test_the_compile_count_holds_when_jits_dispatch_cache_is_full(tmp_path, teacher_dir):
  # jax.jit's C++ dispatch cache is shared by the whole process (8,192 entries); once full
  # it keeps no new entries, and jit's _cache_size() reads 0 for a step that compiled once
  # (a serial test session gets there). A one-entry cache (jax's private config knob, the
  # only way to fill it in seconds) stands for it: the recorded count must still be 1.
  from jax._src import config as jax_config
  from jax._src import pjit
  with jax_config.jax_jit_cpp_cache_obj(pjit.make_jit_cpp_cache(1)):
    results = run_experiment(tiny_config(), str(tmp_path / "run"),
                             teacher_dir=teacher_dir, show_progress=False)
  assert results["student"]["steps"] == 8
  assert results["student"]["step_compiles"] == 1


def test_nan_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, teacher_dir):
  c = tiny_config(**{"checkpoint.every_steps": 1})
  c.train.epochs = 4
  c.train.optimizer = "sgd"
  # Warm-up from 0 to an absurd peak: step 0 moves nothing (lr 0) and is checkpointed,
  # then the learning rate explodes and the loss turns NaN a few steps later.
  c.train.lr_schedule = "warmup_cosine"
  c.train.warmup_fraction = 0.5
  c.train.learning_rate = 1e30
  with pytest.raises(engine.NonFiniteLossError, match=r"loss became nan at step (\d+)") as error:
    run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir,
                   show_progress=False)
  bad_step = int(re.search(r"at step (\d+)", str(error.value)).group(1))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "run" / "student" / "checkpoints"))
  assert steps, "the test needs checkpoints written before the loss went bad"
  assert max(steps) <= bad_step    # checkpoint n holds the state after steps 0 .. n-1
  for step in steps:
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(tmp_path / "run" / "student" / "checkpoints" / str(step)
                                   / "state")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


# Multi-device and multi-process runs: tests/test_parallel.py and tests/test_multihost.py.


def test_a_field_added_later_with_its_default_is_not_a_difference(tmp_path, teacher_dir):
  from kd_jax.config import records
  c = tiny_config(**{"checkpoint.every_steps": 2})
  with pytest.raises(KeyboardInterrupt):
    run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False,
                   stop_at_step=3)
  # Rewrite the record as an older kd_jax (without train.steps) would have written it.
  path = tmp_path / "run" / "config.json"
  record = json.loads(path.read_text())
  del record["fields"]["train"]["steps"]
  path.write_text(json.dumps(record))
  assert records.differences(record["fields"], records.result_fields(c)) == []
  changed = tiny_config(**{"train.steps": 5})
  assert records.differences(record["fields"], records.result_fields(changed)) == [
      "train.steps: (absent) → 5"]
  with pytest.raises(WorkdirConflictError, match=r"train.steps: \(absent\) → 5"):
    run_experiment(changed, str(tmp_path / "run"), teacher_dir=teacher_dir, show_progress=False)
  resumed = run_experiment(c, str(tmp_path / "run"), teacher_dir=teacher_dir,
                           show_progress=False)
  assert resumed["student"]["resumed_from_step"] == 2
