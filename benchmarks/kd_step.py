r"""The KD step's cost over a student-only step, beside its FLOP floor; the cached-teacher step.

    python benchmarks/kd_step.py [--quick] [--pair default|resnet|lm] [--precision fp32|bf16]

``--pair lm`` times the arithmetic experiment's GPTs (experiments/arithmetic/token_kd.py):
the token-KD step over the SFT step, against the same FLOP floor, and the step with the
teacher's cached top-4 logits (``topk.k``, tail mode) against the live-teacher step
(results in ``kd_step-lm.json``).

A KD step runs the student's forward and backward passes (≈ 3 forward passes)
plus the teacher's forward pass, so at best it costs

    ideal_ratio = 1 + F_teacher_fwd / (3 · F_student_fwd)

student-only steps, with FLOPs per batch from XLA's cost analysis of the CPU
lowering (teacher in eval mode, student in train mode). Three steps are timed,
all built by ``engine.make_train_step`` over the same device-resident batches:

* student-only (``method='none'``, hard-label CE);
* KD (the default experiment's logit KD; the teacher runs inside the step);
* cached KD (``teacher_cache='memory'``: teacher logits gathered by index);
* function matching (issue 27): pure KD (α = 0) on consistent views, the batch cropped,
  flipped and mixed (mixup, Beta(1, 1)) on the device and read by the live teacher and the
  student alike (``function_matching_over_kd``: what the views cost over the KD step).

Writes ``benchmarks/results/kd_step.json`` with ``kd_over_student``,
``ideal_ratio``, ``cached_over_student`` (medians of per-repeat ratios; targets: ``kd_over_student`` ≤ 1.2 ×
``ideal_ratio``; ``cached_over_student`` ≤ 1.05), the step times, and the model
FLOPs utilisation: training FLOPs per step (cost analysis) over the step time,
against the dense matmul rate measured in the same run and precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

import common

from kd_jax import methods
from kd_jax import losses
from kd_jax.engine import teacher_cache
from kd_jax import engine
from kd_jax import config as config_lib


def student_training_flops(module, batch_size, input_shape, dtype) -> float:
  """FLOPs of the student's forward + backward pass on one batch (CE loss)."""
  graphdef, params, model_state = engine.split_module(module)
  x = jnp.zeros((batch_size, *input_shape), dtype)
  labels = jnp.zeros((batch_size,), jnp.int32)

  def grads(p, s, x, y):
    loss = lambda p: losses.cross_entropy(
        engine.forward(graphdef, p, s, x, train=True)[0][0], y)
    return jax.grad(loss)(p)

  return common.cpu_flops(grads, params, model_state, x, labels)


TOPK = 4     # of the arithmetic task's 19 tokens


def lm_pair(args, steps: int, repeats: int) -> dict:
  """The arithmetic experiment's GPT pair: token-KD step over SFT step, and the cached step."""
  setup = common.lm_setup(args.precision, args.batch_size, teacher_cache="memory")
  config, mesh, batches = setup.config, setup.mesh, setup.batches
  data, task, b = setup.prepared.train_data, setup.prepared.task, config.train.batch_size
  teacher_module, student_model, teacher = setup.teacher_module, setup.student_model, setup.teacher
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  sft_objective = methods.make_objective(config_lib.with_method(config, "none"))
  kd_objective = methods.make_objective(config)
  student = methods.Student(student_model, {}, {}, rngs=nnx.Rngs(1))
  graphdef, states = None, []
  for _ in range(4):
    graphdef, state = common.initial_state(student, optimizer, mesh)
    states.append(state)
  topk_config = config.copy_and_resolve_references()
  topk_config.topk.k = TOPK
  with tempfile.TemporaryDirectory() as workdir:
    cached_data = teacher_cache.attach(config, teacher, data, task, mesh, workdir)
    topk_data = teacher_cache.attach(topk_config, teacher, data, task, mesh, workdir,
                                     shared_dir=workdir, teacher_name="benchmark-teacher")
  runners = {
      "student": engine.make_train_step(graphdef, sft_objective, optimizer, task, None, data, mesh),
      "kd": engine.make_train_step(graphdef, kd_objective, optimizer, task, teacher, data, mesh),
      "cached": engine.make_train_step(graphdef, kd_objective, optimizer, task, None,
                                      cached_data, mesh),
      "cached top-k": engine.make_train_step(graphdef, methods.make_objective(topk_config),
                                            optimizer, task, None, topk_data, mesh)}
  times = common.time_steps({name: common.step_runner(step, state, batches)
                             for (name, step), state in zip(runners.items(), states)},
                            steps=steps, repeats=repeats)
  tokens = jnp.zeros((b, data.tokens.shape[1] - 1), jnp.int32)

  def forward_flops(module, train_mode):
    g, p, st = engine.split_module(module)
    return common.cpu_flops(lambda p, st, x: engine.forward(g, p, st, x, train=train_mode)[0][0],
                            p, st, tokens)

  f_teacher, f_student = forward_flops(teacher_module, False), forward_flops(student_model, True)
  ideal = 1 + f_teacher / (3 * f_student)
  kd_over_student = common.paired_ratio(times, "kd", "student")
  results = {"kd_over_student": kd_over_student, "ideal_ratio": ideal,
             "kd_over_ideal": kd_over_student / ideal,
             "cached_over_student": common.paired_ratio(times, "cached", "student"),
             "topk_over_live_kd": common.paired_ratio(times, "cached top-k", "kd"), "topk": TOPK,
             "step_seconds": {k: v["median_s"] for k, v in times.items()},
             "tokens_per_second": {k: b * tokens.shape[1] / v["median_s"] for k, v in times.items()},
             "flops_per_step": {"teacher_forward": f_teacher, "student_forward": f_student},
             "params": {"teacher": teacher_module.num_params(), "student": student_model.num_params()},
             "batch": [b, int(tokens.shape[1])], "steps": steps, "repeats": repeats}
  common.print_table(f"token-KD step vs SFT step ({common.device_description()}, GPT "
                     f"{results['params']['teacher']:,} → {results['params']['student']:,} "
                     f"params, batch {b}×{tokens.shape[1]}, {config.precision})", [
      ("SFT step (ms)", times["student"]["median_s"] * 1e3),
      ("token-KD step (ms)", times["kd"]["median_s"] * 1e3),
      ("cached-teacher token-KD step (ms)", times["cached"]["median_s"] * 1e3),
      (f"cached top-{TOPK} (tail) token-KD step (ms)", times["cached top-k"]["median_s"] * 1e3),
      ("cached top-k / live-teacher KD", results["topk_over_live_kd"]),
      ("ideal ratio 1 + F_t / (3 F_s)", ideal),
      ("KD / SFT", kd_over_student),
      ("KD / SFT ÷ ideal", kd_over_student / ideal, common.target(kd_over_student / ideal, 1.2)),
      ("cached / SFT", results["cached_over_student"]),
  ])
  print("wrote", common.write_results("kd_step", results, args.tag or "lm"))
  return results


def main(argv=None) -> dict:
  parser = common.add_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                            pairs=(*common.PAIRS, "lm"))
  args = parser.parse_args(argv)
  steps, repeats = common.steps_and_repeats(args, quick=(20, 5), full=(100, 7))
  if args.pair == "lm":
    return lm_pair(args, steps, repeats)
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size,
                                            args.train_examples)
  config.teacher_cache = "memory"
  setup = common.build(config, args.data)
  mesh, b = setup.mesh, config.train.batch_size
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  batches = common.device_batches(setup, count=8)

  student_graphdef, student_state = common.initial_state(setup.student_model, optimizer, mesh)
  student_step = engine.make_train_step(
      student_graphdef, methods.make_objective(config_lib.with_method(config, "none")),
      optimizer, setup.preprocess, None, setup.train_data, mesh)
  kd_objective = methods.make_objective(config)
  kd_graphdef, kd_state = common.initial_state(setup.student, optimizer, mesh)
  kd_step = engine.make_train_step(kd_graphdef, kd_objective, optimizer, setup.preprocess,
                                  setup.teacher, setup.train_data, mesh)
  with tempfile.TemporaryDirectory() as workdir:
    cached_data = teacher_cache.attach(config, setup.teacher, setup.train_data, setup.preprocess,
                                       mesh, workdir)
  _, cached_state = common.initial_state(setup.student, optimizer, mesh)
  cached_step = engine.make_train_step(kd_graphdef, kd_objective, optimizer, setup.preprocess,
                                      None, cached_data, mesh)
  views = dataclasses.replace(setup.preprocess, crop_padding=2, flip=True, mixup=1.0)
  pure = config.copy_and_resolve_references()
  pure.alpha = 0.0
  _, views_state = common.initial_state(setup.student, optimizer, mesh)
  views_step = engine.make_train_step(kd_graphdef, methods.make_objective(pure), optimizer,
                                      views, setup.teacher, setup.train_data, mesh)
  times = common.time_steps({
      "student": common.step_runner(student_step, student_state, batches),
      "kd": common.step_runner(kd_step, kd_state, batches),
      "cached": common.step_runner(cached_step, cached_state, batches),
      "function_matching": common.step_runner(views_step, views_state, batches),
  }, steps=steps, repeats=repeats)

  f_teacher = common.forward_flops(setup.teacher_module, b, setup.input_shape, setup.dtype,
                                   train_mode=False)
  f_student = common.forward_flops(setup.student_model, b, setup.input_shape, setup.dtype,
                                   train_mode=True)
  f_student_train = student_training_flops(setup.student_model, b, setup.input_shape, setup.dtype)
  ideal = 1 + f_teacher / (3 * f_student)
  t_student, t_kd, t_cached = (times[k]["median_s"] for k in ("student", "kd", "cached"))
  # Per-repeat ratios: the three steps ran back to back, under the same machine load.
  kd_over_student = common.paired_ratio(times, "kd", "student")
  cached_over_student = common.paired_ratio(times, "cached", "student")

  on_cpu = jax.devices()[0].platform == "cpu"
  n = (1024 if args.quick else 2048) if on_cpu else 8192
  matmul_rate = common.matmul_flops_per_second(setup.dtype, n)
  kd_flops = f_teacher + f_student_train
  results = {
      "kd_over_student": kd_over_student,
      "ideal_ratio": ideal,
      "cached_over_student": cached_over_student,
      "function_matching_over_kd": common.paired_ratio(times, "function_matching", "kd"),
      "kd_over_ideal": kd_over_student / ideal,
      "from_medians": {"kd_over_student": t_kd / t_student,
                       "cached_over_student": t_cached / t_student},
      "step_seconds": {k: v["median_s"] for k, v in times.items()},
      "step_seconds_detail": times,
      "samples_per_second": {k: b / v["median_s"] for k, v in times.items()},
      "flops_per_step": {"teacher_forward": f_teacher, "student_forward": f_student,
                         "student_forward_backward": f_student_train, "kd_training": kd_flops},
      "matmul_flops_per_second": matmul_rate, "matmul_size": n,
      "mfu": {"kd": kd_flops / t_kd / matmul_rate,
              "student": f_student_train / t_student / matmul_rate},
      "steps": steps, "repeats": repeats, **common.model_summary(setup),
  }
  common.print_table(f"KD step vs student-only step ({common.device_description()}, "
                     f"{config.teacher.model} → {config.student.model}, batch {b}, "
                     f"{config.precision})", [
      ("student-only step (ms)", t_student * 1e3),
      ("KD step (ms)", t_kd * 1e3),
      ("cached-teacher KD step (ms)", t_cached * 1e3),
      ("function-matching step (ms)",
       times["function_matching"]["median_s"] * 1e3),
      ("teacher forward GFLOP / batch", f_teacher / 1e9),
      ("student forward GFLOP / batch", f_student / 1e9),
      ("ideal ratio 1 + F_t / (3 F_s)", ideal),
      ("KD / student-only", kd_over_student),
      ("KD / student-only ÷ ideal", kd_over_student / ideal, common.target(kd_over_student / ideal, 1.2)),
      ("cached / student-only", cached_over_student, common.target(cached_over_student, 1.05)),
      (f"matmul rate ({config.precision}, n={n}) TFLOP/s", matmul_rate / 1e12),
      ("MFU of the KD step", results["mfu"]["kd"]),
  ])
  print("wrote", common.write_results("kd_step", results, args.tag))
  return results


if __name__ == "__main__":
  main()
