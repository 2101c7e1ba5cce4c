"""The diffusion task family (kd_jax/tasks/diffusion.py): its batches, evaluation, checks and
the teacher experiment's smoke run."""

import json
import os

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.core import parallel
from kd_jax.objectives import diffusion as df
from kd_jax.tasks import diffusion
from tests import multidevice
from tests.conftest import needs_fashion_mnist
from tests.test_experiments import _cli, assert_refused_field, cli_load

TEACHER = "experiments/diffusion/teacher.py"


def _prepared(**dataset):
  c = cli_load(TEACHER + ":smoke")
  c.dataset.update(dataset)
  return c, diffusion.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), jnp.float32)


@needs_fashion_mnist
@pytest.mark.parametrize("parameterization", ["v", "x"])
def test_a_batch_is_the_noised_image_and_its_target(parameterization):
  _, prepared = _prepared(parameterization=parameterization)
  data, index = prepared.train_data, jnp.arange(16)
  (z, t, labels), target, mask, _ = prepared.task.train_batch(
      data, index, jnp.ones(16, bool), jax.random.key(0))
  assert labels is None and mask.all() and z.shape == target.shape == (16, 28, 28, 1)
  x = np.asarray(data.images[:16], np.float32) / 127.5 - 1.0
  alpha, sigma = (np.asarray(a)[:, None, None, None] for a in df.alpha_sigma(t))
  # z = alpha·x + sigma·eps, so the target fixes x: v gives x = alpha·z − sigma·v.
  x_from_target = alpha * z - sigma * target if parameterization == "v" else target
  np.testing.assert_allclose(x_from_target, x, atol=1e-5)
  assert -1.0 <= x.min() and x.max() <= 1.0


@needs_fashion_mnist
def test_conditional_batches_drop_labels_to_the_null_class_at_the_configured_rate():
  _, prepared = _prepared(conditional=True, label_dropout=0.25)
  data = prepared.train_data
  index = jnp.arange(256)
  (_, _, labels), *_ = prepared.task.train_batch(data, index, jnp.ones(256, bool),
                                                 jax.random.key(1))
  labels, true = np.asarray(labels), np.asarray(data.labels[:256])
  dropped = labels == 10
  assert np.array_equal(labels[~dropped], true[~dropped])
  # 256 draws at p = 0.25: sd 0.027; 4 of them allowed.
  assert abs(dropped.mean() - 0.25) < 0.11


@needs_fashion_mnist
def test_the_held_out_loss_is_fixed_and_does_not_depend_on_the_batch_size():
  from flax import nnx
  c, prepared = _prepared()
  model = prepared.build(c.student, 0)
  model.out.kernel.set_value(0.1 * jax.random.normal(jax.random.key(2), model.out.kernel.shape))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  losses = [prepared.task.evaluator(graphdef, prepared.test_data, b, None)((params, rest))[0]
            ["test_loss"] for b in (16, 64, 64)]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-5)
  # A model that predicts 0 everywhere (the initial UNet): the loss is the mean square of
  # the v targets, E[alpha²·eps² + sigma²·x²] = E[alpha² + sigma²·E[x²]], which lies between
  # E[x²] and 1 whatever the times drawn (alpha² + sigma² = 1).
  graphdef0, params0, rest0 = nnx.split(prepared.build(c.student, 0), nnx.Param, ...)
  zero = prepared.task.evaluator(graphdef0, prepared.test_data, 64, None)((params0, rest0))[0]
  x2 = np.mean(np.square(np.asarray(prepared.test_data.images, np.float32) / 127.5 - 1.0))
  assert x2 - 0.02 < zero["test_loss"] < 1.02, (x2, zero)


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.dataset, "parameterization", "eps"), "dataset.parameterization"),
    (lambda c: setattr(c.dataset, "guidance", 1.0), "dataset.guidance"),
    (lambda c: setattr(c.dataset, "sample_steps", ()), "dataset.sample_steps"),
    (lambda c: setattr(c.dataset, "student_sample_steps", (2, 0)), "dataset.student_sample_steps"),
    (lambda c: setattr(c.dataset, "samples", 0), "dataset.samples"),
    (lambda c: setattr(c.dataset, "classifier_examples", -1), "dataset.classifier_examples"),
    (lambda c: setattr(c.student, "model", "cnn"), "student.model"),
    (lambda c: setattr(c, "method", "kd"), "method"),
])
def test_bad_diffusion_fields_are_named(edit, field):
  assert_refused_field(cli_load(TEACHER + ":smoke"), edit, field)


def test_the_none_method_regresses_real_valued_targets():
  from kd_jax import methods
  c = cli_load(TEACHER + ":smoke")
  objective = methods.make_objective(c)
  prediction, target = jnp.arange(8.0).reshape(2, 2, 2, 1), jnp.ones((2, 2, 2, 1))
  mask = jnp.array([True, False])
  loss, _ = objective(0, (prediction, {}), None, target, mask)
  # Row 0 only: the mean of (0..3 − 1)² = (1 + 0 + 1 + 4) / 4.
  np.testing.assert_allclose(loss, 1.5)


@needs_fashion_mnist
@pytest.mark.slow
def test_the_teacher_smoke_run_reports_every_sampler_step_count(tmp_path, teacher_dir):
  out = _cli(f"--config={TEACHER}:smoke", f"--workdir={tmp_path / 'd'}",
             f"--teacher_dir={teacher_dir}", f"--compilation_cache_dir={multidevice.CACHE}",
             "--noprogress", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "d" / "results.json") as f:
    results = json.load(f)
  assert results["headline"] == "test_loss"
  for phase in ("teacher", "student"):
    assert np.isfinite(results[phase]["test_loss"])
    for steps in (4, 1):
      entry = results[phase][f"steps_{steps}"]
      assert entry["ms_per_image"] > 0 and entry["fd"] > 0
      assert 0 <= entry["precision"] <= 1 and 0 <= entry["recall"] <= 1
      assert 0 <= entry["coverage_kl"] <= np.log(10) + 1e-9
  # The student's samples against the teacher's (4 steps, its most), from the same noise.
  assert results["student"]["steps_1"]["mse_to_teacher"] > 0
  for phase in ("teacher", "student"):
    for steps in (4, 1):
      written = np.load(tmp_path / "d" / phase / "samples" / f"steps_{steps}.npz")
      assert written["images"].dtype == np.uint8 and written["images"].shape == (8, 28, 28, 1)
      assert "labels" not in written          # unconditional
      assert (tmp_path / "d" / phase / "samples" / f"steps_{steps}.png").stat().st_size > 0
  assert "test loss" in out.stdout


@needs_fashion_mnist
def test_the_feature_classifier_is_trained_once_and_read_back(tmp_path):
  from kd_jax.tasks import diffusion_quality
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  first = diffusion_quality.obtain(str(tmp_path), mesh, train_examples=256, epochs=1)
  again = diffusion_quality.obtain(str(tmp_path), mesh, train_examples=256, epochs=1)
  assert again.info == first.info and 0.1 < first.info["test_accuracy"] <= 1
  images = jnp.asarray(np.linspace(-1, 1, 4 * 28 * 28).reshape(4, 28, 28, 1), jnp.float32)
  (f1, l1), (f2, l2) = first.features_and_labels(images), again.features_and_labels(images)
  np.testing.assert_array_equal(f1, f2)
  np.testing.assert_array_equal(l1, l2)
  assert f1.shape == (4, 256)


@needs_fashion_mnist
def test_a_student_initialised_from_the_teacher_starts_as_its_copy(tmp_path, teacher_dir):
  from kd_jax.run import pipeline
  c = cli_load(TEACHER + ":smoke")
  c.student.kwargs = ml_collections.ConfigDict(c.teacher.kwargs.to_dict())
  c.student_init, c.train.steps = "teacher", 1
  c.train.learning_rate = 1e-12        # one step at a negligible rate: still the teacher
  results = pipeline.run_experiment(c, str(tmp_path / "w"), teacher_dir=teacher_dir,
                                    show_progress=False)
  for steps in (4, 1):
    assert results["student"][f"steps_{steps}"]["fd"] == pytest.approx(
        results["teacher"][f"steps_{steps}"]["fd"], rel=1e-4)
  assert results["student"]["steps_4"]["mse_to_teacher"] < 1e-10


@needs_fashion_mnist
@pytest.mark.slow
def test_a_class_conditional_one_step_student_exports_with_its_labels_and_guidance(
    tmp_path, teacher_dir):
  from kd_jax.run import pipeline
  c = cli_load(TEACHER + ":smoke")
  c.dataset.conditional, c.dataset.guidance = True, 1.5
  c.student.kwargs = ml_collections.ConfigDict(c.teacher.kwargs.to_dict())
  c.student_init, c.train.steps = "teacher", 2
  workdir = tmp_path / "w"
  pipeline.run_experiment(c, str(workdir), teacher_dir=teacher_dir, show_progress=False)
  written = np.load(workdir / "student" / "samples" / "steps_1.npz")
  np.testing.assert_array_equal(written["labels"], np.arange(8) % 10)   # the classes in turn
  out = _cli(f"--workdir={workdir}", "--format=onnx", module="kd_jax.export", timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  parity = json.load(open(workdir / "export" / "report.json"))["student.onnx"]["parity"]
  assert parity["max_abs_pixel_difference"] <= 1 and parity["equal_pixels"] > 0.99
  web = json.load(open(workdir / "export" / "samples.json"))
  assert web["labels"] == [0, 1, 2, 3] and web["class_names"][0] == "T-shirt/top"
  # The graph takes (noise [B, 28, 28, 1] float32, labels [B] int32).
  import onnxruntime as ort
  session = ort.InferenceSession(str(workdir / "export" / "student.onnx"))
  assert [(i.type, len(i.shape)) for i in session.get_inputs()] == [
      ("tensor(float)", 4), ("tensor(int32)", 1)]


def test_a_copy_of_the_teacher_needs_the_teachers_model():
  c = cli_load(TEACHER + ":smoke")
  c.student.kwargs = ml_collections.ConfigDict(c.teacher.kwargs.to_dict())
  c.student_init = "teacher"
  assert_refused_field(c, lambda c: setattr(c.student.kwargs, "widths", (8, 8)),
                       "student_init")


STUDENTS = ("progressive", "consistency", "one_step_kd", "adversarial")


@needs_fashion_mnist
@pytest.mark.slow
def test_the_table_smoke_runs_every_student_and_tabulates_them(tmp_path, teacher_dir):
  sweep = tmp_path / "table"
  out = _cli("--config=experiments/diffusion/table.py:smoke", f"--workdir={sweep}",
             f"--teacher_dir={teacher_dir}", f"--compilation_cache_dir={multidevice.CACHE}",
             "--noprogress", module="kd_jax.sweep", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"[sweep 4/4 done, 0 failed] {sweep}" in out.stdout
  table = _cli(f"--workdir={sweep}", module="kd_jax.diffusion_table", timeout=300)
  assert table.returncode == 0, table.stderr[-3000:]
  rows = [line for line in table.stdout.splitlines() if line.startswith("| ")]
  assert rows[0].startswith("| model | steps | FD-FMNIST | precision | recall")
  labels = [r.split(" | ")[0].lstrip("| ") for r in rows[1:]]
  assert labels == ["teacher (DDIM)"] * 2 + [f"`{m}`" for m in STUDENTS for _ in range(2)]
  assert "- 4-step target" in table.stdout and "- 1-step target" in table.stdout

  # Each method's own signature, from its run of the sweep.
  run_dir = lambda point: sweep / "runs" / point / "seed0"
  results = lambda point: json.load(open(run_dir(point) / "results.json"))
  logged = lambda point: [json.loads(line) for line in
                          open(run_dir(point) / "student" / "metrics.jsonl")]
  rounds = {r["step"]: (r["round"], r["student_steps"]) for r in logged("progressive")
            if "round" in r}
  assert rounds[0] == (0.0, 2.0) and rounds[3] == (1.0, 1.0)       # 4 → 2, then 2 → 1
  adversarial = next(r for r in logged("adversarial") if "discriminator" in r)
  assert np.isfinite([adversarial["distill"], adversarial["student_adversarial"],
                      adversarial["discriminator"]]).all()
  # The reported student is the generator alone (the discriminator is not counted).
  assert results("adversarial")["student"]["params"] == results("adversarial")["teacher"]["params"]
  assert results("one_step_kd")["teacher_pairs"] == {"pairs": 64, "teacher_steps": 4}
  assert results("consistency")["config"]["consistency"]["grid"] == 4

  # One teacher, the same noise: its report is computed once and read back by the other
  # runs (identical, and said so), each of which still holds the teacher's samples.
  teachers = [results(p)["teacher"] for p in STUDENTS]
  assert sum(t.pop("report_cached") for t in teachers) >= len(STUDENTS) - 1
  for t in teachers:
    t.pop("cached")          # (whether the weights were trained by this run)
  assert all(t == teachers[0] for t in teachers)
  for point in STUDENTS:
    written = np.load(run_dir(point) / "teacher" / "samples" / "steps_4.npz")["images"]
    np.testing.assert_array_equal(written, np.load(
        run_dir(STUDENTS[0]) / "teacher" / "samples" / "steps_4.npz")["images"])

  # The one-step student exports: float32 noise in, uint8 images out, checked against JAX.
  exported = _cli(f"--workdir={run_dir('one_step_kd')}", "--format=onnx", module="kd_jax.export",
                  timeout=600)
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert "max |Δpixel|" in exported.stdout
  report = json.load(open(run_dir("one_step_kd") / "export" / "report.json"))
  parity = report["student.onnx"]["parity"]
  assert parity["max_abs_pixel_difference"] <= 1 and parity["equal_pixels"] > 0.99
  web = json.load(open(run_dir("one_step_kd") / "export" / "samples.json"))
  assert web["kind"] == "denoiser" and np.array(web["noise"]).shape == (4, 28 * 28)
  refused = _cli(f"--workdir={run_dir('one_step_kd')}", "--format=tflite", module="kd_jax.export")
  assert refused.returncode == 2 and "float32 ONNX so far" in refused.stderr


def test_the_tables_targets_follow_the_issues_bounds():
  from kd_jax.reporting import diffusion_table
  teacher = [{"steps_256": {"fd": 10.0}, "steps_1": {"fd": 100.0}}]
  students = {"a": [{"steps_4": {"fd": 14.0}, "steps_1": {"fd": 25.0}}],
              "b": [{"steps_4": {"fd": 16.0}, "steps_1": {"fd": 26.0}}]}
  four, one = diffusion_table.targets(teacher, students)
  # 4 steps: ≤ 1.5 × 10 = 15; 1 step: ≤ 3 × 10 = 30 and ≤ 100 / 4 = 25.
  assert "= 15.00" in four and "best `a` 14.00 — met; reached by `a`." in four
  assert "(25.00)" in one and "best `a` 25.00 — met; reached by `a`." in one
  students["a"][0]["steps_1"]["fd"] = 25.5
  assert "— not met; reached by none." in diffusion_table.targets(teacher, students)[1]


def _fake_report(directory, fd):
  """What a teacher's report computation leaves: samples under ``directory`` and the report."""
  os.makedirs(os.path.join(directory, "samples"))
  with open(os.path.join(directory, "samples", "steps_1.npz"), "wb") as f:
    np.savez(f, images=np.full((2, 28, 28, 1), fd, np.uint8))
  return {"steps_1": {"fd": float(fd)}}, np.full((2, 28, 28, 1), fd / 100, np.float32)


def test_the_teacher_report_cache_is_computed_once_and_survives_a_concurrent_writer(tmp_path):
  from kd_jax.tasks import diffusion_reference as cache
  calls = []

  def compute(directory):
    calls.append(directory)
    return _fake_report(directory, 7)

  report, reference = cache.obtain(str(tmp_path), "k", compute, str(tmp_path / "run1"))
  assert report == {"steps_1": {"fd": 7.0}, "report_cached": False}
  again, reference_again = cache.obtain(str(tmp_path), "k", compute, str(tmp_path / "run2"))
  assert again == {"steps_1": {"fd": 7.0}, "report_cached": True} and len(calls) == 1
  np.testing.assert_array_equal(reference_again, reference)
  assert (tmp_path / "run2" / "samples" / "steps_1.npz").exists()

  # Another run finishes the same entry while this one computes: its entry is kept whole.
  def racing(directory):
    finished = tmp_path / cache.SUBDIR / "r"
    first = _fake_report(str(finished), 3)
    np.save(finished / cache.REFERENCE_FILE, first[1])
    with open(finished / cache.REPORT_FILE, "w") as f:
      json.dump(first[0], f)
    return _fake_report(directory, 9)

  report, reference = cache.obtain(str(tmp_path), "r", racing, str(tmp_path / "run3"))
  assert report["steps_1"]["fd"] == 3.0 and float(reference.max()) == pytest.approx(0.03)
  assert sorted(os.listdir(tmp_path / cache.SUBDIR)) == ["k", "r"]     # no temporaries left
