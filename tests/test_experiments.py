"""Experiment modules: every config is valid, and the CLI runs the smoke path end to end."""

import glob
import importlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from kd_jax.run import validation
from kd_jax import methods, models
from tests import multidevice
from tests.conftest import needs_fashion_mnist, needs_fortunes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(ROOT, "experiments", "fashion_mnist", "*.py")) if not p.endswith("__init__.py"))


assert MODULES, "no experiment modules found"    # an empty parametrization would skip silently


def _module(name):
  return importlib.import_module(f"experiments.fashion_mnist.{name}")


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_is_valid_and_feature_layers_exist(name, arg):
  c = _module(name).get_config(arg)
  validation.validate(c)
  build = lambda spec: models.create(spec.model, num_classes=10, rngs=nnx.Rngs(0),
                                     **spec.kwargs.to_dict())
  student, teacher = jax.eval_shape(lambda: (build(c.student), build(c.teacher)))
  methods.feature_pairs(c, models.feature_shapes(student), models.feature_shapes(teacher))
  doc = _module(name).__doc__
  assert f"--config=experiments/fashion_mnist/{name}.py" in doc   # the exact command


def test_unknown_config_argument_is_rejected():
  with pytest.raises(ValueError, match="valid: smoke"):
    _module("kd").get_config("fast")


def _run_cli(tmp_path, module, *extra, compilation_cache=multidevice.CACHE, teacher_dir=None):
  """The :smoke run of a Fashion-MNIST module; ``teacher_dir`` defaults to the test's own."""
  env = dict(os.environ, KD_JAX_DATA_SOURCE="idx", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "kd_jax.main",
         f"--config=experiments/fashion_mnist/{module}.py:smoke",
         f"--workdir={tmp_path / module}", f"--teacher_dir={teacher_dir or tmp_path / 'teachers'}",
         f"--compilation_cache_dir={compilation_cache}", "--noprogress", *extra]
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / module / "results.json") as f:
    return out.stdout, json.load(f)


def _cli(*args, env_extra=None, module="kd_jax.main", timeout=300):
  env = dict(os.environ, KD_JAX_DATA_SOURCE="idx", JAX_PLATFORMS="cpu", **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


@needs_fashion_mnist
def test_cli_smoke_run_prints_the_table_and_writes_results(tmp_path):
  stdout, results = _run_cli(tmp_path, "kd", "--config.divergence=js",
                             "--config.temperature.init=2",
                             compilation_cache=tmp_path / "xla")
  assert results["config"]["divergence"] == "js"
  assert results["config"]["temperature"]["init"] == 2.0
  assert results["experiment"] == "fashion_mnist/kd"
  for phase in ("teacher", "baseline", "student"):
    assert 0 <= results[phase]["test_accuracy"] <= 1
  # Training learns: the smoke teacher is far above chance (10%), the student's loss falls.
  assert results["teacher"]["test_accuracy"] > 0.6
  losses = [r["loss"] for r in map(json.loads, open(tmp_path / "kd" / "student" / "metrics.jsonl"))
            if "loss" in r]
  assert np.mean(losses[-3:]) < 0.5 * losses[0]
  assert "KD gain" in stdout and "student (kd)" in stdout and "this run:" in stdout
  assert glob.glob(str(tmp_path / "kd" / "student" / "tb" / "events.out.tfevents.*"))
  # The persistent compilation cache is on by default and holds the run's programs,
  # the train steps included.
  cached = os.listdir(tmp_path / "xla")
  assert any("step_fn" in name for name in cached), cached[:20]

  # Re-running the finished run prints its record and rewrites nothing.
  record = (tmp_path / "kd" / "results.json").read_text()
  again, _ = _run_cli(tmp_path, "kd", "--config.divergence=js", "--config.temperature.init=2",
                      "--config.log_every_steps=7")     # a field that changes no result
  assert "finished run" in again and "nothing was run" in again and "that run:" in again
  assert (tmp_path / "kd" / "results.json").read_text() == record

  # Another config in the same workdir is refused, naming each differing field.
  refused = _cli("--config=experiments/fashion_mnist/kd.py:smoke", f"--workdir={tmp_path / 'kd'}",
                 f"--teacher_dir={tmp_path / 'teachers'}", "--config.divergence=tvd",
                 "--config.temperature.init=9")
  assert refused.returncode == 2, refused.stderr
  assert 'divergence: "js" → "tvd"' in refused.stderr
  assert "temperature.init: 2.0 → 9.0" in refused.stderr and "new --workdir" in refused.stderr
  assert "Traceback" not in refused.stderr
  assert (tmp_path / "kd" / "results.json").read_text() == record


@pytest.mark.parametrize("args, message", [
    (["--config.temprature.init=2"],
     "--config.temprature.init=2: no field 'temprature' at the top level. Did you mean "
     "'temperature'?"),
    (["--config.alpha=1.5"], "--config.alpha=1.5: alpha must be in [0, 1], got 1.5"),
    (["--config.divergence=hellinger"],
     "--config.divergence=hellinger: divergence: unknown value 'hellinger'; valid choices: kl,"),
    (["--config.train.epochs=-1"], "--config.train.epochs=-1: train.epochs must be a positive"),
    (["--config.student.kwargs.hiddne=3"], "no field 'hiddne' at student.kwargs. Did you mean "
                                            "'hidden'?"),
    (["--config.student.kwargs.hidden=(0,)"], "student.kwargs"),
    (["--config.alpha=abc"], "--config.alpha=abc: could not convert string to float"),
    (["--config.mesh.data=3"], "--config.mesh.data=3: mesh.data × mesh.model = 3×1 must equal"),
])
def test_cli_user_errors_print_one_line_and_exit_2(tmp_path, args, message):
  out = _cli("--config=experiments/fashion_mnist/kd.py:smoke", f"--workdir={tmp_path / 'w'}",
             f"--teacher_dir={tmp_path / 't'}", *args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert out.stderr.startswith("kd_jax.main: error: ")
  assert message in out.stderr
  assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3
  assert not os.path.exists(tmp_path / "t")          # nothing was trained


@pytest.mark.parametrize("config, message", [
    ("experiments/fashion_mnist/kd.py:fast",
     "--config=experiments/fashion_mnist/kd.py:fast: ValueError: unknown config argument "
     "'fast'; valid: smoke"),
    ("experiments/fashion_mnist/nope.py", "no such file 'experiments/fashion_mnist/nope.py'"),
])
def test_cli_bad_config_file_prints_one_line_and_exits_2(tmp_path, config, message):
  out = _cli(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_cli_missing_dataset_names_the_package_and_exits_2(tmp_path):
  out = _cli("--config=experiments/fashion_mnist/kd.py:smoke", f"--workdir={tmp_path / 'w'}",
             f"--teacher_dir={tmp_path / 't'}",
             env_extra={"KD_JAX_FASHION_MNIST_DIR": str(tmp_path / "none")})
  assert out.returncode == 2, out.stderr[-2000:]
  assert "apt-get install dataset-fashion-mnist" in out.stderr
  assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 3


def test_cli_unexpected_errors_keep_their_traceback():
  code = ("from kd_jax.config import cli\n"
          "def main(argv):\n  raise RuntimeError('a bug')\n"
          "cli.run(main, 'prog')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1
  assert "Traceback" in out.stderr and "RuntimeError: a bug" in out.stderr


def test_experiment_modules_run_from_any_directory(tmp_path):
  # Modules that build on kd.py import it by path, not as the `experiments` package.
  out = subprocess.run(
      [sys.executable, "-c", "from kd_jax.config import cli; import sys; "
       "print(cli.load_config_file(sys.argv[1]).method)",
       os.path.join(ROOT, "experiments", "fashion_mnist", "at.py:smoke")],
      cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, PYTHONPATH=""))
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "at"


@needs_fashion_mnist
@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MODULES if m not in ("kd", "temperature_sweep")])
def test_every_module_smoke_run(name, tmp_path, teacher_dir):
  # The session's teacher cache: the modules' smoke teachers (and baselines) are trained
  # once, as a user's second module would find them.
  _, results = _run_cli(tmp_path, name, teacher_dir=teacher_dir)
  assert 0 <= results["student"]["test_accuracy"] <= 1
  # The module's method really trained the student: its own loss term is non-zero.
  method = results["config"]["method"]
  term = {"kd": "distill", "dkd": "dkd"}.get(method, "feature_loss")
  records = [json.loads(line) for line in open(tmp_path / name / "student" / "metrics.jsonl")]
  assert all(r[term] > 0 for r in records if "loss" in r), (method, term)
  omitted = results["config"]["dataset"]["omit_classes"]
  if omitted:   # the omitted-class study reports those classes before and after correction
    for phase in ("student", "baseline"):
      assert results[phase]["omitted_classes"]["classes"] == omitted


@needs_fashion_mnist
@pytest.mark.slow
def test_temperature_sweep_module_smoke_run(tmp_path, teacher_dir):
  # A study module: its own grid (2 divergences × 2 temperatures) × 2 seeds.
  out = _cli("--config=experiments/fashion_mnist/temperature_sweep.py:smoke",
             f"--workdir={tmp_path / 'sweep'}", f"--teacher_dir={teacher_dir}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress",
             module="kd_jax.sweep", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"[sweep 8/8 done, 0 failed] {tmp_path / 'sweep'}" in out.stdout
  assert os.path.getsize(tmp_path / "sweep" / "summary.md") > 0


ARITHMETIC = ("sft", "token_kd", "seqkd", "gkd", "dpo", "rl")
STUDIES = ("r1_table", "transfer_temperature", "rank_table")     # run with kd_jax.sweep


@pytest.mark.parametrize("name", ARITHMETIC + STUDIES)
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_arithmetic_configs_are_valid(name, arg):
  c = cli_load(f"experiments/arithmetic/{name}.py" + (f":{arg}" if arg else ""))
  validation.validate(c)
  assert f"--config=experiments/arithmetic/{name}.py" in importlib.import_module(
      f"experiments.arithmetic.{name}").__doc__


def cli_load(spec):
  from kd_jax.config import cli
  return cli.load_config_file(os.path.join(ROOT, spec))


def assert_refused_field(config, edit, field):
  """``config`` validates; after ``edit(config)`` validation raises a ConfigError naming ``field``."""
  from kd_jax.core.errors import ConfigError
  validation.validate(config)
  edit(config)
  with pytest.raises(ConfigError) as e:
    validation.validate(config)
  assert e.value.field == field


def test_language_configs_refuse_image_models_methods_and_vocab_mismatch(tmp_path):
  c = cli_load("experiments/arithmetic/token_kd.py:smoke")
  c.student.model = "mlp"
  with pytest.raises(ValueError, match="student.model: unknown value 'mlp'; valid choices: gpt"):
    validation.validate(c)
  c = cli_load("experiments/arithmetic/token_kd.py:smoke")
  c.method = "dkd"
  with pytest.raises(ValueError, match="method: unknown value 'dkd'; valid choices: none, kd"):
    validation.validate(c)
  c = cli_load("experiments/arithmetic/token_kd.py:smoke")
  c.teacher.kwargs.vocab_size = 10     # fewer rows than the tokenizer's 19 ids
  from kd_jax.run.pipeline import run_experiment
  with pytest.raises(ValueError, match=r"teacher.kwargs.vocab_size: the teacher has 10 "
                     r"vocabulary rows \(the teacher 10, the student 19\) but the tokenizer "
                     "produces 19 ids"):
    run_experiment(c, str(tmp_path / "w"), teacher_dir=str(tmp_path / "t"), show_progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", ARITHMETIC)
def test_arithmetic_module_smoke_run(name, tmp_path, teacher_dir):
  # The session's teacher cache: the arithmetic teacher trains once for all modules.
  out = _cli(f"--config=experiments/arithmetic/{name}.py:smoke", f"--workdir={tmp_path / name}",
             f"--teacher_dir={teacher_dir}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / name / "results.json") as f:
    results = json.load(f)
  assert results["headline"] == "exact_match" and "exact" in out.stdout
  phases = ("teacher", "baseline", "student") if "baseline" in results else ("teacher", "student")
  for phase in phases:
    r = results[phase]
    for key in ("params", "exact_match", "pass_at_k", "token_accuracy", "nll",
                "generation_tokens_per_second"):
      assert key in r, (phase, key)
    assert 0 <= r["exact_match"] <= 1 and r["nll"] > 0
    assert set(r["pass_at_k"]) == {"1", "2"}
  for phase in phases[1:]:
    assert results[phase]["kl_to_teacher"] >= 0 and 0 <= results[phase]["agreement"] <= 1
  records = [json.loads(line) for line in open(tmp_path / name / "student" / "metrics.jsonl")]
  term = "distill" if name in ("token_kd", "gkd") else "loss"
  if name != "rl":      # (a policy-gradient surrogate may be negative)
    assert all(r[term] > 0 for r in records if "loss" in r)
  if name == "seqkd":   # trained on the teacher's accepted answers, for the gold budget in steps
    written = results["transfer_set"]
    assert written["accepted"] > 0 and written["samples"] == 2 * 512
    assert [r["step"] for r in records if "loss" in r][-1] == 7
  if name == "gkd":     # some batches sampled by the student itself
    assert {r["on_policy"] for r in records if "loss" in r} <= {0.0, 1.0}
  if name == "dpo":     # pairs of the SFT student's samples; it starts as its own reference
    pairs = results["preference_pairs"]
    assert 0 < pairs["pairs"] <= pairs["prompts"] == 512 and pairs["samples_per_prompt"] == 2
    first = next(r for r in records if "loss" in r)
    assert first["step"] == 0 and first["loss"] == pytest.approx(np.log(2), abs=1e-5)
    positions = results["config"]["dataset"]["max_len"] - 1          # 8 steps of 64 pairs
    assert results["student"]["train_tokens"] == 8 * 64 * 2 * positions
  if name == "rl":      # GRPO from the SFT student: rewards and the KL to it, every step
    train = [r for r in records if "loss" in r]
    assert all(0 <= r["verifier_reward"] <= 1 and r["kl_to_reference"] >= 0 for r in train)
    assert train[0]["step"] == 0 and train[0]["kl_to_reference"] == pytest.approx(0, abs=1e-6)
    positions = results["config"]["dataset"]["max_len"] - 1   # 8 steps of 16 prompts × 4
    assert results["student"]["train_tokens"] == 8 * 64 * positions


def first_table(text: str) -> list[str]:
  """The rows (header first, the |---| line left out) of the first markdown table in ``text``."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith("| "))
  block = []
  for line in lines[start:]:
    if not line.startswith("|"):
      break
    block.append(line)
  return [line for line in block if line.startswith("| ")]


@pytest.mark.slow
def test_r1_table_pipeline_smoke_run(tmp_path, teacher_dir):
  """The whole R1 pipeline: teacher, transfer set, every family of student, the table."""
  sweep_dir = tmp_path / "r1"
  out = _cli("--config=experiments/arithmetic/r1_table.py:smoke", f"--workdir={sweep_dir}",
             f"--teacher_dir={teacher_dir}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress",
             module="kd_jax.sweep", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"[sweep 6/6 done, 0 failed] {sweep_dir}" in out.stdout
  table = _cli(f"--workdir={sweep_dir}", module="kd_jax.llm_table", timeout=300)
  assert table.returncode == 0, table.stderr[-3000:]
  rows = first_table(table.stdout)
  assert rows[0].startswith("| model | params | exact match % | pass@2 % |")
  assert "OOD steps+1 %" in rows[0] and "OOD digits+1 %" in rows[0]
  calibration = table.stdout.split("Calibration:")[1]    # 2 seeds: the spread is shown
  assert "| `sft` |" in calibration and "| `gkd-from-sft` |" in calibration
  assert [r.split(" | ")[0] for r in rows[1:]] == [
      "| teacher", "| `sft`", "| `seqkd`", "| `gkd-from-sft`"]
  with open(sweep_dir / "runs" / "gkd-from-sft" / "seed0" / "results.json") as f:
    warm = json.load(f)
  assert warm["config"]["student_init"] == "baseline" and "baseline" in warm
  assert os.path.getsize(sweep_dir / "exact_match_vs_tokens.png") > 10_000


@pytest.mark.parametrize("spec", ["token_kd.py", "token_kd.py:smoke", "token_kd.py:32k",
                                  "topk_fidelity.py", "topk_fidelity.py:smoke"])
def test_text_configs_are_valid(spec):
  c = cli_load(f"experiments/text/{spec}")
  validation.validate(c)
  module = importlib.import_module(f"experiments.text.{spec.split('.')[0]}")
  assert f"--config=experiments/text/{spec.split(':')[0]}" in module.__doc__
  c.method = "gkd"
  with pytest.raises(ValueError, match="method: unknown value 'gkd'; valid choices: none, kd"):
    validation.validate(c)


@needs_fortunes
@pytest.mark.slow
def test_text_module_smoke_run(tmp_path, teacher_dir):
  out = _cli("--config=experiments/text/token_kd.py:smoke", f"--workdir={tmp_path / 'text'}",
             f"--teacher_dir={teacher_dir}",
             f"--compilation_cache_dir={multidevice.CACHE}", "--noprogress", timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(tmp_path / "text" / "results.json") as f:
    results = json.load(f)
  assert results["headline"] == "nll" and "KD gain (from scratch − student" in out.stdout
  for phase in ("teacher", "baseline", "student"):
    r = results[phase]
    assert r["nll"] > 0 and r["perplexity"] == pytest.approx(np.exp(r["nll"]))
  assert results["student"]["best_nll"] == min(h["nll"] for h in results["student"]["history"])
  assert results["student"]["train_tokens"] == 8 * 32 * 63       # 256 rows / 32, × 63 positions


# Modules whose other arguments are sweeps of their own.
EXTRA_SWEEP_ARGS = {"function_matching.py": (":vit", ":vit_smoke"), "cross_tokenizer.py": (":sums", ":calibrate")}


def _module_specs(*, extra_sweeps: bool = False) -> list[str]:
  """Every experiment module, bare and ``:smoke`` (with ``extra_sweeps``, also the
  arguments of EXTRA_SWEEP_ARGS)."""
  return sorted(f"{os.path.relpath(p, ROOT)}{arg}"
                for p in glob.glob(os.path.join(ROOT, "experiments", "*", "*.py"))
                if not p.endswith("__init__.py")
                for arg in ("", ":smoke", *(EXTRA_SWEEP_ARGS.get(os.path.basename(p), ())
                                            if extra_sweeps else ())))


def _sweep_specs() -> list[str]:
  """Every module (and argument) whose config carries a sweep of its own."""
  return [spec for spec in _module_specs(extra_sweeps=True) if cli_load(spec).get("sweep")]


@pytest.mark.parametrize("spec", _sweep_specs())
def test_every_sweep_point_of_every_module_is_a_valid_config(spec):
  """What ``python -m kd_jax.sweep --config=<module>`` would run: each point's overrides
  parse against the module's config and the result passes validation (a point naming a
  field the module lacks failed only when the sweep reached it)."""
  from kd_jax import sweep
  from kd_jax.run import grid
  config = cli_load(spec)
  grid_specs, point_specs, seeds = sweep.default_grid(config, (), (), None)
  names, points = zip(*grid.combine(grid.parse_points(point_specs, config),
                                    grid.parse_grid(grid_specs, config)))
  for run in sweep.plan_runs(config, points, seeds, names)[:len(points)]:
    validation.validate(run.config)


def _language_model_specs() -> list[str]:
  """Every experiment module (bare and ``:smoke``) of a language-model task family."""
  from kd_jax import tasks
  return [spec for spec in _module_specs()
          if tasks.family_of(cli_load(spec).dataset.name).LANGUAGE]


LANGUAGE_MODEL_SPECS = _language_model_specs()
assert LANGUAGE_MODEL_SPECS, "no language-model experiment modules found"


@pytest.mark.parametrize("spec", LANGUAGE_MODEL_SPECS)
def test_language_model_modules_distil_at_loss_temperature_one(spec):
  """The schema's loss temperature, 4.0, is image KD's (Hinton et al.); a language-model
  family's token-level losses are the forms of T = 1 (GKD, MiniLLM, on-policy distillation),
  so each LM family sets it (experiments/{text,arithmetic,reasoning}). A new LM module that
  inherits the image default would distil at T = 4 without saying so: this catches it.
  (Sampling has its own ``*.temperature`` fields; only the loss's is checked.)"""
  config = cli_load(spec)
  assert dict(config.temperature) == {"schedule": "constant", "init": 1.0}, (
      f"{spec}: loss temperature {dict(config.temperature)}; an LM module states T = 1 "
      "(or this test names it with the reason it differs)")
