"""Tests for kd_jax.reporting.stats: t intervals and paired differences against scipy and closed form."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from kd_jax.reporting import stats

T_975_2 = 4.302652729749464  # t_{0.975} with 2 degrees of freedom (tables).


def test_mean_ci_hand_case():
  # [1, 2, 3]: mean 2, s^2 = (1 + 0 + 1) / 2 = 1, half width t_{0.975,2} * 1 / sqrt(3).
  mean, std, half, n = stats.mean_ci([1.0, 2.0, 3.0])
  assert mean == pytest.approx(2.0, abs=1e-12)
  assert std == pytest.approx(1.0, abs=1e-12)
  assert half == pytest.approx(T_975_2 / math.sqrt(3), rel=1e-12)
  assert n == 3


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
@pytest.mark.parametrize("values", [
    [0.871, 0.868, 0.874],
    [0.5, 0.25, 0.75, 1.0, 0.0],
    [12.0, -3.0],
    [0.9012, 0.9034, 0.8991, 0.9050, 0.9003, 0.9021, 0.8987],
])
def test_mean_ci_matches_scipy_t_interval(values, confidence):
  x = np.asarray(values, np.float64)
  low, high = scipy_stats.t.interval(
      confidence, len(x) - 1, loc=x.mean(), scale=scipy_stats.sem(x))
  interval = stats.mean_ci(values, confidence)
  assert interval.low == pytest.approx(low, rel=1e-10)
  assert interval.high == pytest.approx(high, rel=1e-10)
  assert interval.std == pytest.approx(np.std(x, ddof=1), rel=1e-12)
  assert interval.n == len(values)


def test_mean_ci_single_value_has_no_interval():
  interval = stats.mean_ci([0.9])
  assert interval.mean == 0.9 and interval.n == 1
  assert math.isnan(interval.std) and math.isnan(interval.half_width)
  assert math.isnan(interval.low) and math.isnan(interval.high)


def test_mean_ci_constant_sample_has_zero_width():
  assert stats.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.0, 0.0, 3)


@pytest.mark.parametrize("values, confidence", [([], 0.95), ([1.0, 2.0], 1.0),
                                                ([1.0, 2.0], 0.0), ([[1.0, 2.0]], 0.95)])
def test_mean_ci_rejects_bad_input(values, confidence):
  with pytest.raises(ValueError):
    stats.mean_ci(values, confidence)


def test_paired_difference_hand_case():
  # d = [0.02, 0.01, 0.05] = [2, 1, 5] / 100; mean 8/3 / 100; deviations [-2, -5, 7]/3
  # -> s^2 = (4 + 25 + 49) / 9 / 2 = 13/3 (in 1e-4 units).
  a = [0.90, 0.80, 0.85]
  b = [0.88, 0.79, 0.80]
  mean, std, half, n = stats.paired_difference(a, b)
  assert mean == pytest.approx(8 / 3 / 100, rel=1e-9)
  assert std == pytest.approx(math.sqrt(13 / 3) / 100, rel=1e-9)
  assert half == pytest.approx(T_975_2 * math.sqrt(13 / 3) / 100 / math.sqrt(3), rel=1e-9)
  assert n == 3


def test_paired_difference_agrees_with_paired_t_test():
  a = [0.912, 0.905, 0.921, 0.899, 0.915]
  b = [0.901, 0.899, 0.908, 0.897, 0.903]
  test = scipy_stats.ttest_rel(a, b)
  interval = stats.paired_difference(a, b)
  t_crit = scipy_stats.t.ppf(0.975, len(a) - 1)
  # t = mean / (s / sqrt(n)), so the half width t_crit * s / sqrt(n) = t_crit * mean / t.
  assert interval.half_width == pytest.approx(t_crit * interval.mean / test.statistic,
                                              rel=1e-10)
  # A 95% CI excludes 0 exactly when the two-sided paired test rejects at 5%.
  assert (interval.low > 0) == (test.pvalue < 0.05)


def test_paired_difference_cancels_shared_seed_variance():
  # The baseline moves with the seed exactly as the student does: the paired gain is
  # exactly 0.01 with no spread, although each model alone varies by +-5 points.
  seed_effect = np.array([-0.05, 0.0, 0.05])
  interval = stats.paired_difference(0.86 + seed_effect, 0.85 + seed_effect)
  assert interval.mean == pytest.approx(0.01, abs=1e-12)
  assert interval.half_width == pytest.approx(0.0, abs=1e-12)


def test_paired_difference_needs_equal_lengths():
  with pytest.raises(ValueError, match="same seeds"):
    stats.paired_difference([0.9, 0.8], [0.9])


def _results(seed, student, baseline=None, **student_extra):
  r = {"config": {"seed": seed}, "teacher": {"test_accuracy": 0.95},
       "student": {"test_accuracy": student, "best_test_accuracy": student + 0.01,
                   "agreement": 0.9, "kl_to_teacher": 0.2, "ece": 0.03, **student_extra}}
  if baseline is not None:
    r["baseline"] = {"test_accuracy": baseline}
  return r


def test_aggregate_point_columns():
  results = [_results(0, 0.80, 0.70), _results(1, 0.82, 0.71), _results(2, 0.84)]
  row = stats.aggregate_point(results)
  assert row["test_accuracy_mean"] == pytest.approx(0.82)
  assert row["test_accuracy_n"] == 3
  # s = 0.02 for [0.80, 0.82, 0.84] -> half width t_{0.975,2} * 0.02 / sqrt(3).
  assert row["test_accuracy_ci95_high"] - row["test_accuracy_mean"] == pytest.approx(
      T_975_2 * 0.02 / math.sqrt(3))
  assert row["best_test_accuracy_mean"] == pytest.approx(0.83)
  # Seed 2 has no baseline: the gain is paired over seeds 0 and 1 only, d = [0.10, 0.11].
  assert row["kd_gain_n"] == 2
  assert row["kd_gain_mean"] == pytest.approx(0.105)
  assert row["kd_gain_std"] == pytest.approx(0.01 / math.sqrt(2))
  assert row["baseline_test_accuracy_mean"] == pytest.approx(0.705)
  assert set(stats.csv_columns([])) >= set(row)


def test_aggregate_point_omitted_class_columns():
  def omitted(accuracy, corrected, overall=0.9):
    return {"classes": [9], "accuracy": accuracy, "bias_shift": 2.0,
            "corrected_accuracy": corrected, "corrected_test_accuracy": overall}
  results = [_results(0, 0.87, 0.80, omitted_classes=omitted(0.70, 0.90)),
             _results(1, 0.86, 0.79, omitted_classes=omitted(0.74, 0.94))]
  for r in results:
    r["baseline"]["omitted_classes"] = omitted(0.0, 0.0, 0.8)
  row = stats.aggregate_point(results)
  assert row["omitted_student_mean"] == pytest.approx(0.72)
  assert row["omitted_student_corrected_mean"] == pytest.approx(0.92)
  # [0.90, 0.94]: s = 0.02 * sqrt(2), half width t_{0.975,1} * s / sqrt(2) = 12.7062 * 0.02.
  assert row["omitted_student_corrected_ci95_high"] - 0.92 == pytest.approx(12.706204736 * 0.02)
  assert row["omitted_baseline_mean"] == 0.0 and row["omitted_baseline_n"] == 2
  assert stats.aggregate_point([_results(0, 0.8)])["omitted_student_n"] == 0


def test_aggregate_point_without_results_or_baselines():
  empty = stats.aggregate_point([])
  assert empty["test_accuracy_n"] == 0 and math.isnan(empty["test_accuracy_mean"])
  no_baseline = stats.aggregate_point([_results(0, 0.8), _results(1, 0.9)])
  assert no_baseline["kd_gain_n"] == 0 and math.isnan(no_baseline["kd_gain_mean"])


def test_baseline_over_seeds_averages_repeats_of_a_seed_first():
  results = [_results(0, 0.8, 0.70), _results(0, 0.9, 0.72), _results(1, 0.8, 0.74)]
  interval = stats.baseline_over_seeds(results)
  # Per seed: [0.71, 0.74] -> mean 0.725, n = 2 (not 3).
  assert interval.n == 2
  assert interval.mean == pytest.approx(0.725)
  assert stats.baseline_over_seeds([_results(0, 0.8)]) is None


def test_baseline_over_seeds_pools_only_one_baseline_per_seed():
  # A grid over the baseline's own budget (train.steps, baseline_steps) trains a different
  # baseline per point: a pooled "baseline" line would average, e.g., 20 and 80 epochs.
  def run(seed, baseline, logs):
    r = _results(seed, 0.8, baseline)
    r["baseline"]["logs"] = f"/cache/baselines/{logs}"
    return r
  shared = [run(0, 0.70, "mlp-a0"), run(0, 0.70, "mlp-a0"), run(1, 0.74, "mlp-a1")]
  assert stats.baseline_over_seeds(shared).mean == pytest.approx(0.72)
  assert stats.baseline_over_seeds(shared + [run(1, 0.80, "mlp-b1")]) is None


def test_sort_rows_best_final_accuracy_first_missing_last():
  rows = [{"test_accuracy_mean": v} for v in (0.8, math.nan, 0.9, 0.85)]
  assert [r["test_accuracy_mean"] for r in stats.sort_rows(rows)][:3] == [0.9, 0.85, 0.8]
  assert math.isnan(stats.sort_rows(rows)[-1]["test_accuracy_mean"])


@pytest.mark.parametrize("value, text", [(4.0, "4"), (0.5, "0.5"), (True, "true"),
                                         (8, "8"), ("js", "js")])
def test_format_value(value, text):
  assert stats.format_value(value) == text


def test_a_language_model_sweep_is_summarised_by_exact_match():
  def result(seed, student, baseline):
    return {"headline": "exact_match", "config": {"seed": seed},
            "teacher": {"exact_match": 0.9},
            "student": {"exact_match": student, "best_exact_match": student, "nll": 0.2,
                        "agreement": 0.8, "kl_to_teacher": 0.1},
            "baseline": {"exact_match": baseline}}
  better = stats.aggregate_point([result(0, 0.6, 0.4), result(1, 0.7, 0.5)])
  worse = stats.aggregate_point([result(0, 0.5, 0.4), result(1, 0.45, 0.5)])
  assert better["headline"] == "exact_match"
  assert better["exact_match_mean"] == pytest.approx(0.65)
  assert better["kd_gain_mean"] == pytest.approx(0.2)           # paired: (0.2 + 0.2) / 2
  assert better["baseline_exact_match_mean"] == pytest.approx(0.45)
  rows = [{"point": {"t": 1}, **worse, "runs_failed": 0},
          {"point": {"t": 2}, **better, "runs_failed": 0}]
  assert [r["point"]["t"] for r in stats.sort_rows(rows)] == [2, 1]
  text = stats.markdown_summary(rows, keys=["t"], experiment="x", grid={"t": [1, 2]},
                                seeds=[0, 1], status_counts={"done": 4},
                                teacher_accuracies=[0.9], baseline=None, failures=[], plots=[],
                                headline="exact_match")
  assert "**final exact match %** (headline)" in text and "nll per token" in text
  assert "Rows are sorted by final exact match" in text
  assert "| 1 | 2 | **65.00 ±" in text
  with pytest.raises(ValueError, match="different headline metrics"):
    stats.headline_of([result(0, 0.5, 0.4), {"student": {"test_accuracy": 0.9}}])
