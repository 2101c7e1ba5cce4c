"""The reasoning task family (kd_jax/tasks/reasoning.py): what each phase trains on, and its checks."""

import json
import math
import os

import jax
import numpy as np
import pytest

from kd_jax.core import parallel
from kd_jax.core.errors import ConfigError
from kd_jax.data import arithmetic
from kd_jax.run import teachers, validation
from kd_jax.tasks import reasoning
from tests import multidevice
from tests.test_experiments import ROOT, _cli, assert_refused_field, cli_load, first_table

SFT, SEQKD = "experiments/reasoning/sft.py", "experiments/reasoning/seqkd.py"


def _prompt_lengths(data):
  """BOS + prompt: the first response position is the first target the loss counts."""
  return np.argmax(np.asarray(data.loss_mask), axis=1) + 1


def _texts(data, tokenizer=arithmetic.CharTokenizer()):
  """``[(prompt, response)]`` of a split's token rows."""
  tokens = np.asarray(data.tokens)
  return [(tokenizer.decode(row[1:p]), tokenizer.decode(row[p:])) for row, p in
          zip(tokens, _prompt_lengths(data))]


@pytest.mark.parametrize("spec", [SFT, SFT + ":gold", SFT + ":smoke", SEQKD, SEQKD + ":smoke"])
def test_reasoning_configs_are_valid_and_name_their_command(spec):
  validation.validate(cli_load(spec))


@pytest.mark.parametrize("student_data, expect", [("answers", "answers"), ("gold", "gold"),
                                                   ("transfer", "answers")])
def test_the_teacher_learns_from_gold_and_the_students_from_their_own_data(student_data, expect):
  c = cli_load(SFT + ":smoke")
  c.student_data = student_data
  if student_data == "transfer":
    c = cli_load(SEQKD + ":smoke")
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  prepared = reasoning.prepare(c, mesh, np.float32)
  gold = _texts(prepared.train_data)
  assert len(gold) == c.dataset.gold_examples
  assert all(";" in response and "####" in response for _, response in gold)   # worked traces
  student = _texts(prepared.student_train_data)
  if expect == "answers":       # the original data: final answers, no reasoning
    assert len(student) == c.dataset.answers_examples
    assert all(response.startswith("####") and "=" not in response for _, response in student)
  else:
    assert student == gold
  assert (prepared.teacher_data is not None) == (student_data == "transfer")
  # The pool's prompts (what the teacher writes traces for) are none of the others.
  tokenizer = arithmetic.CharTokenizer()
  pool = {tokenizer.decode(row[1:n]) for row, n in
          zip(prepared.prompts.tokens, prepared.prompts.prompt_lengths)}
  assert len(pool) == c.dataset.pool_examples and all(p.endswith("=") for p in pool)
  for data in (prepared.train_data, prepared.student_train_data, prepared.test_data):
    assert not {prompt for prompt, _ in _texts(data)} & pool


def test_the_teachers_key_ignores_the_students_data_only():
  c = cli_load(SEQKD + ":smoke")
  key = teachers.teacher_key(c)
  c.dataset.answers_examples += 1
  c.dataset.pool_examples += 1
  assert teachers.teacher_key(c) == key
  c.dataset.gold_examples += 1
  assert teachers.teacher_key(c) != key


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c.dataset, "minus", 1.5), "dataset.minus"),
    (lambda c: setattr(c.dataset, "terms", 1), "dataset.terms"),
    (lambda c: setattr(c.dataset, "gold_examples", 0), "dataset.gold_examples"),
    (lambda c: setattr(c, "student_data", "pool"), "student_data"),
    (lambda c: setattr(c.dataset, "baseline_data", "transfer"), "dataset.baseline_data"),
])
def test_bad_reasoning_fields_are_named(edit, field):
  assert_refused_field(cli_load(SFT + ":smoke"), edit, field)


def test_a_too_short_row_names_dataset_max_len():
  c = cli_load(SFT + ":smoke")
  c.dataset.max_len = 20
  with pytest.raises(ConfigError, match="dataset.max_len: a problem needs"):
    reasoning.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), np.float32)


def test_policy_gradient_rollouts_verify_each_pool_prompt_against_its_own_answer():
  # The rollouts sample the PromptSet's prompts (the pool) and check them against its answers:
  # the gold rows (the teacher's data) with the pool's answers would score every sample
  # against another problem's total.
  from kd_jax.methods import policy_gradient
  c = cli_load(SFT + ":smoke")
  mesh = parallel.make_mesh(1, 1, jax.devices()[:1])
  prepared = reasoning.prepare(c, mesh, np.float32)
  student = prepared.build(c.student, 0)
  data, _ = policy_gradient._rollout_prompts(c, prepared, student, None, None, None)
  prompts = [prompt for prompt, _ in _texts(data.prompts)]
  assert len(prompts) == c.dataset.pool_examples
  totals = [eval(prompt.rstrip("="), {}) for prompt in prompts]     # "37+48-15+26" -> 96
  assert totals == np.asarray(data.answers).tolist()


@pytest.mark.parametrize("method", ["grpo", "minillm", "dpo"])
def test_sampling_methods_start_from_the_answers_baseline_and_refuse_a_transfer_set(method):
  from kd_jax import config as config_lib
  c = cli_load(SFT + ":smoke")
  c.method, c.student_init, c.baseline = method, "baseline", True
  c.rl, c.dpo = config_lib.rl_config(teacher_weight=0.0), config_lib.dpo_config()
  validation.validate(c)          # student_data="answers": the baseline's own data
  c.transfer = config_lib.transfer_config()
  assert_refused_field(c, lambda c: setattr(c, "student_data", "transfer"), "student_data")


@pytest.mark.slow
def test_the_r1_table_smoke_runs_every_row_and_counts_their_compute(tmp_path, teacher_dir):
  sweep_dir = tmp_path / "r1"
  out = _cli("--config=experiments/reasoning/r1_table.py:smoke", f"--workdir={sweep_dir}",
             f"--teacher_dir={teacher_dir}", f"--compilation_cache_dir={multidevice.CACHE}",
             "--noprogress", module="kd_jax.sweep", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"[sweep 9/9 done, 0 failed] {sweep_dir}" in out.stdout

  def results(point):
    with open(sweep_dir / "runs" / point / "seed0" / "results.json") as f:
      return json.load(f)

  # The base (the gold solutions for baseline_steps = 4 steps) is the shared baseline the
  # warm-started rows start from, not a second run; sft-gold trains its own 8 steps.
  base, seqkd, rl_zero = results("base"), results("seqkd-8"), results("rl-zero")
  gold = results("sft-gold")
  # The seqkd rows' transfer set: k = 2 traces for each of the pool's 128 prompts, verified.
  assert seqkd["headline"] == "exact_match"
  written = seqkd["transfer_set"]
  assert written["prompts"] == 128 and written["samples"] == 2 * 128 and written["accepted"] > 0
  for phase in ("teacher", "student"):
    assert set(seqkd[phase]["ood_exact_match"]) == {"terms+1"}
    assert 0 <= seqkd[phase]["exact_match"] <= 1
  assert base["student"]["is_the_baseline"] and base["student"]["steps"] == 4
  assert "is_the_baseline" not in gold["student"] and gold["student"]["steps"] == 8
  assert base["student"]["history"] == seqkd["baseline"]["history"] == (
      rl_zero["baseline"]["history"])
  assert seqkd["baseline"]["steps"] == 4 and seqkd["student"]["steps"] == 8
  # seqkd+kd and its control start from seqkd-8's student: that very run, not a retrain.
  chained, more = results("seqkd+kd"), results("seqkd-more")
  assert chained["start"]["history"] == more["start"]["history"] == seqkd["student"]["history"]
  assert chained["baseline"]["history"] == base["student"]["history"]
  assert chained["start"]["logs"] == more["start"]["logs"] == seqkd["student"]["logs"]
  assert "-seqkd-" in os.path.basename(seqkd["student"]["logs"])     # in the shared cache
  assert chained["config"]["gkd"]["fraction"] == 1.0 and chained["student"]["steps"] == 8
  # The size axis takes the first traces of one generation; k=1 is another generation.
  assert [results(p)["transfer_set"]["used"] for p in ("seqkd-4", "seqkd-8")] == [4, 8]
  assert results("seqkd-4-k1")["transfer_set"]["samples_per_prompt"] == 1
  # ... and each is charged the teacher's samples up to its last trace's prompt, k per prompt.
  small, large = (results(p)["transfer_set"] for p in ("seqkd-4", "seqkd-8"))
  assert small["teacher_flops"] * large["prompts_sampled"] == (
      large["teacher_flops"] * small["prompts_sampled"])
  # 4 traces need at least ceil(4 / k) prompts.
  assert math.ceil(4 / small["samples_per_prompt"]) <= small["prompts_sampled"] <= small["prompts"]
  # R1-Zero: no teacher in the step, and the student compute of a seqkd row.
  assert rl_zero["student"]["flops"]["teacher"] == 0
  assert rl_zero["student"]["flops"]["student"] == pytest.approx(
      seqkd["student"]["flops"]["student"], rel=0.01)
  # A supervised phase: 3 × the forward FLOPs of each of its rows (the base's 4 steps × 64 rows).
  from kd_jax.models import gpt
  config = seqkd["config"]
  student = {"vocab_size": arithmetic.CharTokenizer().vocab_size, **config["student"]["kwargs"]}
  assert seqkd["baseline"]["flops"]["student"] == 4 * 64 * 3 * gpt.forward_flops(
      student, config["dataset"]["max_len"] - 1)
  table = _cli(f"--workdir={sweep_dir}", "--reference=sft-answers", module="kd_jax.llm_table",
               timeout=300)
  assert table.returncode == 0, table.stderr[-3000:]
  rows = first_table(table.stdout)
  assert "| student FLOPs | teacher FLOPs |" in rows[0]
  assert [r.split(" | ")[0] for r in rows[1:]] == [
      "| teacher", "| `sft-answers`", "| `sft-gold`", "| `base`", "| `seqkd-4`", "| `seqkd-8`",
      "| `seqkd-4-k1`", "| `rl-zero`", "| `seqkd+kd`", "| `seqkd-more`"]
  # A chained start's budget counts: the baseline's, then the start's, then its own.
  from kd_jax.reporting import llm_table
  counted = llm_table.run_flops(chained)
  assert counted["student"] == (chained["student"]["flops"]["student"]
                                + chained["start"]["flops"]["student"]
                                + chained["baseline"]["flops"]["student"])
  assert counted["teacher"] == (chained["student"]["flops"]["teacher"]
                                + chained["transfer_set"]["teacher_flops"])


def test_a_first_n_transfer_set_counts_the_prompts_sampled_up_to_its_last_trace():
  from kd_jax.llm import transfer
  from kd_jax.tasks import verified
  # 6 prompts, k = 2: accepted samples answer prompts 0, 0, 1, 3, 3, 5 (2, 4 rejected twice).
  index = np.array([0, 0, 1, 3, 3, 5], np.int32)
  written = transfer.TransferSet(index, np.zeros((6, 3), np.int32), np.full(6, 3, np.int32),
                                 {"prompts": 6, "samples_per_prompt": 2, "samples": 12})
  for count, sampled in [(1, 1), (2, 1), (3, 2), (4, 4), (5, 4), (6, 6), (0, 6)]:
    kept, stats = verified._first_examples(written, count)
    assert stats["prompts_sampled"] == sampled, count
    assert stats["used"] == (count or 6) and len(kept.prompt_index) == (count or 6)
  with pytest.raises(ConfigError, match="transfer.max_examples"):
    verified._first_examples(written, 7)


def test_the_baselines_key_names_the_data_it_trains_on():
  c = cli_load(SEQKD + ":smoke")
  key = teachers.baseline_key(c)
  c.student_data = "gold"                # what the distilled student trains on: not the baseline
  assert teachers.baseline_key(c) == key
  c.dataset.baseline_data = "gold"
  assert teachers.baseline_key(c) != key
  assert teachers.teacher_key(c) == teachers.teacher_key(cli_load(SEQKD + ":smoke"))


@pytest.mark.parametrize("baseline_data", ["answers", "gold"])
def test_the_baseline_trains_on_dataset_baseline_data_whatever_the_student_trains_on(
    baseline_data):
  c = cli_load(SEQKD + ":smoke")
  c.dataset.baseline_data = baseline_data
  prepared = reasoning.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), np.float32)
  responses = [response for _, response in _texts(prepared.baseline_data)]
  assert len(responses) == (c.dataset.gold_examples if baseline_data == "gold"
                            else c.dataset.answers_examples)
  assert all((";" in r) == (baseline_data == "gold") for r in responses)


def _planned_r1_table_runs(arg, seeds=None):
  """The point names of r1_table.py``arg`` and the runs a sweep of it plans (``seeds``
  seeds, by default the config's)."""
  from kd_jax import sweep
  c = cli_load(f"experiments/reasoning/r1_table.py{arg}")
  names, points = zip(*sweep.parse_points(list(c.sweep.points), c))
  return names, sweep.plan_runs(c, points, seeds or c.sweep.seeds, names)


@pytest.mark.parametrize("arg", ["", ":smoke", ":core", ":rank"])
def test_every_r1_table_point_is_a_valid_run(arg):
  names, runs = _planned_r1_table_runs(arg, seeds=1)
  assert len(set(names)) == len(names)
  for run in runs:
    validation.validate(run.config)


def test_the_r1_tables_on_policy_row_is_the_per_token_reverse_kl_at_temperature_1():
  # Thinking Machines' on-policy distillation / GKD λ = 1, β = 1: every batch sampled by the
  # student, KL(student ‖ teacher) at T = 1. The loss reads `temperature`, whose schema
  # default (4.0) is the image KD one, so the reasoning family must set it.
  _, runs = _planned_r1_table_runs(":on_policy", seeds=1)
  run = next(r for r in runs if r.workdir.startswith("runs/seqkd+kd"))
  assert run.config.method == "gkd"
  assert (run.config.gkd.fraction, run.config.gkd.beta) == (1.0, 1.0)
  assert (run.config.temperature.schedule, run.config.temperature.init) == ("constant", 1.0)


def test_the_r1_tables_parts_are_its_own_runs_each_point_in_one_part():
  # The full table, run later in a part's workdir, must find the part's runs finished (the
  # same run directories and result fields), not refuse or retrain them.
  from kd_jax.config import records
  from kd_jax.config import schema
  r1_table = schema.load_sibling(os.path.join(ROOT, "experiments", "reasoning", "sft.py"),
                                 "r1_table")

  def runs(arg):
    _, planned = _planned_r1_table_runs(arg)
    return {r.workdir: records.result_fields(r.config) for r in planned}

  full = runs("")
  covered = {}
  for part, names in r1_table.PARTS.items():
    own = runs(f":{part}")
    assert sorted({w.split("/")[1] for w in own}) == sorted(names), part
    assert len(own) == 5 * len(names)
    for workdir, fields in own.items():
      assert full[workdir] == fields, workdir
      assert workdir not in covered, f"{workdir} is in parts {covered[workdir]} and {part}"
      covered[workdir] = part
  assert covered.keys() == full.keys()
