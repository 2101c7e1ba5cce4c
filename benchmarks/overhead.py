r"""What kd_jax adds around the computation: loop, input pipeline, compilation, start-up.

    python benchmarks/overhead.py [--quick] [--pair default|resnet] [--precision fp32|bf16]

Measurements on the default experiment's KD step, and of the command line:

* ``library_over_bare`` — seconds per step of ``engine.fit`` (the real loop:
  batches fed an epoch at a time, metrics and NaN checks read one step late,
  JSONL and TensorBoard logging) over a bare hand-written ``jax.jit`` loop of
  the same KD computation (same models, ``losses.kd_loss``, optimiser and
  batches, an index batch transferred per step, no metrics, blocked once at
  the end). Measured on the step the default experiment runs, with the
  teacher's outputs cached (a ~1 ms step on a CPU, so the loop's host work
  shows); ``library_over_bare_uncached`` is the same with the teacher run
  inside every step. ``fit`` is timed by difference: two runs of N₁ and N₂
  steps share their fixed costs (compilation, the final evaluation and
  checkpoint), so (T₂ − T₁)/(N₂ − N₁) is the per-step cost; both stay within
  the first epoch. Target ≤ 1/0.95 ≈ 1.053 (the library at ≥ 0.95× the bare
  loop's speed). What the bare loop lacks altogether, the end-of-epoch test
  evaluation and checkpoint, is timed on its own (``epoch_end_seconds``).
* ``real_over_synthetic`` — the library's step fed as ``fit`` feeds it (an
  index batch selected from the epoch's batches, which went to the devices in
  one transfer, and gathered from the whole device-resident dataset) over the
  same step on one device-resident synthetic batch. Target ≤ 1.05.
* ``compiles_per_step_fn`` — backend compilations of the train step during a
  ``fit`` of two epochs whose last batch is ragged (target: exactly 1), with
  every compilation of the run and its seconds.
* ``cold_start_seconds`` / ``warm_start_seconds`` — wall time of a fresh
  process that loads the data, builds the models and runs the first KD step,
  with JAX's persistent compilation cache in an empty directory (cold) and
  then again (warm, the compiled step read back from the cache).
* ``cli`` — the command line's start-up on the :smoke config (`cli_start_up`):
  a first run with nothing cached, a second with everything cached, a finished
  run answering from its record (``finished_run_seconds``, target ≤ 3 s), and
  reading the training split with and without its decoded arrays cached.

Writes ``benchmarks/results/overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

STARTED = time.perf_counter()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import common  # noqa: E402

from kd_jax import engine, methods  # noqa: E402
from kd_jax.tasks import classification  # noqa: E402
from kd_jax import losses
from kd_jax.core import parallel
from kd_jax.engine import teacher_cache
from kd_jax.data import augment  # noqa: E402

STEP_FN = "jit(step_fn)"     # how jax names engine.make_train_step's function


class CompileLog:
  """Backend compilations (name, seconds) reported by jax.monitoring while ``active``."""

  def __init__(self):
    self.active = False
    self.events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(self._on_duration)

  def _on_duration(self, event, duration, **kwargs):
    if self.active and event == "/jax/core/compile/backend_compile_duration":
      self.events.append((kwargs.get("fun_name", "?"), duration))

  def __enter__(self):
    self.events, self.active = [], True
    return self

  def __exit__(self, *exc):
    self.active = False


def make_bare_step(setup: common.Setup, optimizer, train_data: classification.DeviceData):
  """A hand-written jitted KD step: gather, normalise, teacher, student, kd_loss, update.

  With ``train_data.teacher_logits`` set (a cached teacher) the teacher's logits
  are gathered by index instead of computed, as the library's cached step does.
  """
  config = setup.config
  s_graphdef, s_params, s_state = nnx.split(setup.student_model, nnx.Param, ...)
  t_graphdef = setup.teacher.graphdef
  temperature, alpha = float(config.temperature.init), float(config.alpha)
  dtype = setup.dtype

  def step(params, model_state, opt_state, teacher_variables, images, labels, cached, index):
    x = augment.normalize(images[index]).astype(dtype)
    y = labels[index]
    if cached is not None:
      t_logits = cached[index]
    else:
      teacher = nnx.merge(t_graphdef, *teacher_variables, copy=True)
      t_logits = jax.lax.stop_gradient(teacher(x, train=False).astype(np.float32))

    def loss_fn(p):
      student = nnx.merge(s_graphdef, p, model_state, copy=True)
      logits = student(x, train=True)
      loss = losses.kd_loss(logits, t_logits, y, divergence=config.divergence,
                            temperature=temperature, alpha=alpha)
      return loss, nnx.state(student, nnx.Not(nnx.Param))

    (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_state, opt_state, loss

  jitted = jax.jit(step, donate_argnums=(0, 1, 2))
  device = jax.devices()[0]
  # Host copies: the step donates its state, which must not delete the module's own arrays.
  s_params, s_state = jax.device_get((s_params, s_state))
  state = jax.device_put((s_params, s_state, optimizer.init(s_params)), device)
  data = jax.device_put((train_data.images, train_data.labels, train_data.teacher_logits), device)
  teacher_variables = jax.device_put(setup.teacher.variables, device)
  n, b = train_data.size, config.train.batch_size
  holder = {"state": state, "step": 0, "epoch": -1, "order": None}

  def run(k):
    loss = None
    for _ in range(k):
      epoch, position = divmod(holder["step"], n // b)     # drops the ragged remainder
      if epoch != holder["epoch"]:   # one shuffle per epoch
        holder["epoch"], holder["order"] = epoch, np.random.default_rng([config.seed, epoch]).permutation(n)
      index = jax.device_put(holder["order"][position * b:(position + 1) * b].astype(np.int32), device)
      *holder["state"], loss = jitted(*holder["state"], teacher_variables, *data, index)
      holder["step"] += 1
    return loss

  return run


def run_fit(setup: common.Setup, steps: int, workdir: str) -> engine.FitResult:
  """``engine.fit`` of exactly ``steps`` KD steps; returns the FitResult.

  The teacher runs in the step unless ``setup.train_data`` holds its cached outputs.
  """
  config = setup.config
  cached = setup.train_data.teacher_logits is not None
  t = config.train.copy_and_resolve_references()
  steps_per_epoch = math.ceil(setup.train_data.size / t.batch_size)
  t.epochs = steps / steps_per_epoch
  pairs = {}
  module = methods.Student(setup.student_model, pairs, {}, rngs=nnx.Rngs(config.seed + 1))
  return engine.fit(name="bench", module=module, objective=methods.make_objective(config, pairs),
                   train_config=t, train_data=setup.train_data, test_data=setup.test_data,
                   task=setup.preprocess, mesh=setup.mesh, workdir=workdir,
                   seed=config.seed, teacher=None if cached else setup.teacher,
                   log_every_steps=config.log_every_steps,
                   show_progress=False)


def library_vs_bare(setup: common.Setup, n1: int, n2: int, repeats: int) -> dict:
  """``engine.fit`` per step vs the bare loop, and between them the library's step in a plain loop.

  The middle measurement splits the overhead into the step function's (masking,
  metrics, shardings) and the loop's (batches fed an epoch at a time, reading
  metrics one step late, NaN checks, logging). Each repeat runs all three back
  to back. With cached teacher outputs in ``setup.train_data`` all three gather
  them instead of running the teacher.
  """
  config = setup.config
  cached = setup.train_data.teacher_logits is not None
  optimizer = engine.make_optimizer(config.train, total_steps=n2)
  bare = make_bare_step(setup, optimizer, setup.train_data)
  graphdef, state = common.initial_state(setup.student, optimizer, setup.mesh)
  library_step = common.step_runner(
      engine.make_train_step(graphdef, methods.make_objective(config), optimizer,
                            setup.preprocess, None if cached else setup.teacher,
                            setup.train_data, setup.mesh,
                            log_every_steps=config.log_every_steps),     # as fit logs
      state, common.host_batches(setup))
  jax.block_until_ready((bare(2), library_step(2)))
  times = {"fit": [], "library_step_plain_loop": [], "bare": []}
  for _ in range(repeats):
    with tempfile.TemporaryDirectory() as tmp:
      short = run_fit(setup, n1, os.path.join(tmp, "a"))
      long = run_fit(setup, n2, os.path.join(tmp, "b"))
    times["fit"].append((long.train_seconds - short.train_seconds) / (n2 - n1))
    for name, run in (("library_step_plain_loop", library_step), ("bare", bare)):
      start = time.perf_counter()
      jax.block_until_ready(run(n2 - n1))
      times[name].append((time.perf_counter() - start) / (n2 - n1))
  median = {k: statistics.median(v) for k, v in times.items()}
  paired = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))
  return {"library_step_seconds": median["fit"], "bare_step_seconds": median["bare"],
          "library_over_bare": paired("fit", "bare"),
          "step_fn_over_bare": paired("library_step_plain_loop", "bare"),
          "loop_over_step_fn": paired("fit", "library_step_plain_loop"),
          "median_s": median, "repeats_s": times, "fit_steps": [n1, n2]}


def real_vs_synthetic(setup: common.Setup, steps: int, repeats: int) -> dict:
  config, mesh = setup.config, setup.mesh
  b = config.train.batch_size
  optimizer = engine.make_optimizer(config.train, total_steps=10_000)
  objective = methods.make_objective(config)
  graphdef, real_state = common.initial_state(setup.student, optimizer, mesh)
  _, synthetic_state = common.initial_state(setup.student, optimizer, mesh)
  logging = dict(log_every_steps=config.log_every_steps)     # as fit logs
  real_step = engine.make_train_step(graphdef, objective, optimizer, setup.preprocess,
                                    setup.teacher, setup.train_data, mesh, **logging)
  rng = np.random.default_rng(1)
  synthetic = classification.DeviceData(*parallel.put_replicated(
      (rng.integers(0, 256, (b, *setup.input_shape), dtype=np.uint8),
       rng.integers(0, setup.num_classes, b).astype(np.int32)), mesh))
  synthetic_step = engine.make_train_step(graphdef, objective, optimizer, setup.preprocess,
                                         setup.teacher, synthetic, mesh, **logging)
  sharding = parallel.batch_sharding(mesh)
  fixed_batch = [parallel.put_sharded({"index": np.arange(b, dtype=np.int32),
                                       "mask": np.ones(b, bool)},
                                      {"index": sharding, "mask": sharding})]
  times = common.time_steps({
      "real": common.step_runner(real_step, real_state, common.host_batches(setup)),
      "synthetic": common.step_runner(synthetic_step, synthetic_state, fixed_batch),
  }, steps=steps, repeats=repeats)
  return {"real_step_seconds": times["real"]["median_s"],
          "synthetic_step_seconds": times["synthetic"]["median_s"],
          "real_over_synthetic": common.paired_ratio(times, "real", "synthetic"),
          "detail": times}


def epoch_end(setup: common.Setup, repeats: int) -> dict:
  """Seconds of what ``engine.fit`` does at each epoch's end: a test evaluation and a checkpoint."""
  from kd_jax.engine.checkpoint import Checkpointer
  optimizer = engine.make_optimizer(setup.config.train, total_steps=1000)
  graphdef, state = common.initial_state(setup.student, optimizer, setup.mesh)
  predict = engine.make_predict(graphdef, setup.preprocess, setup.mesh)
  variables = (state.params, state.model_state)
  eval_batch = setup.config.train.eval_batch_size
  times = {"evaluate": [], "checkpoint": []}
  with tempfile.TemporaryDirectory() as tmp:
    checkpointer = Checkpointer(tmp)
    for r in range(repeats + 1):         # the first round compiles and creates directories
      start = time.perf_counter()
      engine.predict_all(predict, variables, setup.test_data, eval_batch, setup.mesh)
      evaluated = time.perf_counter()
      checkpointer.save(r, state, {"history": []})
      if r:
        times["evaluate"].append(evaluated - start)
        times["checkpoint"].append(time.perf_counter() - evaluated)
    checkpointer.close()
  median = {k: statistics.median(v) for k, v in times.items()}
  return {"epoch_end_seconds": median["evaluate"] + median["checkpoint"],
          "evaluate_seconds": median["evaluate"], "checkpoint_seconds": median["checkpoint"],
          "test_examples": setup.test_data.size, "repeats_s": times}


def compiles(setup: common.Setup, compile_log: CompileLog) -> dict:
  """A ``fit`` of two epochs over 3 full batches + a ragged one: how often is the step compiled?"""
  b = setup.config.train.batch_size
  n = 3 * b + b // 8
  ragged = classification.DeviceData(setup.train_data.images[:n], setup.train_data.labels[:n])
  subset = common.Setup(**{**setup.__dict__, "train_data": ragged})
  with tempfile.TemporaryDirectory() as tmp, compile_log:
    fit = run_fit(subset, 8, os.path.join(tmp, "run"))
  by_name = {}
  for name, seconds in compile_log.events:
    count, total = by_name.get(name, (0, 0.0))
    by_name[name] = (count + 1, total + seconds)
  return {"compiles_per_step_fn": by_name.get(STEP_FN, (0, 0.0))[0],
          "step_compiles_reported_by_fit": fit.step_compiles,
          "first_step_seconds": fit.compile_seconds,
          "compiles_in_run": len(compile_log.events),
          "compile_seconds_in_run": sum(s for _, s in compile_log.events),
          "compiles_by_function": {k: {"count": c, "seconds": s} for k, (c, s) in by_name.items()},
          "ragged_run": {"examples": n, "batch_size": b, "steps": fit.steps}}


def startup_child(args) -> None:
  """The measured process of the start-up benchmark: data, models, the first KD step."""
  jax.config.update("jax_compilation_cache_dir", args.cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  hits = []
  jax.monitoring.register_event_listener(
      lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
  imported = time.perf_counter()
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size,
                                            args.train_examples)
  setup = common.build(config, args.data)
  built = time.perf_counter()
  optimizer = engine.make_optimizer(config.train, total_steps=1000)
  graphdef, state = common.initial_state(setup.student, optimizer, setup.mesh)
  step = engine.make_train_step(graphdef, methods.make_objective(config), optimizer,
                               setup.preprocess, setup.teacher, setup.train_data, setup.mesh,
                               log_every_steps=config.log_every_steps)
  batch = common.device_batches(setup, 1)[0]
  jax.block_until_ready(step(state, batch, jax.random.key(0)))
  done = time.perf_counter()
  print(json.dumps({"import_seconds": imported - STARTED, "setup_seconds": built - imported,
                    "first_step_seconds": done - built, "cache_hits": len(hits)}))


def start_up(args) -> dict:
  passed = ["--pair", args.pair, "--precision", args.precision, "--data", args.data,
            "--train_examples", str(args.train_examples)]
  if args.batch_size:
    passed += ["--batch_size", str(args.batch_size)]
  runs = []
  with tempfile.TemporaryDirectory() as cache_dir:
    for _ in range(2):
      start = time.perf_counter()
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--startup_child",
                            "--cache_dir", cache_dir, *passed],
                           check=True, capture_output=True, text=True)
      wall = time.perf_counter() - start
      runs.append({"wall_seconds": wall, **json.loads(out.stdout.strip().splitlines()[-1])})
  return {"cold_start_seconds": runs[0]["wall_seconds"], "warm_start_seconds": runs[1]["wall_seconds"],
          "cold": runs[0], "warm": runs[1]}


def cli_start_up() -> dict:
  """Start-up of the command line on the :smoke config, each in a fresh process.

  * ``first_run_seconds`` — ``python -m kd_jax.main`` with nothing cached: an empty
    compilation cache, no trained teacher or baseline, no decoded dataset (a copy
    of the prepared TFDS files in a temporary data directory);
  * ``second_run_seconds`` — the same config in a new workdir: the teacher,
    baseline, compiled programs and decoded arrays are all cached;
  * ``finished_run_seconds`` — the first run's workdir again: the finished run
    answers from its record;
  * ``decode_seconds`` / ``decoded_load_seconds`` — reading the training split
    when its PNGs must be decoded, and when the decoded arrays are cached.
  """
  import shutil
  from kd_jax import data
  prepared = os.path.join(data.default_data_dir(), "fashion_mnist")
  with tempfile.TemporaryDirectory() as tmp:
    # As a user runs it: TFDS when it is prepared (benchmarks/common.py reads IDX files).
    env = dict(os.environ, KD_JAX_DATA_DIR=os.path.join(tmp, "tfds"), KD_JAX_DATA_SOURCE="auto")
    source = "idx"
    if os.path.isdir(prepared):
      source = "tfds"
      shutil.copytree(prepared, os.path.join(tmp, "tfds", "fashion_mnist"),
                      ignore=shutil.ignore_patterns("kd_jax_decoded"))
    else:
      env["KD_JAX_DATA_SOURCE"] = "idx"

    def timed(args):
      start = time.perf_counter()
      subprocess.run(args, check=True, capture_output=True, text=True, env=env, cwd=common.ROOT)
      return time.perf_counter() - start

    load = [sys.executable, "-c", "from kd_jax import data; data.load_split('fashion_mnist', 'train')"]
    decode = timed(load)
    decoded = timed(load)
    cli = lambda workdir: [
        sys.executable, "-m", "kd_jax.main", "--config=experiments/fashion_mnist/kd.py:smoke",
        f"--workdir={os.path.join(tmp, workdir)}", f"--teacher_dir={os.path.join(tmp, 'teachers')}",
        f"--compilation_cache_dir={os.path.join(tmp, 'xla')}", "--noprogress"]
    shutil.rmtree(os.path.join(tmp, "tfds", "fashion_mnist", "3.0.1", "kd_jax_decoded"),
                  ignore_errors=True)
    first = timed(cli("a"))
    second = timed(cli("b"))
    finished = timed(cli("a"))
  return {"source": source, "first_run_seconds": first, "second_run_seconds": second,
          "finished_run_seconds": finished, "decode_seconds": decode,
          "decoded_load_seconds": decoded}


def main(argv=None) -> dict:
  parser = common.add_flags(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
  parser.add_argument("--startup_child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.startup_child:
    startup_child(args)
    return {}
  steps, repeats = common.steps_and_repeats(args, quick=(20, 5), full=(100, 7))
  compile_log = CompileLog()
  config = common.load_experiment_config(args.pair, args.precision, args.batch_size,
                                            args.train_examples)
  config.dataset.test_examples = 1000       # the final evaluation is a fixed cost anyway
  setup = common.build(config, args.data)
  # Both fit runs stay inside the first epoch, so their only evaluation and checkpoint
  # are the final ones, which the difference cancels (end-of-epoch costs: epoch_end_seconds).
  steps_per_epoch = math.ceil(setup.train_data.size / config.train.batch_size)
  n1 = 10 if args.quick else 20
  n2 = min(n1 + 5 * steps, steps_per_epoch - 1)

  compiled = compiles(setup, compile_log)
  loop_uncached = library_vs_bare(setup, n1, n2, max(3, repeats // 2))
  cached_config = config.copy_and_resolve_references()
  cached_config.teacher_cache = "memory"
  with tempfile.TemporaryDirectory() as tmp:
    cached_data = teacher_cache.attach(cached_config, setup.teacher, setup.train_data,
                                       setup.preprocess, setup.mesh, tmp)
  # All repeats for the cached step: it is cheap, and at ~1 ms a step the most load-sensitive.
  loop = library_vs_bare(common.Setup(**{**setup.__dict__, "train_data": cached_data}),
                         n1, n2, repeats)
  pipeline = real_vs_synthetic(setup, steps, repeats)
  epoch_costs = epoch_end(setup, repeats)
  startup = start_up(args)
  cli = cli_start_up()
  results = {
      "library_over_bare": loop["library_over_bare"],
      "library_over_bare_uncached": loop_uncached["library_over_bare"],
      "real_over_synthetic": pipeline["real_over_synthetic"],
      "compiles_per_step_fn": compiled["compiles_per_step_fn"],
      "warm_start_seconds": startup["warm_start_seconds"],
      "cold_start_seconds": startup["cold_start_seconds"],
      "epoch_end_seconds": epoch_costs["epoch_end_seconds"],
      "finished_run_seconds": cli["finished_run_seconds"],
      "loop": loop, "loop_uncached": loop_uncached, "epoch_end": epoch_costs,
      "input_pipeline": pipeline, "compilation": compiled, "start_up": startup, "cli": cli,
      **common.model_summary(setup),
  }
  common.print_table(f"kd_jax overheads ({common.device_description()}, "
                     f"{config.teacher.model} → {config.student.model}, batch "
                     f"{config.train.batch_size}, {config.precision})", [
      ("cached teacher: engine.fit step (ms)", loop["library_step_seconds"] * 1e3),
      ("cached teacher: bare jax.jit loop step (ms)", loop["bare_step_seconds"] * 1e3),
      ("cached teacher: library / bare (time)", loop["library_over_bare"],
       common.target(loop["library_over_bare"], 1 / 0.95)),
      ("  library step in a plain loop / bare", loop["step_fn_over_bare"]),
      ("  engine.fit / library step in a plain loop", loop["loop_over_step_fn"]),
      ("teacher in the step: engine.fit step (ms)", loop_uncached["library_step_seconds"] * 1e3),
      ("teacher in the step: bare loop step (ms)", loop_uncached["bare_step_seconds"] * 1e3),
      ("teacher in the step: library / bare (time)", loop_uncached["library_over_bare"],
       common.target(loop_uncached["library_over_bare"], 1 / 0.95)),
      (f"epoch end: test evaluation ({epoch_costs['test_examples']} images) + checkpoint (ms)",
       epoch_costs["epoch_end_seconds"] * 1e3,
       f"{epoch_costs['evaluate_seconds'] * 1e3:.1f} + {epoch_costs['checkpoint_seconds'] * 1e3:.1f}"),
      ("real-data step (ms)", pipeline["real_step_seconds"] * 1e3),
      ("synthetic device-resident step (ms)", pipeline["synthetic_step_seconds"] * 1e3),
      ("real / synthetic (time)", pipeline["real_over_synthetic"], common.target(pipeline["real_over_synthetic"], 1.05)),
      ("train-step compilations (2 epochs, ragged)", compiled["compiles_per_step_fn"],
       common.target(compiled["compiles_per_step_fn"], 1)),
      ("all compilations in that run", compiled["compiles_in_run"]),
      ("their compile seconds", compiled["compile_seconds_in_run"]),
      ("cold start, empty compilation cache (s)", startup["cold_start_seconds"]),
      ("warm start, persistent cache (s)", startup["warm_start_seconds"]),
      ("  first step cold / warm (s)", f"{startup['cold']['first_step_seconds']:.2f} / "
                                       f"{startup['warm']['first_step_seconds']:.2f}"),
      ("  persistent-cache hits cold / warm", f"{startup['cold']['cache_hits']} / "
                                              f"{startup['warm']['cache_hits']}"),
      (f"smoke CLI run, nothing cached ({cli['source']} data) (s)", cli["first_run_seconds"]),
      ("smoke CLI run, everything cached (s)", cli["second_run_seconds"]),
      ("finished run answering from its record (s)", cli["finished_run_seconds"],
       common.target(cli["finished_run_seconds"], 3.0)),
      ("training split: decoding / decoded arrays cached (s)",
       f"{cli['decode_seconds']:.2f} / {cli['decoded_load_seconds']:.2f}"),
  ])
  print("wrote", common.write_results("overhead", results, args.tag))
  return results


if __name__ == "__main__":
  main()
