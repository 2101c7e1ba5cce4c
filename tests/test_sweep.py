"""Tests for kd_jax.sweep: grid parsing, resumability, failure isolation, summary files.

Runs use a fake ``run_fn`` whose results follow a formula, so every aggregate below is
checked against values computed by hand from that formula.
"""

import csv
import functools
import json
import math
import os
import shutil
import re
import subprocess
import sys

import ml_collections
import pytest

from kd_jax import sweep
from kd_jax.core import fingerprint
from kd_jax.core.errors import ConfigError, WorkdirConflictError
from kd_jax.reporting import sweep_dir

T_975_1 = 12.706204736174704  # t_{0.975} with 1 degree of freedom (tables).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_config():
  """The fields of kd_jax.config.base_config() these tests need, in the same shapes."""
  return ml_collections.ConfigDict(dict(
      experiment="toy",
      seed=10,
      method="kd",
      divergence="kl",
      temperature=dict(schedule="linear", init=4.0, end=1.0, steps=100),
      alpha=0.5,
      baseline=True,
      train=dict(epochs=5.0, batch_size=128, optimizer="adamw"),
      student=dict(model="mlp", kwargs=dict(hidden=(64,))),
      teacher=dict(model="cnn"),
  ))


# ----------------------------------------------------------------- grid parsing


def test_parse_grid_types_order_and_nesting():
  points = sweep.parse_grid(
      ["divergence=kl,js", "temperature.init=1,4", "train.batch_size=32",
       "baseline=false", "student.kwargs.hidden=(32,),(64,64)"], base_config())
  assert len(points) == 8
  # Cartesian product in flag order, the last flag varying fastest.
  assert points[0] == {"divergence": "kl", "temperature.init": 1.0,
                       "train.batch_size": 32, "baseline": False,
                       "student.kwargs.hidden": (32,)}
  assert points[1]["student.kwargs.hidden"] == (64, 64)
  assert [p["temperature.init"] for p in points[:4]] == [1.0, 1.0, 4.0, 4.0]
  assert [p["divergence"] for p in points] == ["kl"] * 4 + ["js"] * 4
  assert type(points[0]["temperature.init"]) is float
  assert type(points[0]["train.batch_size"]) is int


@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("1", True),
                                         ("0", False)])
def test_parse_grid_bools(text, value):
  assert sweep.parse_grid([f"baseline={text}"], base_config()) == [{"baseline": value}]


def test_no_grid_is_the_base_config():
  assert sweep.parse_grid([], base_config()) == [{}]


def test_schedule_shorthand_means_constant():
  config = base_config()
  points = sweep.parse_grid(["temperature=2,8"], config)
  assert points == [{"temperature": 2.0}, {"temperature": 8.0}]
  applied = sweep.apply_point(config, points[1])
  assert applied.temperature.schedule == "constant"
  assert applied.temperature.init == 8.0
  assert applied.temperature.steps == 100  # the rest of the group is kept
  assert config.temperature.schedule == "linear"  # the base config is not touched


@pytest.mark.parametrize("spec, names", [
    ("divergense=kl", ["'divergense'", "divergence", "temperature"]),
    ("temperature.int=1", ["'temperature.int'", "'int'", "init", "schedule"]),
    ("student.kwargs.width=3", ["'width'", "hidden"]),
    ("divergence.beta=1", ["'divergence.beta'", "str"]),
])
def test_unknown_key_names_it_and_the_valid_keys(spec, names):
  with pytest.raises(ValueError) as error:
    sweep.parse_grid([spec], base_config())
  for name in names:
    assert name in str(error.value)


@pytest.mark.parametrize("spec, expected", [
    ("train.batch_size=3.5", "int"),
    ("temperature.init=hot", "float"),
    ("temperature=hot", "float"),
    ("baseline=maybe", "bool"),
    ("student.kwargs.hidden=64", "tuple"),
])
def test_bad_value_names_key_and_type(spec, expected):
  key = spec.partition("=")[0]
  with pytest.raises(ValueError, match=expected) as error:
    sweep.parse_grid([spec], base_config())
  assert key in str(error.value)


@pytest.mark.parametrize("specs, message", [
    (["divergence=kl", "divergence=js"], "twice"),
    (["temperature=1,2", "temperature.init=4"], "overlapping"),
    (["divergence=kl,js,kl"], "kl given twice"),
    (["divergence"], "key=value1"),
    (["divergence="], "key=value1"),
    (["divergence=kl,"], "empty value"),
    (["train=1"], "train.batch_size"),  # a group without `init`: grid its fields
])
def test_malformed_grids(specs, message):
  with pytest.raises(ValueError, match=message):
    sweep.parse_grid(specs, base_config())


def test_seed_in_grid_conflicts_with_seeds():
  points = sweep.parse_grid(["seed=1,2"], base_config())
  with pytest.raises(ValueError, match="seed"):
    sweep.plan_runs(base_config(), points, num_seeds=3)
  runs = sweep.plan_runs(base_config(), points)  # without --seeds it is an ordinary key
  assert [r.seed for r in runs] == [1, 2]


def test_plan_runs_seeds_and_workdirs():
  config = base_config()
  points = sweep.parse_grid(["divergence=kl,js"], config)
  runs = sweep.plan_runs(config, points, num_seeds=2)
  # Seed-major, seeds = config.seed + i.
  assert [(r.slug, r.seed) for r in runs] == [
      ("divergence=kl", 10), ("divergence=js", 10), ("divergence=kl", 11),
      ("divergence=js", 11)]
  assert [r.config.seed for r in runs] == [10, 10, 11, 11]
  assert [r.config.divergence for r in runs] == ["kl", "js", "kl", "js"]
  assert runs[3].workdir == os.path.join("runs", "divergence=js", "seed11")
  assert config.seed == 10 and config.divergence == "kl"


@pytest.mark.parametrize("point, slug", [
    ({"divergence": "js", "temperature.init": 4.0}, "divergence=js,temperature.init=4"),
    ({"alpha": 0.25, "baseline": True}, "alpha=0.25,baseline=true"),
    ({"student.kwargs.hidden": (32, 64)}, "student.kwargs.hidden=32_64"),
    ({"teacher.checkpoint": "a/b c"}, "teacher.checkpoint=a%2Fb%20c"),
    ({}, "base"),
])
def test_slugify(point, slug):
  assert sweep.slugify(point) == slug


def test_long_slugs_are_cut_and_stay_distinct():
  slugs = {sweep.slugify({"experiment": "x" * 300 + str(i)}) for i in range(2)}
  assert len(slugs) == 2 and all(len(s) <= 180 for s in slugs)


# ----------------------------------------------------------------- fake runs

TEMPERATURES = (1.0, 4.0)


def fake_accuracy(config):
  """Student: 0.80 + 0.02·[T = 4] + 0.01·(seed − 10); baseline: 0.75 + 0.002·(seed − 10)."""
  seed_offset = config.seed - 10
  student = 0.80 + 0.02 * (config.temperature.init == 4.0) + 0.01 * seed_offset
  return student, 0.75 + 0.002 * seed_offset


class FakeRun:
  """A run_fn that records its calls and writes results.json like run_experiment."""

  def __init__(self, fail_when=None, interrupt_on_call=None, code=None):
    self.calls = []
    self.fail_when = fail_when
    self.interrupt_on_call = interrupt_on_call
    # The code record its results carry (results.json "code"), as run_experiment's do:
    # by default this process's.
    self.code = code or {"fingerprint": fingerprint.fingerprint(), "commit": None, "dirty": None}

  def __call__(self, config, workdir, *, teacher_dir=None):
    self.calls.append(os.path.relpath(workdir, os.path.dirname(os.path.dirname(
        os.path.dirname(workdir)))))
    self.teacher_dir = teacher_dir
    if len(self.calls) == self.interrupt_on_call:
      with open(os.path.join(workdir, "checkpoint"), "w") as f:
        f.write("half trained")
      raise KeyboardInterrupt  # the user (or a kill) stops the sweep mid-run
    if self.fail_when and self.fail_when(config):
      raise RuntimeError(f"diverged at T={config.temperature.init}")
    student, baseline = fake_accuracy(config)
    results = {
        "experiment": config.experiment, "config": config.to_dict(),
        "teacher": {"params": 100, "test_accuracy": 0.9},
        "student": {"params": 10, "test_accuracy": student,
                    "best_test_accuracy": student + 0.005, "agreement": 0.85,
                    "kl_to_teacher": 0.3, "ece": 0.04},
        "baseline": {"params": 10, "test_accuracy": baseline,
                     "best_test_accuracy": baseline, "agreement": 0.8,
                     "kl_to_teacher": 0.5, "ece": 0.05},
        "code": self.code,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f)
    return results


def _sweep(workdir, run_fn, grid=("temperature=1,4",), seeds=2, config=None, **kwargs):
  config = config or base_config()
  points = sweep.parse_grid(list(grid), config)
  return sweep.run_sweep(config, str(workdir), points, num_seeds=seeds,
                         teacher_dir="/teachers", run_fn=run_fn, **kwargs)


def _statuses(workdir):
  with open(os.path.join(workdir, "sweep.json")) as f:
    return {r["name"]: r["status"] for r in json.load(f)["runs"]}


def check_sweep_outputs(workdir, num_points, num_seeds, temperature_plot=True):
  """Every file the sweep promises exists and is well formed (reusable by real sweeps)."""
  names = ["sweep.json", "summary.csv", "summary.md", "methods_bar.png"]
  names += ["accuracy_vs_temperature.png"] if temperature_plot else []
  for name in names:
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  for name in names:
    if name.endswith(".png"):
      with open(os.path.join(workdir, name), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
      assert os.path.getsize(os.path.join(workdir, name)) > 10_000, name  # not blank
  with open(os.path.join(workdir, "summary.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == num_points
  assert all(int(r["test_accuracy_n"]) == num_seeds for r in rows)
  return rows


def test_smoke_sweep_2_points_2_seeds_writes_all_files(tmp_path, capsys):
  fake = FakeRun()
  record = _sweep(tmp_path, fake)
  assert len(fake.calls) == 4 and fake.teacher_dir == "/teachers"
  assert set(_statuses(tmp_path).values()) == {"done"}
  assert record["grid"] == {"temperature": [1.0, 4.0]} and record["seeds"] == [10, 11]
  rows = check_sweep_outputs(tmp_path, num_points=2, num_seeds=2)

  # T = 4: student [0.82, 0.83]; baseline [0.750, 0.752]; gain d = [0.070, 0.078].
  row = {r["temperature"]: r for r in rows}["4"]
  assert row["point"] == "temperature=4"
  assert float(row["test_accuracy_mean"]) == pytest.approx(0.825)
  assert float(row["test_accuracy_std"]) == pytest.approx(0.01 / math.sqrt(2))
  half = T_975_1 * 0.01 / math.sqrt(2) / math.sqrt(2)
  assert float(row["test_accuracy_ci95_low"]) == pytest.approx(0.825 - half)
  assert float(row["test_accuracy_ci95_high"]) == pytest.approx(0.825 + half)
  assert float(row["best_test_accuracy_mean"]) == pytest.approx(0.830)
  assert float(row["kd_gain_mean"]) == pytest.approx(0.074)
  assert float(row["kd_gain_ci95_high"]) == pytest.approx(
      0.074 + T_975_1 * (0.008 / math.sqrt(2)) / math.sqrt(2))

  with open(tmp_path / "summary.md") as f:
    md = f.read()
  # Sorted by final accuracy: T=4 (82.50) before T=1 (80.50); labelled headline/best.
  assert md.index("| 1 | 4 | **82.50 ± ") < md.index("| 2 | 1 | **80.50 ± ")
  assert "(headline)" in md and "best-step" in md and "KD gain" in md
  assert "+7.40 ± " in md  # the paired gain in percentage points
  assert "- **Teacher** final test accuracy: 90.00%" in md
  assert "Student t" in md and "paired" in md
  assert "![accuracy_vs_temperature.png](accuracy_vs_temperature.png)" in md
  progress = capsys.readouterr().out.splitlines()
  assert any(line.startswith("[sweep 3/4 done, 0 failed, ETA ") for line in progress), progress


def test_resume_after_interrupt_recomputes_nothing_finished(tmp_path):
  interrupted = FakeRun(interrupt_on_call=3)
  with pytest.raises(KeyboardInterrupt):
    _sweep(tmp_path, interrupted)
  before = _statuses(tmp_path)
  assert sorted(before.values()) == ["done", "done", "pending", "running"]
  finished = {name for name, status in before.items() if status == "done"}
  unfinished = set(before) - finished
  mtimes = {n: os.path.getmtime(tmp_path / "runs" / n / "results.json") for n in finished}

  resumed = FakeRun()
  _sweep(tmp_path, resumed)
  assert set(resumed.calls) == {os.path.join("runs", n) for n in unfinished}
  assert len(resumed.calls) == 2
  running = next(n for n, s in before.items() if s == "running")
  # The interrupted run got its own workdir back, checkpoint included, to resume from.
  assert (tmp_path / "runs" / running / "checkpoint").exists()
  assert {n: os.path.getmtime(tmp_path / "runs" / n / "results.json")
          for n in finished} == mtimes
  assert set(_statuses(tmp_path).values()) == {"done"}

  again = FakeRun()
  _sweep(tmp_path, again)
  assert again.calls == []


def test_a_done_run_whose_results_were_deleted_runs_again(tmp_path):
  _sweep(tmp_path, FakeRun())
  name = sorted(_statuses(tmp_path))[0]
  shutil.rmtree(tmp_path / "runs" / name)                  # e.g. to redo it after a fix
  again = FakeRun()
  _sweep(tmp_path, again)
  assert again.calls == [os.path.join("runs", name)]
  assert set(_statuses(tmp_path).values()) == {"done"}


def test_a_failing_point_is_recorded_and_the_others_finish(tmp_path):
  failing = FakeRun(fail_when=lambda config: config.temperature.init == 1.0)
  _sweep(tmp_path, failing)
  assert len(failing.calls) == 4
  with open(tmp_path / "sweep.json") as f:
    runs = {r["name"]: r for r in json.load(f)["runs"]}
  bad = runs["temperature=1/seed10"]
  assert bad["status"] == "failed"
  assert bad["error"] == "RuntimeError: diverged at T=1.0"
  assert "Traceback" in bad["traceback"] and "raise RuntimeError" in bad["traceback"]
  assert runs["temperature=4/seed11"]["status"] == "done"

  rows = {r["temperature"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
  assert rows["1"]["test_accuracy_n"] == "0" and rows["1"]["runs_failed"] == "2"
  assert rows["4"]["test_accuracy_n"] == "2"
  md = (tmp_path / "summary.md").read_text()
  assert "## Failed runs" in md and "diverged at T=1.0" in md
  # The wall-time line counts the two finished runs only (the union: tests/test_llm_table.py).
  assert "Wall time: " in md and "for the 2 finished runs" in md

  retry = FakeRun()  # a re-run retries the failed runs only
  _sweep(tmp_path, retry)
  assert sorted(retry.calls) == [os.path.join("runs", "temperature=1", s)
                                 for s in ("seed10", "seed11")]
  assert set(_statuses(tmp_path).values()) == {"done"}
  with open(tmp_path / "sweep.json") as f:
    assert all("error" not in r for r in json.load(f)["runs"])


def test_single_seed_and_divergence_grid(tmp_path):
  # n = 1 has no interval (NaN: no ±); no temperature axis -> bars only.
  _sweep(tmp_path, FakeRun(), grid=("divergence=kl,js",), seeds=1)
  rows = check_sweep_outputs(tmp_path, num_points=2, num_seeds=1, temperature_plot=False)
  assert not (tmp_path / "accuracy_vs_temperature.png").exists()
  assert rows[0]["test_accuracy_ci95_low"] == "nan"
  table = [line for line in (tmp_path / "summary.md").read_text().splitlines()
           if line.startswith("| 1 |")]
  assert table == ["| 1 | kl | **82.00** | 82.50 | +7.00 | 85.00 | 0.3000 | 4.00 | 1 |"]


def test_run_fn_that_only_returns_results(tmp_path):
  def returns_only(config, workdir, *, teacher_dir=None):
    student, _ = fake_accuracy(config)
    return {"student": {"test_accuracy": student}, "config": config.to_dict()}
  _sweep(tmp_path, returns_only, seeds=1)
  with open(tmp_path / "runs" / "temperature=4" / "seed10" / "results.json") as f:
    assert json.load(f)["student"]["test_accuracy"] == pytest.approx(0.82)


def test_workdir_of_another_base_config_is_refused(tmp_path):
  _sweep(tmp_path, FakeRun(), seeds=1)
  other = base_config()
  other.alpha = 0.9
  with pytest.raises(ValueError, match="(?s)different config.*alpha: 0.5 → 0.9"):
    _sweep(tmp_path, FakeRun(), seeds=1, config=other)
  neutral = base_config()   # a field that changes no result may differ
  neutral.log_every_steps = 7
  _sweep(tmp_path, FakeRun(), seeds=1, config=neutral)
  more = FakeRun()  # the same base config with more seeds extends the sweep
  _sweep(tmp_path, more, seeds=2)
  assert len(more.calls) == 2


def test_cli_summarize_only(tmp_path):
  _sweep(tmp_path, FakeRun())
  os.remove(tmp_path / "summary.md")
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.sweep", f"--workdir={tmp_path}", "--summarize_only"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "82.50 ± " in (tmp_path / "summary.md").read_text()


def test_cli_checks_every_point_before_training(tmp_path):
  config_file = tmp_path / "config.py"
  config_file.write_text("from kd_jax import config\n\n\n"
                         "def get_config():\n  return config.base_config()\n")
  result = subprocess.run(
      [sys.executable, "-m", "kd_jax.sweep", f"--config={config_file}",
       f"--workdir={tmp_path / 'sweep'}", "--grid", "divergence=kl,jss", "--seeds", "2"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith("kd_jax.sweep: error: grid point divergence=jss")
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "sweep" / "runs").exists()  # nothing started


@pytest.mark.usefixtures("idx_source")
def test_real_smoke_sweep_2_points_2_seeds(tmp_path, teacher_dir):
  from kd_jax.run.pipeline import run_experiment
  from tests.conftest import MISSING_FASHION_MNIST, have_fashion_mnist, skip_or_fail, tiny_config
  if not have_fashion_mnist():
    skip_or_fail(MISSING_FASHION_MNIST)
  config = tiny_config(baseline=True)
  points = sweep.parse_grid(["temperature.init=1,4"], config)
  sweep.run_sweep(config, str(tmp_path), points, num_seeds=2, teacher_dir=teacher_dir,
                  run_fn=functools.partial(run_experiment, show_progress=False))
  rows = check_sweep_outputs(str(tmp_path), num_points=2, num_seeds=2)
  for row in rows:   # real accuracies, and a paired gain over the two seeds
    assert 0 <= float(row["test_accuracy_mean"]) <= 1
    assert int(row["kd_gain_n"]) == 2
  # Each point trained at its own temperature; the baseline (no teacher) is shared.
  for temperature in (1, 4):
    for seed in (0, 1):
      run = tmp_path / "runs" / f"temperature.init={temperature}" / f"seed{seed}"
      records = [json.loads(line) for line in open(run / "student" / "metrics.jsonl")]
      assert {r["temperature"] for r in records if "loss" in r} == {float(temperature)}
  assert rows[0]["baseline_test_accuracy_mean"] == rows[1]["baseline_test_accuracy_mean"]
  assert rows[0]["kl_to_teacher_mean"] != rows[1]["kl_to_teacher_mean"]


def test_a_finished_sweep_ends_with_its_counts_table_and_path(tmp_path, capsys):
  _sweep(tmp_path, FakeRun())
  first = capsys.readouterr().out
  again = FakeRun()
  _sweep(tmp_path, again)              # everything done: nothing runs, the same ending
  second = capsys.readouterr().out
  assert again.calls == []
  for out in (first, second):
    assert f"[sweep 4/4 done, 0 failed] {tmp_path}" in out
    assert f"summary: {tmp_path / 'summary.md'}" in out
    assert "| 1 |" in out and "| 2 |" in out      # the ranked table rows
  assert "running" not in second


def test_summary_says_how_rows_are_sorted_and_when_n_is_too_small(tmp_path):
  _sweep(tmp_path, FakeRun(), seeds=2)
  text = (tmp_path / "summary.md").read_text()
  assert "Rows are sorted by final test accuracy, best first" in text
  assert "Too few seeds for a usable interval" in text
  _sweep(tmp_path / "three", FakeRun(), seeds=3)
  assert "Too few seeds" not in (tmp_path / "three" / "summary.md").read_text()


def test_a_run_directory_holding_another_configs_results_is_refused(tmp_path):
  _sweep(tmp_path, FakeRun(), seeds=1)
  # Someone ran another config by hand in one of the sweep's run directories.
  path = tmp_path / "runs" / "temperature=4" / "seed10" / "results.json"
  results = json.loads(path.read_text())
  results["config"]["divergence"] = "tvd"
  path.write_text(json.dumps(results))
  with pytest.raises(ValueError, match='(?s)runs/temperature=4/seed10.*divergence: "tvd" → "kl"'):
    _sweep(tmp_path, FakeRun(), seeds=1)


def test_parse_points_types_names_and_order():
  named = sweep.parse_points(["sft: method=none", "js-hot: divergence=js; temperature=4 ;"],
                             base_config())
  assert named == [("sft", {"method": "none"}),
                   ("js-hot", {"divergence": "js", "temperature": 4.0})]
  assert sweep.parse_points([], base_config()) == []


@pytest.mark.parametrize("spec, message", [
    ("method=none", "expected 'name: key=value"),
    ("a b: method=none", "expected 'name: key=value"),
    ("x: method", "expected key=value"),
    ("x: alpha=0.1; alpha=0.2", "given twice"),
    ("x: alpah=0.1", "alpah"),
    ("x: alpha=high", "cannot read 'high' as float"),
])
def test_malformed_points(spec, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sweep.parse_points([spec], base_config())


def test_point_names_are_unique():
  with pytest.raises(ValueError, match="given twice"):
    sweep.parse_points(["a: alpha=0.1", "a: alpha=0.2"], base_config())


def test_named_points_times_the_grid():
  named = [("a", {"alpha": 0.1}), ("b", {"alpha": 0.2})]
  grid = sweep.parse_grid(["temperature=1,4"], base_config())
  combined = sweep.combine(named, grid)
  assert [n for n, _ in combined] == ["a,temperature=1", "a,temperature=4",
                                      "b,temperature=1", "b,temperature=4"]
  assert combined[3][1] == {"alpha": 0.2, "temperature": 4.0}
  assert sweep.combine(named, [{}]) == named
  assert sweep.combine([], grid) == [(None, p) for p in grid]
  with pytest.raises(ValueError, match="both set alpha"):
    sweep.combine(named, [{"alpha": 0.5}])


def test_a_sweep_of_named_points_summarises_by_name(tmp_path):
  config = base_config()
  names, points = zip(*sweep.parse_points(["cold: temperature=1", "hot: temperature=4"], config))
  record = sweep.run_sweep(config, str(tmp_path), points, num_seeds=2, names=names,
                           teacher_dir="/teachers", run_fn=FakeRun())
  assert record["grid"] == {"name": ["cold", "hot"]}
  assert sorted(_statuses(tmp_path)) == ["cold/seed10", "cold/seed11", "hot/seed10",
                                         "hot/seed11"]
  rows = check_sweep_outputs(tmp_path, num_points=2, num_seeds=2, temperature_plot=False)
  # The fake student: 0.80 + 0.02·[T = 4] + 0.01·(seed − 10), so hot = 0.825, cold = 0.805.
  by_name = {r["name"]: r for r in rows}
  assert float(by_name["hot"]["test_accuracy_mean"]) == pytest.approx(0.825)
  assert float(by_name["cold"]["test_accuracy_mean"]) == pytest.approx(0.805)
  md = (tmp_path / "summary.md").read_text()
  assert md.index("| 1 | hot | **82.50 ± ") < md.index("| 2 | cold | **80.50 ± ")


def test_a_workdirs_sweep_grows_by_named_points_and_runs_only_the_new_ones(tmp_path):
  # A table computed part by part (r1_table.py's PARTS): each invocation runs its points,
  # and the record (so every table over the workdir) keeps the earlier ones.
  config = base_config()

  def run(specs, seeds=2):
    names, points = zip(*sweep.parse_points(specs, config))
    fake = FakeRun()
    record = sweep.run_sweep(config, str(tmp_path), points, num_seeds=seeds, names=names,
                             teacher_dir="/teachers", run_fn=fake)
    return record, sorted(fake.calls)

  run(["cold: temperature=1", "hot: temperature=4"])
  record, calls = run(["warm: temperature=2"])
  assert calls == [os.path.join("runs", "warm", s) for s in ("seed10", "seed11")]
  assert record["grid"] == {"name": ["cold", "hot", "warm"]}
  assert sorted(_statuses(tmp_path)) == [f"{p}/seed{s}" for p in ("cold", "hot", "warm")
                                         for s in (10, 11)]
  assert set(_statuses(tmp_path).values()) == {"done"}
  rows = check_sweep_outputs(tmp_path, num_points=3, num_seeds=2, temperature_plot=False)
  assert {r["name"] for r in rows} == {"cold", "hot", "warm"}
  assert [p["slug"] for p in sweep_dir.read(str(tmp_path)).record["points"]] == [
      "cold", "hot", "warm"]
  # A point planned again is this invocation's (here one seed); the others stay as they were.
  record, calls = run(["hot: temperature=4"], seeds=1)
  assert calls == [] and record["seeds"] == [10, 11]
  assert sorted(_statuses(tmp_path)) == ["cold/seed10", "cold/seed11", "hot/seed10",
                                         "warm/seed10", "warm/seed11"]
  # A point whose run directories were deleted leaves the record (one still finished stays).
  shutil.rmtree(tmp_path / "runs" / "cold")
  shutil.rmtree(tmp_path / "runs" / "warm" / "seed10")
  record, calls = run(["hot: temperature=4"], seeds=1)
  assert record["grid"] == {"name": ["warm", "hot"]}
  assert _statuses(tmp_path) == {"hot/seed10": "done", "warm/seed10": "pending",
                                 "warm/seed11": "done"}


def test_a_grid_point_given_in_another_flag_order_is_the_same_point(tmp_path):
  # A grid's slug (its run directory) follows the flags' order, so the reordered point
  # runs in a directory of its own; the record holds it once, not as a second row.
  config = base_config()

  def run(grid):
    fake = FakeRun()
    record = sweep.run_sweep(config, str(tmp_path), sweep.parse_grid(grid, config),
                             num_seeds=1, teacher_dir="/teachers", run_fn=fake)
    return record, fake.calls

  first, _ = run(["temperature=1,4", "alpha=0.3"])
  cold = first["points"][0]["slug"]
  record, calls = run(["alpha=0.3", "temperature=4"])
  assert len(calls) == 1 and len(record["points"]) == 2 and len(record["runs"]) == 2
  assert [p["values"]["temperature"] for p in record["points"]] == [1.0, 4.0]
  # A submitted or running run keeps its point in the record while another part is run.
  with open(tmp_path / "sweep.json") as f:
    saved = json.load(f)
  for entry in saved["runs"]:
    if entry["point"] == cold:
      entry["status"], entry["where"] = "running", "slurm:17_0"
      shutil.rmtree(tmp_path / entry["workdir"])
  with open(tmp_path / "sweep.json", "w") as f:
    json.dump(saved, f)
  record, calls = run(["alpha=0.3", "temperature=4"])
  assert calls == [] and [p["slug"] for p in record["points"]][0] == cold
  assert record["runs"][1]["where"] == "slurm:17_0"


def test_a_sweep_of_other_fields_replaces_the_workdirs_record(tmp_path):
  _sweep(tmp_path, FakeRun())                                   # a temperature grid
  record = _sweep(tmp_path, FakeRun(), grid=("alpha=0.3",), seeds=1)
  assert record["grid"] == {"alpha": [0.3]}
  assert sorted(_statuses(tmp_path)) == ["alpha=0.3/seed10"]
  # The same field, other values: one grid of both.
  _sweep(tmp_path / "t", FakeRun())
  record = _sweep(tmp_path / "t", FakeRun(), grid=("temperature=2",), seeds=1)
  assert record["grid"] == {"temperature": [1.0, 4.0, 2.0]}


def test_a_sweep_of_a_lower_is_better_headline_sorts_and_shows_nats(tmp_path):
  def run_fn(config, workdir, *, teacher_dir=None):
    del teacher_dir
    # nll 3.0 - 0.5·[T = 4] + 0.01·(seed − 10); baseline 3.2.
    nll = 3.0 - 0.5 * (config.temperature.init == 4.0) + 0.01 * (config.seed - 10)
    report = lambda value: {"params": 10, "nll": value, "best_nll": value - 0.01,
                            "agreement": 0.5, "kl_to_teacher": 0.2,
                            "perplexity": math.exp(value)}
    results = {"experiment": "text", "headline": "nll", "config": config.to_dict(),
               "teacher": {"params": 100, "nll": 2.0}, "student": report(nll),
               "baseline": report(3.2)}
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f)
    return results

  _sweep(tmp_path, run_fn)
  md = (tmp_path / "summary.md").read_text()
  # T = 4 has the lower nll (2.505) and comes first; values are shown as they are, in nats.
  assert md.index("| 1 | 4 | **2.5050 ± ") < md.index("| 2 | 1 | **3.0050 ± ")
  assert "**final nll per token nats** (headline)" in md and "KD gain (nats, paired)" in md
  assert "- **Teacher** final nll per token: 2.0000 nats" in md
  assert "lower is better" in md and "(negative is better)" in md
  assert "-0.6950 ± " in md                   # T = 4: 2.505 − 3.2
  assert (tmp_path / "methods_bar.png").exists()


def test_a_sweep_refuses_to_mix_finished_runs_of_other_code(tmp_path):
  this = {"fingerprint": fingerprint.fingerprint(), "commit": "c0ffee", "dirty": False}
  _sweep(tmp_path, FakeRun(code=this), seeds=1)
  assert "Code: commit c0ffee, fingerprint " + this["fingerprint"] in \
      (tmp_path / "summary.md").read_text()
  record = json.loads((tmp_path / "sweep.json").read_text())
  assert record["code"]["fingerprint"] == this["fingerprint"]
  # One finished run as other code computed it; a third point is still to run.
  path = tmp_path / "runs" / "temperature=4" / "seed10" / "results.json"
  results = json.loads(path.read_text())
  results["code"] = {**this, "fingerprint": "0123456789abcdef"}
  path.write_text(json.dumps(results))
  run = FakeRun(code=this)
  with pytest.raises(WorkdirConflictError, match=r"other code.*fingerprint 0123456789abcdef "
                     r"\(1 run: temperature=4/seed10\)"):
    _sweep(tmp_path, run, grid=("temperature=1,4,8",), seeds=1)
  assert run.calls == []                   # refused before anything ran
  with pytest.raises(ConfigError, match="mixes runs of different code") as e:
    sweep.write_summary(str(tmp_path))
  assert e.value.field == "allow_mixed_code"
  # Told to, it keeps them, runs the new point and tabulates all three, saying so.
  _sweep(tmp_path, run, grid=("temperature=1,4,8",), seeds=1, allow_mixed_code=True)
  assert run.calls == [os.path.join("runs", "temperature=8", "seed10")]
  assert "Code: runs of different code" in (tmp_path / "summary.md").read_text()
