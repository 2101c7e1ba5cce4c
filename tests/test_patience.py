"""The patience table and plot (kd_jax/reporting/patience.py) on hand-made runs with known
statistics: two budgets, the student alone and two distilled families."""

import math
import os
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from kd_jax import sweep
from kd_jax.config import base_config
from kd_jax.core.errors import ConfigError
from kd_jax.reporting import patience

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = 0.90
# Test accuracy per (family, epochs) and seed 0, 1, 2.
ACCURACY = {
    ("scratch", 1.0): (0.80, 0.82, 0.84),
    ("kd", 1.0): (0.85, 0.86, 0.87),           # paired +0.05, +0.04, +0.03
    ("scratch", 4.0): (0.82, 0.84, 0.86),
    ("kd", 4.0): (0.88, 0.88, 0.88),           # +0.06, +0.04, +0.02
    ("kd2", 4.0): (0.870, 0.891, 0.912),       # +0.050, +0.051, +0.052
}
METHOD = {"scratch": "none", "kd": "kd", "kd2": "dkd"}
# Each run's accuracy rises by LATE[seed] from its evaluation at step 80 of 100 to its last
# (the plateau check over the last 20% of the steps): +3 points on the mean over seeds.
LATE = (0.01, 0.02, 0.06)
T = scipy_stats.t.ppf(0.975, 2)


def _point(family, epochs):
  return f"{family}-{int(epochs)}x: method={METHOD[family]}; train.epochs={epochs}"


def _sweep(directory, cells=tuple(ACCURACY), teacher=TEACHER, fingerprint=None):
  config = base_config()
  config.seed = 0
  named = sweep.parse_points([_point(*cell) for cell in cells], config)
  family = {method: name for name, method in METHOD.items()}

  def run_fn(run_config, workdir, *, teacher_dir=None):
    del workdir, teacher_dir
    accuracy = ACCURACY[(family[run_config.method], run_config.train.epochs)][run_config.seed]
    return {"experiment": "fm", "headline": "test_accuracy", "config": run_config.to_dict(),
            "teacher": {"test_accuracy": teacher},
            "student": {"test_accuracy": accuracy, "steps": 100, "history": [
                {"step": 40, "test_accuracy": accuracy - 0.2},
                {"step": 80, "test_accuracy": accuracy - LATE[run_config.seed]},
                {"step": 100, "test_accuracy": accuracy}]},
            **({"code": {"fingerprint": fingerprint, "commit": "c"}} if fingerprint else {})}

  names, points = zip(*named)
  sweep.run_sweep(config, str(directory), points, num_seeds=3, names=names, run_fn=run_fn)
  return str(directory)


def test_rows_follow_the_formulas(tmp_path):
  by_point = patience.read([_sweep(tmp_path)]).by_point
  table, teacher, reference = patience.rows(by_point)
  assert teacher == TEACHER and reference == "scratch"
  rows = {(row["family"], row["epochs"]): row for row in table}
  assert rows[("scratch", 1.0)]["gap"] is None and rows[("scratch", 1.0)]["difference"] is None
  assert rows[("kd", 1.0)]["accuracy"].mean == pytest.approx(0.86)
  # Paired differences 0.05, 0.04, 0.03: mean 0.04, sd 0.01; the alone mean 0.82.
  one = rows[("kd", 1.0)]
  assert one["difference"].mean == pytest.approx(0.04)
  assert one["difference"].half_width == pytest.approx(T * 0.01 / math.sqrt(3))
  assert one["gap"].mean == pytest.approx(0.04 / (0.90 - 0.82))
  assert one["gap"].half_width == pytest.approx(T * 0.01 / math.sqrt(3) / 0.08)
  # At 4 epochs: differences 0.06, 0.04, 0.02 (sd 0.02) against an alone mean of 0.84.
  four = rows[("kd", 4.0)]
  assert four["gap"].mean == pytest.approx(0.04 / 0.06)
  assert four["difference"].half_width == pytest.approx(T * 0.02 / math.sqrt(3))
  assert all(row["late_change"] == pytest.approx(0.03) for row in table)
  # The reference first, then the families by name, each by epochs.
  assert [(row["family"], row["epochs"]) for row in table] == [
      ("scratch", 1.0), ("scratch", 4.0), ("kd", 1.0), ("kd", 4.0), ("kd2", 4.0)]


def test_the_verdict_needs_half_the_gap_and_an_interval_above_zero(tmp_path):
  text = patience.write(_sweep(tmp_path))
  # kd at 4 epochs: 66.7% of the gap, but its interval (+4.00 ± 4.97) reaches below 0.
  assert "- `kd` at its longest compared budget (4 epochs): 66.7% of the gap" in text
  assert "+4.00 ± 4.97 points" in text
  kd_line = next(line for line in text.splitlines() if line.startswith("- `kd` "))
  assert kd_line.endswith("is not met.")
  kd2_line = next(line for line in text.splitlines() if line.startswith("- `kd2` "))
  assert "85.0% of the gap recovered (interval 85.0 ± 4.1)" in kd2_line
  assert kd2_line.endswith("is met.")
  assert "| `kd` | 1 | 86.00 ± 2.48 | +3.00 | +4.00 ± 2.48 | 50.0 ± 31.1 | 3 |" in text
  assert open(tmp_path / patience.TABLE_FILE).read() == text
  assert os.path.getsize(tmp_path / patience.PLOT_FILE) > 10_000


def test_budgets_from_several_sweeps_make_one_table(tmp_path):
  first = _sweep(tmp_path / "a", cells=[("scratch", 1.0), ("kd", 1.0)], fingerprint="f1")
  second = _sweep(tmp_path / "b", cells=[("scratch", 4.0), ("kd", 4.0)], fingerprint="f1")
  text = patience.write([first, second])
  assert "| `kd` | 4 |" in text and "| `kd` | 1 |" in text
  assert os.path.exists(os.path.join(first, patience.PLOT_FILE))
  other = _sweep(tmp_path / "c", cells=[("kd2", 4.0)], fingerprint="f2")
  with pytest.raises(ConfigError, match="different code"):
    patience.read([first, other])
  assert patience.read([first, other], allow_mixed_code=True).by_point.keys() == {
      "scratch-1x", "kd-1x", "kd2-4x"}
  again = _sweep(tmp_path / "d", cells=[("kd", 1.0)], fingerprint="f1")
  with pytest.raises(ConfigError, match="'kd-1x' is in more than one"):
    patience.read([first, again])


def test_a_point_without_a_budget_in_its_name_is_refused():
  assert patience.family_of("kd-consistent-16x") == "kd-consistent"
  with pytest.raises(ConfigError, match=r"'kd-16' is not named <family>-<N>x"):
    patience.family_of("kd-16")


def test_the_reference_must_be_one_family(tmp_path):
  by_point = patience.read([_sweep(tmp_path)]).by_point
  with pytest.raises(ConfigError,
                     match="--reference=nope: no such family; valid: kd, kd2, scratch"):
    patience.rows(by_point, "nope")
  table, _, reference = patience.rows(by_point, "kd")
  assert reference == "kd" and next(r for r in table if r["family"] == "scratch")["gap"] is not None
  no_alone = {point: runs for point, runs in by_point.items() if not point.startswith("scratch")}
  with pytest.raises(ConfigError, match="no family trained the student alone"):
    patience.rows(no_alone)


def test_runs_taught_by_different_teachers_are_refused(tmp_path):
  by_point = patience.read([_sweep(tmp_path / "a", cells=[("kd", 1.0)])]).by_point
  other = patience.read([_sweep(tmp_path / "b", cells=[("kd2", 4.0)], teacher=0.8)]).by_point
  with pytest.raises(ConfigError, match=r"teachers of different test accuracy \(\[0.8, 0.9\]\)"):
    patience.rows({**by_point, **other})


def test_the_student_alone_reads_no_teacher_so_the_one_it_names_is_not_compared(tmp_path):
  taught = patience.read([_sweep(tmp_path / "a", cells=[("kd", 1.0)])]).by_point
  alone = patience.read([_sweep(tmp_path / "b", cells=[("scratch", 1.0)], teacher=0.8)]).by_point
  table, teacher, reference = patience.rows({**taught, **alone})
  assert teacher == TEACHER and reference == "scratch"
  kd = next(row for row in table if row["family"] == "kd")
  # The gap's top is the kd runs' teacher, not the 0.8 the alone runs name:
  # Δ = +0.04 on the mean, over 0.90 − 0.82.
  assert kd["gap"].mean == pytest.approx(0.04 / 0.08)


def test_the_command_line_names_the_valid_families(tmp_path):
  workdir = _sweep(tmp_path, cells=[("scratch", 1.0), ("kd", 1.0)])
  out = subprocess.run([sys.executable, "-m", "kd_jax.patience_table", f"--workdir={workdir}",
                        "--reference=nope"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
  assert out.returncode == 2
  assert "--reference=nope: no such family; valid: kd, scratch" in out.stderr
  assert not os.path.exists(os.path.join(workdir, patience.TABLE_FILE))


def test_no_gap_is_recovered_where_the_student_alone_reaches_the_teacher(tmp_path):
  by_point = patience.read([_sweep(tmp_path, teacher=0.83)]).by_point
  rows = {(r["family"], r["epochs"]): r for r in patience.rows(by_point)[0]}
  assert rows[("kd", 1.0)]["gap"] is not None          # alone 0.82 < 0.83
  assert rows[("kd", 4.0)]["gap"] is None              # alone 0.84 ≥ 0.83
  assert rows[("kd", 4.0)]["difference"].mean == pytest.approx(0.04)
  text = patience.write(str(tmp_path))
  assert "- `kd2`: no budget has `scratch` runs of the same seeds below the teacher" in text
