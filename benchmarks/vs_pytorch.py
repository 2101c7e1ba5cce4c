r"""kd_jax against a plain PyTorch loop: the same pair, KD loss, optimiser and batch size.

    python benchmarks/vs_pytorch.py [--quick] [--pair default|resnet] [--precision fp32|bf16]

Both sides train the student of the default experiment by logit KD with the
teacher run in every step (no caching), from the whole training set held on
the device, with batches of example indices drawn on the host:

* kd_jax — ``engine.make_train_step`` (the library's compiled step), fed as
  ``engine.fit`` feeds it (``engine.BatchFeeder``: an epoch's index batches sent
  to the device at once);
* PyTorch eager — a loop written for this benchmark: gather, normalise, teacher
  forward under ``no_grad``, student forward, α·CE + (1−α)·T²·KL(p_T ‖ p_S),
  backward, ``AdamW``; NCHW layout; bf16 by ``autocast``;
* PyTorch ``torch.compile`` — the same step function compiled (``null`` in the
  JSON, with the reason, where it cannot run).

Also reported, outside the like-for-like comparison: kd_jax with the teacher's
outputs cached (``teacher_cache``), its default when the inputs are un-augmented.

PyTorch is a benchmark-only dependency (``pip install -r benchmarks/requirements.txt``);
without it only kd_jax is timed. Writes ``benchmarks/results/vs_pytorch.json``
with ``kd_jax_samples_per_s``, ``torch_eager_samples_per_s``,
``torch_compile_samples_per_s`` and ``device`` (target on a GPU: kd_jax ≥ 1.3×
eager PyTorch).
"""

from __future__ import annotations

import argparse
import os
import tempfile

# JAX and PyTorch share the GPU in this process: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402

from kd_jax import engine, methods  # noqa: E402
from kd_jax.engine import teacher_cache

try:
  import torch
  import torch.nn.functional as F
  import torch_models
except ImportError:     # the benchmark-only dependency is missing
  torch = None


def torch_runner(setup: common.Setup, compile_step: bool, threads: int):
  """``run(k)`` for a PyTorch KD loop equivalent to the kd_jax step, on ``threads`` CPU threads."""
  config = setup.config
  on_gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
  device = torch.device("cuda" if on_gpu else "cpu")
  make = lambda spec: torch_models.create(spec.model, num_classes=setup.num_classes,
                                          input_shape=setup.input_shape,
                                          **spec.kwargs.to_dict()).to(device)
  torch.manual_seed(config.seed)
  teacher, student = make(config.teacher), make(config.student)
  summary = common.model_summary(setup)
  for key, twin in (("teacher_params", teacher), ("student_params", student)):
    if torch_models.count_params(twin) != summary[key]:   # not the same architecture
      raise AssertionError(f"the PyTorch twin has {torch_models.count_params(twin)} parameters, "
                           f"kd_jax's model {summary[key]} ({key})")
  teacher.eval()
  student.train()
  t = config.train
  optimizer = torch.optim.AdamW(student.parameters(), lr=t.learning_rate,
                                weight_decay=t.weight_decay)
  images = torch.from_numpy(np.array(setup.train_data.images)).permute(0, 3, 1, 2).contiguous()
  images, labels = images.to(device), torch.from_numpy(np.array(setup.train_data.labels)).long().to(device)
  mean, std = setup.preprocess.mean, setup.preprocess.std
  temperature, alpha = float(config.temperature.init), float(config.alpha)
  autocast_dtype = torch.bfloat16 if config.precision == "bf16" else None

  def step(index):
    x = (images[index].float() / 255.0 - mean) / std
    y = labels[index]
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
      with torch.no_grad():
        t_logits = teacher(x).float()
      s_logits = student(x).float()
    ce = F.cross_entropy(s_logits, y)
    kl = F.kl_div(F.log_softmax(s_logits / temperature, -1), F.log_softmax(t_logits / temperature, -1),
                  log_target=True, reduction="batchmean")
    loss = alpha * ce + (1 - alpha) * temperature**2 * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()

  if compile_step:
    step = torch.compile(step)
  n, b = setup.train_data.size, t.batch_size
  holder = {"step": 0, "epoch": -1, "order": None}

  def run(k):
    loss = None
    torch.set_num_threads(threads)   # inductor's CPU kernels also take it at compile time
    for _ in range(k):
      epoch, position = divmod(holder["step"], n // b)
      if epoch != holder["epoch"]:
        holder["epoch"], holder["order"] = epoch, np.random.default_rng([config.seed, epoch]).permutation(n)
      index = torch.from_numpy(holder["order"][position * b:(position + 1) * b]).to(device)
      loss = step(index)
      holder["step"] += 1
    float(loss)           # waits for the device
    return None

  return run, str(device)


def main(argv=None) -> dict:
  parser = common.add_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--no_compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--torch_threads", type=int, default=0,
                      help="PyTorch CPU threads; 0: on a CPU, time both its default (one per "
                           "core) and 1 and keep the faster")
  args = parser.parse_args(argv)
  steps, repeats = common.steps_and_repeats(args, quick=(20, 5), full=(100, 7))
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size,
                                         args.train_examples)
  setup = common.build(config, args.data)
  b = config.train.batch_size
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  graphdef, state = common.initial_state(setup.student, optimizer, setup.mesh)
  kd_step = engine.make_train_step(graphdef, methods.make_objective(config), optimizer,
                                  setup.preprocess, setup.teacher, setup.train_data, setup.mesh)
  kd_jax = common.step_runner(kd_step, state, common.host_batches(setup))
  # Not part of the like-for-like comparison: kd_jax's default for un-augmented inputs
  # (teacher_cache='auto') caches the teacher's outputs, which the PyTorch loop does not.
  config.teacher_cache = "memory"
  with tempfile.TemporaryDirectory() as workdir:
    cached_data = teacher_cache.attach(config, setup.teacher, setup.train_data, setup.preprocess,
                                       setup.mesh, workdir)
  _, cached_state = common.initial_state(setup.student, optimizer, setup.mesh)
  cached_step = engine.make_train_step(graphdef, methods.make_objective(config), optimizer,
                                      setup.preprocess, None, cached_data, setup.mesh)
  kd_jax_cached = common.step_runner(cached_step, cached_state, common.host_batches(setup))
  notes, torch_device, eager_rates, compile_rate, best_threads = {}, None, {}, None, None
  if torch is None:
    notes["torch"] = "PyTorch is not installed: pip install -r benchmarks/requirements.txt"
    times = common.time_steps({"kd_jax": kd_jax, "kd_jax_cached": kd_jax_cached},
                              steps=steps, repeats=repeats)
  else:
    on_cpu = jax.devices()[0].platform == "cpu"
    # PyTorch's OpenMP threads wait for each other at every op: on a CPU shared with other
    # work one thread can beat one per core many times over, so both are timed there.
    default_threads = torch.get_num_threads()
    if args.torch_threads:
      thread_options = [args.torch_threads]
    else:
      thread_options = sorted({default_threads, 1}, reverse=True) if on_cpu else [default_threads]
    runners = {"kd_jax": kd_jax, "kd_jax_cached": kd_jax_cached}
    for threads in thread_options:
      runners[f"torch_eager_{threads}t"], torch_device = torch_runner(setup, False, threads)
    times = common.time_steps(runners, steps=steps, repeats=repeats)
    eager_rates = {k: b / v["median_s"] for k, v in times.items() if k.startswith("torch_eager")}
    best = max(eager_rates, key=eager_rates.get)
    best_threads = int(best.split("_")[-1][:-1])
    if args.no_compile:
      notes["torch_compile"] = "skipped (--no_compile)"
    else:
      try:
        compiled, _ = torch_runner(setup, True, best_threads)
        compiled(3)        # compiles now, so that a failure is caught here
        # Timed beside kd_jax again, so that its ratio is taken under the same load.
        again = common.time_steps({"kd_jax": kd_jax, "torch_compile": compiled},
                                  steps=steps, repeats=repeats)
        times["torch_compile"] = again["torch_compile"]
        times["kd_jax_beside_compile"] = again["kd_jax"]
        compile_rate = b / again["torch_compile"]["median_s"]
      except Exception as e:  # pylint: disable=broad-except
        notes["torch_compile"] = f"torch.compile failed: {type(e).__name__}: {str(e)[:300]}"
  kd_rate = b / times["kd_jax"]["median_s"]
  eager_rate = max(eager_rates.values()) if eager_rates else None
  results = {
      "kd_jax_samples_per_s": kd_rate,
      "torch_eager_samples_per_s": eager_rate,
      "torch_compile_samples_per_s": compile_rate,
      "kd_jax_cached_teacher_samples_per_s": b / times["kd_jax_cached"]["median_s"],
      "device": common.device_description(),
      "torch_device": torch_device,
      "torch_version": torch.__version__ if torch is not None else None,
      "torch_threads": best_threads,
      "torch_eager_samples_per_s_by_threads": eager_rates,
      # Per-repeat ratio against the faster eager configuration (run back to back).
      "kd_jax_over_torch_eager": (common.paired_ratio(times, f"torch_eager_{best_threads}t", "kd_jax")
                                  if eager_rate else None),
      "step_seconds": {k: v["median_s"] for k, v in times.items()},
      "step_seconds_detail": times, "notes": notes,
      **common.model_summary(setup),
  }
  show = lambda v: v if v is not None else "n/a"
  common.print_table(f"kd_jax vs PyTorch ({common.device_description()}, torch on "
                     f"{torch_device or 'n/a'}, {config.teacher.model} → {config.student.model}, "
                     f"batch {b}, {config.precision})", [
      ("kd_jax samples/s", show(results["kd_jax_samples_per_s"])),
      ("kd_jax, cached teacher outputs (not like for like)",
       results["kd_jax_cached_teacher_samples_per_s"]),
      *[(f"PyTorch eager samples/s, {k.split('_')[-1][:-1]} thread(s)", v)
        for k, v in eager_rates.items()],
      ("PyTorch eager samples/s (best)", show(results["torch_eager_samples_per_s"])),
      ("PyTorch torch.compile samples/s", show(results["torch_compile_samples_per_s"])),
      ("kd_jax / PyTorch eager", show(results["kd_jax_over_torch_eager"]),
       common.target(results["kd_jax_over_torch_eager"], 1.3, at_most=False) + " (GPU target)"),
  ])
  for key, note in notes.items():
    print(f"  note ({key}): {note}")
  print("wrote", common.write_results("vs_pytorch", results, args.tag))
  return results


if __name__ == "__main__":
  main()
