r"""Where a GKD step's time goes: generating, scoring, updating; and the transfer set's throughput.

    python benchmarks/gkd_step.py [--quick] [--precision fp32|bf16] [--batch_size N]

The arithmetic experiment's GPT pair (experiments/arithmetic/token_kd.py): a random
student (every step has fixed shapes, generation included, so trained weights would
time the same) and the cached trained teacher when there is one (the transfer set's
rate counts generated tokens up to each EOS, which depends on the weights; the
JSON says which weights were used). Timed back to back over the same device batches, each built by
``engine.make_train_step``:

* ``sft``       — the student-only step (method ``none``);
* ``gkd λ=0``   — GKD on gold rows: the teacher's forward pass (scoring) and the
  student's update, no sampling;
* ``gkd λ=1``   — every batch sampled by the student inside the step, then scored
  and updated (fully on-policy);
* ``generate``  — the student's in-step sampling alone (the same jitted sampler), and
* ``teacher``   — the teacher's forward pass alone.

The shares of the fully on-policy step: generating = generate / (gkd λ=1), scoring =
teacher / (gkd λ=1), updating = the rest. Also the transfer set's generation rate
(``kd_jax.llm.transfer.build``: the teacher answering prompts with k samples each, with
the KV cache, as tokens/s) beside ``benchmarks/generate.py``'s cached decoder at the
same batch, for the same teacher. Writes ``benchmarks/results/gkd_step.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import common

from kd_jax import config as config_lib
from kd_jax.llm import generate as generate_lib
from kd_jax import methods
from kd_jax import engine
from kd_jax.llm import transfer
from kd_jax.data import arithmetic as ar


def step_shares(setup: common.LMSetup, steps: int, repeats: int) -> dict:
  config, mesh, batches = setup.config, setup.mesh, setup.batches
  data, task = setup.prepared.train_data, setup.prepared.task
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  student = methods.Student(setup.student_model, {}, {}, rngs=nnx.Rngs(1))
  runners, states = {}, {}
  for name, fraction in (("sft", None), ("gkd λ=0", 0.0), ("gkd λ=1", 1.0)):
    graphdef, states[name] = common.initial_state(student, optimizer, mesh)
    if fraction is None:
      objective, step_task, teacher = (methods.make_objective(config_lib.with_method(config, "none")),
                                       task, None)
    else:
      run_config = config_lib.with_method(config, "gkd")
      run_config.gkd = config_lib.gkd_config(fraction=fraction, beta=0.5)
      objective, teacher = methods.make_objective(run_config), setup.teacher
      step_task = dataclasses.replace(task, on_policy=fraction)
    runners[name] = engine.make_train_step(graphdef, objective, optimizer, step_task, teacher,
                                          data, mesh)
  times = common.time_steps({name: common.step_runner(step, states[name], batches)
                             for name, step in runners.items()}, steps=steps, repeats=repeats)

  # The pieces alone, on one gold batch.
  index = batches[0]["index"]
  tokens, gold_mask = data.tokens[index], data.loss_mask[index]
  mask = jnp.ones(index.shape[0], bool)
  s_graphdef, s_params, s_state = engine.split_module(student)
  sample = jax.jit(lambda p, st, t, g, m, key: task._student_rows(  # pylint: disable=protected-access
      t, g, m, key, (s_graphdef, p, st)))
  t_graphdef, (t_params, t_state) = setup.teacher.graphdef, setup.teacher.variables
  teacher_forward = jax.jit(lambda p, st, x: engine.forward(t_graphdef, p, st, x, train=False)[0][0])
  t_generate = common.median_seconds(sample, s_params, s_state, tokens, gold_mask, mask,
                                     jax.random.key(0), repeats=max(repeats, 5))
  t_teacher = common.median_seconds(teacher_forward, t_params, t_state, tokens[:, :-1],
                                    repeats=max(repeats, 5))
  on_policy = times["gkd λ=1"]["median_s"]
  return {
      "step_seconds": {k: v["median_s"] for k, v in times.items()},
      "generate_seconds": t_generate, "teacher_forward_seconds": t_teacher,
      "shares_of_on_policy_step": {
          "generating": t_generate / on_policy, "scoring": t_teacher / on_policy,
          "updating": max(0.0, 1 - (t_generate + t_teacher) / on_policy)},
      "on_policy_over_sft": common.paired_ratio(times, "gkd λ=1", "sft"),
      "supervised_gkd_over_sft": common.paired_ratio(times, "gkd λ=0", "sft"),
      "batch": list(tokens.shape), "max_new_tokens": task.max_new_tokens,
  }


def transfer_throughput(setup: common.LMSetup, prompts: int, k: int, repeats: int) -> dict:
  """Tokens/s of ``transfer.build`` against the bare cached decoder on the same prompts."""
  data, task = setup.prepared.train_data, setup.prepared.task
  tokens = np.asarray(data.tokens[:prompts])
  prompt_lengths = np.asarray(jnp.argmax(data.loss_mask[:prompts], axis=1) + 1, np.int32)
  prompt_len = int(prompt_lengths.max())
  tokenizer = ar.CharTokenizer()
  answers = [ar.extract_answer(tokenizer.decode(row[p:])) for row, p in zip(tokens, prompt_lengths)]
  sampling = config_lib.transfer_config(k=k).sampling
  rates = []     # the first build in the process includes the decoder's compilation
  for _ in range(repeats):
    with tempfile.TemporaryDirectory() as directory:
      built = transfer.build(setup.teacher_module, tokens[:, :prompt_len], prompt_lengths, k=k,
                             sampling=sampling, max_new_tokens=task.max_new_tokens,
                             decode=tokenizer.decode, eos_id=tokenizer.eos_id,
                             pad_id=tokenizer.pad_id, directory=directory,
                             identity={"benchmark": True}, answers=answers,
                             check=ar.check_answer, extract=ar.extract_answer, seed=0)
    rates.append(built.stats["generation_tokens_per_second"])
  # The bare cached decoder on one chunk of the same prompts (transfer.build's default
  # chunk of 256), counting generated tokens the same way (up to each EOS).
  graphdef, state = nnx.split(setup.teacher_module)
  batch = min(prompts, 256)
  decode = lambda: generate_lib.generate(
      graphdef, state, tokens[:batch, :prompt_len], prompt_lengths[:batch],
      max_new_tokens=task.max_new_tokens, rng=jax.random.key(0), temperature=0.7,
      eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  seconds = common.median_seconds(decode, repeats=max(repeats, 3))
  generated = int(np.sum(jax.device_get(decode())[1]))
  return {"transfer_tokens_per_second": float(np.median(rates)),
          "transfer_tokens_per_second_each_build": rates,
          "decoder_tokens_per_second": generated / seconds,
          "decoder_batch": batch, "prompts": prompts, "k": k}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer steps and repeats")
  parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
  parser.add_argument("--batch_size", type=int, default=0, help="0: the experiment's (64)")
  parser.add_argument("--tag", default="")
  args = parser.parse_args(argv)
  steps, repeats = (5, 3) if args.quick else (20, 5)
  # The trained teacher when cached: its answers end at EOS as in a real transfer set.
  setup = common.lm_setup(args.precision, args.batch_size, load_teacher=True)
  shares = step_shares(setup, steps, repeats)
  throughput = transfer_throughput(setup, prompts=512 if args.quick else 2048, k=4,
                                   repeats=1 if args.quick else 3)
  results = {**shares, **throughput, "teacher_weights": setup.teacher_weights,
             "precision": args.precision, "steps": steps,
             "repeats": repeats}
  s = shares["shares_of_on_policy_step"]
  common.print_table(f"GKD step ({common.device_description()}, batch "
                     f"{shares['batch'][0]}×{shares['batch'][1]}, {task_note(shares)}, "
                     f"{args.precision})", [
      ("SFT step (ms)", shares["step_seconds"]["sft"] * 1e3),
      ("GKD λ=0 step: score + update (ms)", shares["step_seconds"]["gkd λ=0"] * 1e3),
      ("GKD λ=1 step: generate + score + update (ms)", shares["step_seconds"]["gkd λ=1"] * 1e3),
      ("student sampling alone (ms)", shares["generate_seconds"] * 1e3),
      ("teacher forward alone (ms)", shares["teacher_forward_seconds"] * 1e3),
      ("share generating", s["generating"]), ("share scoring", s["scoring"]),
      ("share updating", s["updating"]),
      ("transfer set: teacher tokens/s", throughput["transfer_tokens_per_second"]),
      ("bare cached decoder, same teacher and batch: tokens/s",
       throughput["decoder_tokens_per_second"]),
  ])
  print("wrote", common.write_results("gkd_step", results, args.tag))
  return results


def task_note(shares: dict) -> str:
  return f"{shares['max_new_tokens']} sampled tokens"


if __name__ == "__main__":
  main()
