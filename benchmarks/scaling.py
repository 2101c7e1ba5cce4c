r"""Scaling: KD steps/s over 1, 2, 4, 8 devices, bf16 vs fp32, sharded vs replicated teacher memory.

    python benchmarks/scaling.py [--quick] [--pair default|resnet] [--batch_size 128]
                                 [--devices 1,2,4,8] [--platform auto|cpu]

Three measurements, each in fresh subprocesses (JAX fixes its devices when it starts):

* **steps/s vs device count** — the KD train step (teacher forward inside the
  step, as with augmentation) of the default experiment's pair, data-parallel over
  a ``("data", "model") = (N, 1)`` mesh at a fixed global batch. On a CPU the
  N devices are forced (``--xla_force_host_platform_device_count=N``) and share
  the same cores: the numbers show what partitioning costs, not a speed-up. On
  GPUs, N runs over the first N GPUs (``CUDA_VISIBLE_DEVICES``).
* **bf16 / fp32 step time** — the same step on one device in both precisions.
* **peak memory per device, FSDP-sharded vs replicated teacher** — a large MLP
  teacher (hidden 4096×4096, 20M parameters) distilling into the default student
  on a ``(data, model) = (1, N)`` mesh, with the teacher's parameters split over
  ``model`` (``parallel.teacher_shardings``) or replicated. Peak = arguments +
  outputs + temporaries − donated aliases from the compiled step's
  ``memory_analysis()``; on a GPU also ``peak_bytes_in_use`` after a few steps
  (one process per placement, since the peak never resets).

Prints a table and writes ``benchmarks/results/scaling[-<tag>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import common

LARGE_TEACHER = ("mlp", {"hidden": (4096, 4096)})
_MB = 2**20


# --------------------------------------------------------------------------- workers

def _kd_step(config, setup, teacher):
  """The KD train step of ``setup``'s pair (teacher inside the step) and a fresh state."""
  from kd_jax import methods
  from kd_jax import engine
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  graphdef, state = common.initial_state(setup.student, optimizer, setup.mesh)
  step = engine.make_train_step(graphdef, methods.make_objective(config), optimizer,
                               setup.preprocess, teacher, setup.train_data, setup.mesh)
  return step, state


def throughput_worker(args) -> dict:
  """Median step time of the KD step over all (visible) devices."""
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size)
  setup = common.build(config, args.data)
  step, state = _kd_step(config, setup, setup.teacher)
  steps, repeats = common.steps_and_repeats(args, quick=(10, 3), full=(50, 5))
  timing = common.time_steps({"kd": common.step_runner(step, state,
                                                       common.device_batches(setup, 8))},
                             steps=steps, repeats=repeats)["kd"]
  b = config.train.batch_size
  return {"devices": setup.mesh.size, "precision": args.precision, "batch_size": b,
          "step_ms": timing["median_s"] * 1e3, "steps_per_second": 1 / timing["median_s"],
          "examples_per_second": b / timing["median_s"], "repeats_s": timing["repeats_s"],
          "device": common.device_description(), **common.model_summary(setup)}


def memory_worker(args) -> dict:
  """Per-device memory of the KD step with the large teacher sharded or replicated."""
  import jax
  import numpy as np
  from kd_jax.core import parallel
  from kd_jax import engine
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size)
  config.teacher.model, config.teacher.kwargs = LARGE_TEACHER[0], dict(LARGE_TEACHER[1])
  config.mesh.data, config.mesh.model = 1, -1
  config.dataset.train_examples = 4096       # the dataset is an argument too: keep it small
  # Models are initialised in host memory, and the replicated copy of the teacher that
  # common.build places is freed: only the placement under test occupies the devices.
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    setup = common.build(config, "synthetic")
  for x in jax.tree.leaves(setup.teacher.variables):
    x.delete()
  t_graphdef, t_params, t_state = engine.split_module(setup.teacher_module)
  mesh = setup.mesh
  if args.placement == "sharded":
    t_params = parallel.put_sharded(t_params, parallel.teacher_shardings(mesh, t_params))
  else:
    t_params = parallel.put_replicated(t_params, mesh)
  teacher = engine.Teacher(t_graphdef, (t_params, parallel.put_replicated(t_state, mesh)))
  step, state = _kd_step(config, setup, teacher)
  batch = common.device_batches(setup, 1)[0]
  compiled = step.jitted.lower(state, teacher.variables, setup.train_data, batch,
                               jax.random.key(0)).compile()
  analysis = compiled.memory_analysis()
  device = mesh.devices.flat[0]
  teacher_bytes = sum(s.data.nbytes for x in jax.tree.leaves(t_params)
                      for s in x.addressable_shards if s.device == device)
  result = {"placement": args.placement, "devices": mesh.size, "mesh": dict(mesh.shape),
            "teacher": f"{LARGE_TEACHER[0]}{LARGE_TEACHER[1]['hidden']}",
            "teacher_params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(t_params))),
            "teacher_param_bytes_per_device": teacher_bytes}
  if analysis is not None:
    result.update(
        argument_bytes=analysis.argument_size_in_bytes,
        temp_bytes=analysis.temp_size_in_bytes,
        compiled_peak_bytes=(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                             + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes))
  if mesh.devices.flat[0].platform != "cpu":
    run = common.step_runner(step, state, [batch])
    jax.block_until_ready(run(3))
    stats = [d.memory_stats() or {} for d in mesh.devices.flat]
    result["measured_peak_bytes"] = max(s.get("peak_bytes_in_use", 0) for s in stats)
  return result


# --------------------------------------------------------------------------- driver

def _probe(platform: str) -> tuple[str, int]:
  """(platform, device count) of a fresh JAX process (the driver never holds an accelerator)."""
  env = _env(platform, None)
  out = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend(), "
                        "jax.device_count())"], env=env, check=True, capture_output=True,
                       text=True).stdout.split()
  return out[-2], int(out[-1])


def _env(platform: str, devices: int | None) -> dict:
  env = dict(os.environ)
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    if devices:
      env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                          f" --xla_force_host_platform_device_count={devices}").strip()
  elif platform == "gpu" and devices:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    ids = visible.split(",") if visible else [str(i) for i in range(devices)]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(ids[:devices])
  return env


def _run_worker(kind: str, platform: str, devices: int, args, *extra: str) -> dict:
  command = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--pair", args.pair,
             "--data", args.data, *extra]
  if args.quick:
    command.append("--quick")
  if args.batch_size:
    command += ["--batch_size", str(args.batch_size)]
  for flag in ("steps", "repeats"):
    if getattr(args, flag):
      command += [f"--{flag}", str(getattr(args, flag))]
  done = subprocess.run(command, env=_env(platform, devices), capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f"{kind} worker on {devices} device(s) failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
  parser = common.add_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--devices", default="1,2,4,8",
                      help="device counts (forced on a CPU; at most the GPUs present)")
  parser.add_argument("--platform", choices=("auto", "cpu"), default="auto",
                      help="auto: the accelerator when there is one, else the CPU")
  parser.add_argument("--worker", choices=("throughput", "memory"), help=argparse.SUPPRESS)
  parser.add_argument("--placement", choices=("sharded", "replicated"), help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    result = (throughput_worker if args.worker == "throughput" else memory_worker)(args)
    print(json.dumps(result, default=float))
    return result

  platform, available = _probe("cpu" if args.platform == "cpu" else "auto")
  counts = [int(n) for n in args.devices.split(",")]
  if platform != "cpu":   # real devices: as many as there are (GPUs can be masked; others not)
    counts = [n for n in counts if n <= available] if platform == "gpu" else [available]
  print(f"platform {platform}, device counts {counts}", flush=True)
  throughput = [_run_worker("throughput", platform, n, args, "--precision", "fp32")
                for n in counts]
  bf16 = _run_worker("throughput", platform, counts[0], args, "--precision", "bf16")
  fp32 = throughput[0]
  memory_devices = max(counts)
  memory = {placement: _run_worker("memory", platform, memory_devices, args,
                                   "--placement", placement, "--precision", "fp32")
            for placement in ("replicated", "sharded")}
  peak_key = "measured_peak_bytes" if "measured_peak_bytes" in memory["sharded"] \
      else "compiled_peak_bytes"
  results = {
      "platform": platform, "device": throughput[-1]["device"],
      "throughput": throughput, "bf16": bf16,
      "bf16_over_fp32_step_time": bf16["step_ms"] / fp32["step_ms"],
      "memory": memory, "memory_peak_metric": peak_key,
      "sharded_over_replicated_peak": memory["sharded"][peak_key] / memory["replicated"][peak_key],
  }
  rows = [(f"KD step, {t['devices']} device(s), fp32, batch {t['batch_size']}",
           t["steps_per_second"], f"steps/s ({t['step_ms']:.1f} ms/step)") for t in throughput]
  base = throughput[0]["steps_per_second"]
  rows += [(f"  speed-up on {t['devices']} device(s) vs {throughput[0]['devices']}",
            t["steps_per_second"] / base) for t in throughput[1:]]
  rows.append((f"bf16 / fp32 step time ({fp32['devices']} device)",
               results["bf16_over_fp32_step_time"], f"bf16 {bf16['step_ms']:.1f} ms"))
  for placement, m in memory.items():
    rows.append((f"teacher {placement} on {m['mesh']}: teacher params/device",
                 m["teacher_param_bytes_per_device"] / _MB, "MiB"))
    rows.append((f"teacher {placement}: peak/device ({peak_key.split('_')[0]})",
                 m[peak_key] / _MB, "MiB"))
  rows.append(("sharded / replicated peak", results["sharded_over_replicated_peak"],
               "needs >= 2 devices to differ" if memory_devices == 1 else
               f"ideal for the parameters alone: 1/{memory_devices}"))
  common.print_table(f"Scaling ({results['device']}; teacher {memory['sharded']['teacher']}, "
                     f"{memory['sharded']['teacher_params']:,} params for memory)", rows)
  print("wrote", common.write_results("scaling", results, args.tag))
  return results


if __name__ == "__main__":
  main()
