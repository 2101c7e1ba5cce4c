"""The language-model method table (kd_jax/llm_table.py) on hand-made results with known stats."""

import glob
import json
import math
import os

import pytest
from scipy import stats as scipy_stats

from kd_jax import sweep
from kd_jax.reporting import llm_table, sweep_dir
from kd_jax.config import base_config
from kd_jax.core.errors import ConfigError

TEACHER_EM = 0.9
# Exact match per point and seed: sft 0.60/0.62/0.64; good = sft + 0.10/0.12/0.14; same = sft
# + 0.01/-0.01/0.0; bad = sft - 0.20 at every seed.
EXACT = {"sft": (0.60, 0.62, 0.64), "good": (0.70, 0.74, 0.78), "same": (0.61, 0.61, 0.64),
         "bad": (0.40, 0.42, 0.44)}
WARM = "bad"      # started from its trained baseline (student_init="baseline")


def fake_results(config, name):
  seed = config.seed
  em = EXACT[name][seed]
  history = [{"step": s, "exact_match": em * s / 100} for s in (50, 100)]
  student = {"exact_match": em, "pass_at_k": {"1": em - 0.1, "4": em + 0.1}, "params": 1000,
             "train_tokens": 100 * 64 * 55, "steps": 100, "wall_seconds": 10.0 + seed,
             "ood_exact_match": {"steps+1": em / 2, "digits+1": em / 4}, "history": history}
  extra = {}
  if name == WARM:
    config.student_init = "baseline"
    # Its start: 0.05, 0.06, 0.07 below it (seeds 0, 1, 2).
    extra["baseline"] = {"train_tokens": 1000, "wall_seconds": 5.0,
                         "exact_match": em - 0.05 - 0.01 * seed,
                         "pass_at_k": {"1": em - 0.1 + 0.02}}   # pass@1 0.02 above its own
  return {"experiment": "t", "headline": "exact_match", "config": config.to_dict(), **extra,
          "teacher": {"exact_match": TEACHER_EM, "params": 9000, "source": "/t", "steps": 200,
                      "train_seconds": 60.0, "pass_at_k": {"1": 0.8, "4": 0.95},
                      "ood_exact_match": {"steps+1": 0.5, "digits+1": 0.1}},
          "student": student}


def _sweep(tmp_path, names=tuple(EXACT)):
  config = base_config()
  config.seed = 0
  config.dataset.max_len = 56
  named = sweep.parse_points([f"{n}: alpha={0.1 * (i + 1):.1f}" for i, n in enumerate(names)],
                             config)
  by_alpha = {round(p["alpha"], 1): n for n, p in named}

  def run_fn(run_config, workdir, *, teacher_dir=None):
    del workdir, teacher_dir
    return fake_results(run_config, by_alpha[round(run_config.alpha, 1)])

  names_, points = zip(*named)
  sweep.run_sweep(config, str(tmp_path), points, num_seeds=3, names=names_, run_fn=run_fn)
  return str(tmp_path)


def test_rows_follow_the_formulas(tmp_path):
  sweep = sweep_dir.read(_sweep(tmp_path))
  record, by_point = sweep.record, sweep.by_point
  assert [_ for _ in by_point] == list(EXACT) and record["seeds"] == [0, 1, 2]
  row = llm_table.point_row("good", by_point["good"], by_point["sft"], TEACHER_EM)
  t = scipy_stats.t.ppf(0.975, 2)
  assert row["exact_match"].mean == pytest.approx(0.74)
  assert row["exact_match"].half_width == pytest.approx(t * 0.04 / math.sqrt(3))
  assert row["retention"] == pytest.approx(0.74 / 0.9)
  # Paired differences 0.10, 0.12, 0.14: mean 0.12, sd 0.02.
  assert row["difference"].mean == pytest.approx(0.12)
  assert row["difference"].half_width == pytest.approx(t * 0.02 / math.sqrt(3))
  assert row["gap_recovered"] == pytest.approx((0.74 - 0.62) / (0.9 - 0.62))
  assert row["pass_k"] == "4" and row["pass_at_k"].mean == pytest.approx(0.84)
  assert row["ood"]["steps+1"].mean == pytest.approx(0.37)
  assert row["wall_seconds"] == pytest.approx(11.0) and row["train_tokens"] == 352_000
  warm = llm_table.point_row(WARM, by_point[WARM], by_point["sft"], TEACHER_EM)
  assert warm["train_tokens"] == 353_000 and warm["wall_seconds"] == pytest.approx(16.0)
  # Paired against its own start: differences 0.05, 0.06, 0.07, mean 0.06, sd 0.01.
  assert warm["difference_to_start"].mean == pytest.approx(0.06)
  assert warm["difference_to_start"].half_width == pytest.approx(t * 0.01 / math.sqrt(3))
  assert row["difference_to_start"] is None and row["pass1_difference_to_start"] is None
  assert warm["pass1_difference_to_start"].mean == pytest.approx(-0.02)


def test_verdicts_need_an_interval_that_excludes_zero(tmp_path):
  text = llm_table.write(_sweep(tmp_path))
  assert "- Beat `sft` (interval excludes 0): `good`." in text
  assert "- Worse than `sft`: `bad`." in text
  assert "- No difference shown: `same`." in text
  assert "- `bad`: +6.0 ± 2.5 pp (**beats its start**) | -2.0 ± 0.0 pp (worse than its start)" in text
  assert "| `sft` | 1,000 | 62.0 ± " in text and "(reference)" in text
  assert "| teacher | 9,000 | 90.0 | 95.0 | 100 | 100 |" in text
  # 100 steps · 64 rows · 55 positions; the teacher: 200 steps · 128 rows · 55.
  assert "| 352k |" in text and "| 1.41M |" in text
  for name in ("llm_table.md", "exact_match_vs_tokens.png"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 1000
  assert not os.path.exists(os.path.join(tmp_path, "transfer_vs_temperature.png"))


def test_an_unknown_reference_names_the_points(tmp_path):
  with pytest.raises(ConfigError, match="its points: sft, good"):
    llm_table.write(_sweep(tmp_path, names=("sft", "good")), reference="base")


def test_the_topk_fidelity_table_follows_the_formulas(tmp_path):
  from kd_jax.reporting import topk_fidelity

  def run_fn(config, workdir, *, teacher_dir=None):
    del workdir, teacher_dir
    k, seed = config.topk.k, config.seed
    # nll: 3.0 with full logits, + 1/k (+ 0.1 for renormalize) with a cache; + 0.01·seed.
    nll = 3.0 + (1.0 / k + 0.1 * (config.topk.mode == "renormalize") if k else 0.0) + 0.01 * seed
    results = {"experiment": "fidelity", "headline": "nll", "config": config.to_dict(),
               "teacher": {"nll": 2.0, "source": "/t"},
               "student": {"nll": nll, "kl_to_teacher": nll - 2.0},
               "baseline": {"nll": 3.5}}
    if k:
      results["topk"] = {"bytes_per_token": 8 * k + 4}
    return results

  config = base_config()
  config.seed = 0
  config.dataset.vocab_size = 100
  specs = ["full: topk.k=0", "tail-k2: topk.k=2; topk.mode=tail",
           "tail-k4: topk.k=4; topk.mode=tail", "renormalize-k4: topk.k=4; topk.mode=renormalize"]
  names, points = zip(*sweep.parse_points(specs, config))
  sweep.run_sweep(config, str(tmp_path), points, num_seeds=3, names=names, run_fn=run_fn)
  by_point = sweep_dir.read(str(tmp_path)).by_point
  table = {r["name"]: r for r in topk_fidelity.rows(by_point)}
  assert table["full"]["bytes_per_token"] == 400 and table["tail-k4"]["bytes_per_token"] == 36
  assert table["tail-k2"]["nll"].mean == pytest.approx(3.51)
  assert table["renormalize-k4"]["nll_vs_full"].mean == pytest.approx(0.35)
  assert table["renormalize-k4"]["nll_vs_full"].half_width == pytest.approx(0.0, abs=1e-9)
  assert table["tail-k4"]["baseline_nll"].mean == pytest.approx(3.5)
  text = topk_fidelity.write(str(tmp_path))
  assert "| tail | 2 | 20 | 3.5100 ± " in text and "| full | all (V) | 400 |" in text
  assert os.path.getsize(tmp_path / "topk_fidelity.png") > 10_000


def test_policy_gradient_curves_average_the_seeds_logs(tmp_path):
  import json

  import numpy as np
  logs = []
  for seed in range(2):
    log_dir = tmp_path / f"logs{seed}"
    log_dir.mkdir()
    with open(log_dir / "metrics.jsonl", "w") as f:
      for step in range(0, 100, 10):
        f.write(json.dumps({"step": step, "loss": 0.0, "verifier_reward": step / 100 + seed,
                            "teacher_reward": -1.0, "kl_to_reference": 0.01 * seed}) + "\n")
      f.write(json.dumps({"step": 100, "epoch": 1.0, "exact_match": 0.5}) + "\n")
    logs.append({"student": {"logs": str(log_dir)}})
  steps, values = llm_table._training_curve(logs, "verifier_reward", smooth=2)
  # Seed mean: step/100 + 0.5; moving average over two logged steps: (s − 5)/100 + 0.5.
  np.testing.assert_allclose(steps, np.arange(10, 100, 10))
  np.testing.assert_allclose(values, (steps - 5) / 100 + 0.5)
  assert llm_table.plot_policy_gradient_curves({"grpo": logs}, str(tmp_path / "pg.png"), "t")
  assert os.path.getsize(tmp_path / "pg.png") > 10_000
  no_rewards = [{"student": {"logs": str(tmp_path / "missing")}}]
  assert not llm_table.plot_policy_gradient_curves({"sft": no_rewards}, str(tmp_path / "x.png"),
                                                   "t")
  assert not os.path.exists(tmp_path / "x.png")


def test_displacement_reports_the_first_and_last_logged_log_probs(tmp_path):
  import json
  def runs(name, chosen, rejected):
    out = []
    for seed in range(2):
      log_dir = tmp_path / f"{name}{seed}"
      log_dir.mkdir()
      with open(log_dir / "metrics.jsonl", "w") as f:
        for i, step in enumerate(range(0, 200, 10)):     # 20 logged steps
          f.write(json.dumps({"step": step, "chosen_log_prob": chosen(i) + seed,
                              "rejected_log_prob": rejected(i) - seed,
                              "reward_margin": 0.1}) + "\n")
      out.append({"student": {"logs": str(log_dir)}})
    return out
  by_point = {
      # Both fall: chosen −2 − i/10, rejected −3 − i/5 (plus ±seed, which averages out).
      "dpo": runs("dpo", lambda i: -2 - i / 10, lambda i: -3 - i / 5),
      "dpo-nll": runs("nll", lambda i: -2 + i / 20, lambda i: -3 - i / 5),
      "dpkd": runs("dpkd", lambda i: -2 - i / 10, lambda i: -3 + i / 5),
      "sft": [{"student": {"logs": str(tmp_path / "none")}}],
  }
  lines = llm_table.displacement(by_point)
  # The first five logged steps, i = 0..4: mean i = 2; the last five, i = 15..19: 17;
  # seeds 0 and 1 add 0.5 (chosen) and −0.5 (rejected) on average.
  assert "- `dpo`: chosen -1.70 → -3.20, rejected -3.90 → -6.90 (both fell: likelihood " \
         "displacement)." in lines
  assert "- `dpo-nll`: chosen -1.40 → -0.65, rejected -3.90 → -6.90 (the chosen did not " \
         "fall)." in lines
  assert "- `dpkd`: chosen -1.70 → -3.20, rejected -3.10 → -0.10 (the chosen fell, the " \
         "rejected did not)." in lines
  assert not any("`sft`" in line for line in lines)
  assert llm_table.plot_preference_curves(by_point, str(tmp_path / "p.png"), "t")
  assert llm_table.displacement({"sft": by_point["sft"]}) == []


def test_the_table_names_its_code_and_refuses_runs_of_different_code(tmp_path):
  workdir = _sweep(tmp_path, names=("sft", "good"))
  paths = sorted(glob.glob(os.path.join(workdir, "runs", "*", "seed*", "results.json")))
  for i, path in enumerate(paths):          # every run of one code, but the last
    with open(path) as f:
      results = json.load(f)
    results["code"] = {"fingerprint": "f" * 16 if i < len(paths) - 1 else "0" * 16,
                       "commit": "abc123", "dirty": False}
    with open(path, "w") as f:
      json.dump(results, f)
  with pytest.raises(ConfigError, match=r"mixes runs of different code: fingerprint f{16} "
                     r"\(5 runs: .*fingerprint 0{16} \(1 run: ") as e:
    llm_table.write(workdir)
  assert e.value.field == "allow_mixed_code"
  assert "Code: runs of different code" in llm_table.write(workdir, allow_mixed_code=True)
  with open(paths[-1]) as f:
    results = json.load(f)
  results["code"]["fingerprint"] = "f" * 16
  with open(paths[-1], "w") as f:
    json.dump(results, f)
  assert "Code: commit abc123, fingerprint " + "f" * 16 in llm_table.write(workdir)


def test_the_wall_time_is_the_union_of_the_finished_runs_intervals():
  def run(name, start=None, end=None, finished=True):
    entry = {"name": name}
    entry.update({} if start is None else {"started_at": start, "finished_at": end})
    return entry, ({"student": {}} if finished else None)
  sweep = sweep_dir.SweepDir({}, {}, [
      run("a", 100.0, 110.0), run("b", 105.0, 130.0),    # side by side: 100..130, 30 s
      run("c", 200.0, 210.0),                             # after a gap: 10 s
      run("d", 300.0, 400.0, finished=False),             # not finished: not counted
      run("e")])                                          # no times recorded: not counted
  assert sweep_dir.wall_seconds(sweep) == pytest.approx(40.0)
  line = sweep_dir.wall_line(sweep)
  assert line.startswith("Wall time: 40 s for the 3 finished runs that recorded their times")
  assert line.endswith("; 1 more recorded none.")
  long = sweep_dir.SweepDir({}, {}, [run("a", 0.0, 5400.0), run("b", 3600.0, 9000.0)])
  assert sweep_dir.wall_line(long).startswith("Wall time: 2.5 h for the 2 finished runs")
  assert sweep_dir.wall_line(long).endswith("its resumption).")
  assert sweep_dir.wall_line(sweep_dir.SweepDir({}, {}, [run("e")])) == ""


def test_a_tables_footer_is_its_code_line_then_its_wall_line_when_runs_were_timed():
  code = {"fingerprint": "f" * 16, "commit": "abc123", "dirty": False}
  timed = ({"name": "a", "started_at": 0.0, "finished_at": 30.0}, {"code": code})
  untimed = ({"name": "b"}, {"code": code})
  footer = sweep_dir.footer(sweep_dir.SweepDir({}, {}, [timed, untimed]))
  assert footer.splitlines() == [
      f"Code: commit abc123, fingerprint {'f' * 16} (kd_jax.core.fingerprint).",
      sweep_dir.wall_line(sweep_dir.SweepDir({}, {}, [timed, untimed]))]
  assert footer.splitlines()[1].startswith("Wall time: 30 s for the 1 finished run that")
  assert sweep_dir.footer(sweep_dir.SweepDir({}, {}, [untimed])) == (
      f"Code: commit abc123, fingerprint {'f' * 16} (kd_jax.core.fingerprint).\n")


def test_the_calibration_gives_the_plateau_the_spread_and_the_detectable_difference(tmp_path):
  import copy
  by_point = sweep_dir.read(_sweep(tmp_path)).by_point
  good = copy.deepcopy(by_point["good"])
  for r, late in zip(good, (0.01, 0.02, 0.06)):     # evaluations at 80% and 100% of 100 steps
    em = r["student"]["exact_match"]
    r["student"]["history"] = [{"step": 50, "exact_match": 0.1},
                               {"step": 80, "exact_match": em - late},
                               {"step": 100, "exact_match": em}]
  row = llm_table.point_row("good", good, by_point["sft"], TEACHER_EM)
  assert row["late_change"] == pytest.approx(0.03)
  # good − sft = 0.10, 0.12, 0.14 over the seeds: sd 0.02, n = 3.
  quantiles = scipy_stats.t.ppf(0.975, 2) + scipy_stats.t.ppf(0.8, 2)
  assert row["detectable"] == pytest.approx(quantiles * 0.02 / math.sqrt(3))
  # Without two evaluations in the last 20% of the steps there is no plateau check.
  assert llm_table.point_row("sft", by_point["sft"], by_point["sft"], TEACHER_EM)[
      "late_change"] is None
  text = llm_table.markdown([row], {"exact_match": TEACHER_EM, "params": 9000}, reference="sft",
                            experiment="t", seeds=[0, 1, 2])
  assert f"| `good` | 4.0 | +3.0 | {quantiles * 2 / math.sqrt(3):.1f} | 3 |" in text
