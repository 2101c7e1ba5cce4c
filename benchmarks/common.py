"""Shared pieces of the benchmarks: the teacher/student pair, timing, FLOPs, JSON output.

Every benchmark builds its models and steps from kd_jax's public pieces
(``classification.build_model``, ``classification.load_data``, ``engine.make_train_step``,
``methods.make_objective`` ...), times them with warm-up, ``block_until_ready``
and the median of repeats, prints a table and writes
``benchmarks/results/<script>[-<tag>].json``.

Pairs (``--pair``):

* ``default`` — the default experiment's pair (experiments/fashion_mnist/kd.py):
  a strided CNN teacher with a flatten head and an MLP student. Tiny: on a GPU
  its steps are launch-bound.
* ``resnet``  — the KD literature's resnet32x4 → resnet8x4 (CRD benchmark), on
  the same 28×28 images: large enough to keep a GPU busy.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runnable from a checkout without `pip install -e .`.
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
# The IDX reader needs neither TensorFlow nor TFDS, whose import would blur start-up timings.
os.environ.setdefault("KD_JAX_DATA_SOURCE", "idx")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from kd_jax import data as data_lib  # noqa: E402
from kd_jax import engine, methods  # noqa: E402
from kd_jax.core import parallel
from kd_jax.tasks import classification  # noqa: E402

RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
PAIRS = ("default", "resnet")


def add_flags(parser: argparse.ArgumentParser, pairs=PAIRS) -> argparse.ArgumentParser:
  parser.add_argument("--quick", action="store_true",
                      help="fewer steps and repeats (a 2-core CPU run in minutes)")
  parser.add_argument("--pair", choices=pairs, default="default")
  parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="default: the experiment's (128)")
  parser.add_argument("--data", choices=("auto", "real", "synthetic"), default="auto",
                      help="real Fashion-MNIST, random images of its shape, or real when present")
  parser.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
  parser.add_argument("--repeats", type=int, default=None)
  parser.add_argument("--train_examples", type=int, default=0,
                      help="use the first N training examples (0: all); bounds the teacher-cache pass")
  parser.add_argument("--tag", default="", help="results file suffix: <script>-<tag>.json")
  return parser


def steps_and_repeats(args, *, quick=(20, 3), full=(100, 5)) -> tuple[int, int]:
  steps, repeats = quick if args.quick else full
  return args.steps or steps, args.repeats or repeats


def load_experiment_config(pair: str = "default", precision: str = "fp32",
                           batch_size: int | None = None, train_examples: int = 0):
  """The default experiment's config (experiments/fashion_mnist/kd.py), with the chosen pair."""
  path = os.path.join(ROOT, "experiments", "fashion_mnist", "kd.py")
  spec = importlib.util.spec_from_file_location("kd_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  if pair == "resnet":
    config.teacher.model, config.teacher.kwargs = "resnet32x4", {}
    config.student.model, config.student.kwargs = "resnet8x4", {}
  config.precision = precision
  if batch_size:
    config.train.batch_size = batch_size
  config.dataset.train_examples = train_examples
  config.baseline = False
  return config


@dataclasses.dataclass
class Setup:
  """Everything a benchmark step needs, built once."""
  config: Any
  mesh: Any
  train_data: classification.DeviceData
  test_data: classification.DeviceData
  data_source: str              # "fashion_mnist" or "synthetic"
  num_classes: int
  input_shape: tuple
  teacher: engine.Teacher
  teacher_module: nnx.Module
  student_model: nnx.Module     # the raw student (student-only steps)
  student: methods.Student      # the KD wrapper (same computation for logit KD)
  preprocess: classification.Classification     # the classification task: the batches' preprocessing
  dtype: Any


def build(config, data_mode: str = "auto") -> Setup:
  """Data on the devices and randomly initialised models (timing needs no trained weights)."""
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
  dtype = jnp.bfloat16 if config.precision == "bf16" else jnp.float32
  train_data = test_data = num_classes = input_shape = None
  source = "synthetic"
  if data_mode != "synthetic":
    try:
      train_data, test_data, _, num_classes, input_shape = classification.load_data(config, mesh)
      source = config.dataset.name
    except data_lib.DatasetNotFoundError:
      if data_mode == "real":
        raise
  if train_data is None:   # random images with Fashion-MNIST's shapes
    rng = np.random.default_rng(0)
    n = config.dataset.train_examples or 60000
    num_classes, input_shape = 10, (28, 28, 1)
    images = rng.integers(0, 256, (n, *input_shape), dtype=np.uint8)
    labels = rng.integers(0, num_classes, n).astype(np.int32)
    train_data = classification.DeviceData(*parallel.put_replicated((images, labels), mesh))
    test_n = config.dataset.test_examples or 10000
    test_data = classification.DeviceData(*parallel.put_replicated((images[:test_n], labels[:test_n]), mesh))
  make = lambda spec, seed: classification.build_model(spec, num_classes=num_classes,
                                                   input_shape=input_shape, seed=seed, dtype=dtype)
  teacher_module = make(config.teacher, config.teacher.seed)
  student_model = make(config.student, config.seed)
  t_graphdef, t_params, t_state = engine.split_module(teacher_module)
  teacher = engine.Teacher(t_graphdef, parallel.put_replicated((t_params, t_state), mesh))
  student = methods.Student(student_model, {}, {}, rngs=nnx.Rngs(config.seed + 1))
  d = config.dataset
  preprocess = classification.Classification(data_lib.augment.FASHION_MNIST_MEAN,
                                data_lib.augment.FASHION_MNIST_STD, d.crop_padding, d.flip, dtype)
  return Setup(config, mesh, train_data, test_data, source, num_classes, tuple(input_shape), teacher,
               teacher_module, student_model, student, preprocess, dtype)


@dataclasses.dataclass
class LMSetup:
  """The arithmetic experiment's GPT pair (experiments/arithmetic/token_kd.py) ready to time."""
  config: Any
  mesh: Any
  prepared: Any                 # kd_jax.tasks.Prepared
  teacher_module: nnx.Module
  student_model: nnx.Module
  teacher: engine.Teacher
  batches: list                 # 8 device batches of distinct rows
  teacher_weights: str          # "random" or the cached teacher's directory


def lm_setup(precision: str = "fp32", batch_size: int = 0, *, load_teacher: bool = False,
             **overrides) -> LMSetup:
  """Randomly initialised models (timing needs no trained weights) and device batches.

  ``load_teacher``: load the experiment's trained teacher from the default teacher
  cache when it is there. ``overrides``: top-level config fields.
  """
  from kd_jax import tasks  # noqa: E402
  from kd_jax.run import teachers  # noqa: E402
  from kd_jax.config import cli
  from kd_jax.run import pipeline as experiment
  config = cli.load_config_file(os.path.join(ROOT, "experiments", "arithmetic", "token_kd.py"))
  config.precision = precision
  if batch_size:
    config.train.batch_size = batch_size
  for key, value in overrides.items():
    config[key] = value
  mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
  dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
  prepared = tasks.prepare(config, mesh, dtype)
  teacher_module = prepared.build(config.teacher, config.teacher.seed, "teacher")
  student_model = prepared.build(config.student, config.seed)
  weights = "random"
  if load_teacher:
    cached = os.path.join(os.path.expanduser(experiment.DEFAULT_TEACHER_DIR),
                          teachers.teacher_key(config))
    if teachers.load(cached, teacher_module, num_classes=prepared.num_outputs) is not None:
      weights = cached
  t_graphdef, t_params, t_state = engine.split_module(teacher_module)
  teacher = engine.Teacher(t_graphdef, parallel.put_replicated((t_params, t_state), mesh))
  rng, b = np.random.default_rng(0), config.train.batch_size
  sharding = parallel.batch_sharding(mesh)
  batches = [parallel.put_sharded(
      {"index": rng.choice(prepared.train_data.size, b, replace=False).astype(np.int32),
       "mask": np.ones(b, bool)}, {"index": sharding, "mask": sharding}) for _ in range(8)]
  return LMSetup(config, mesh, prepared, teacher_module, student_model, teacher, batches, weights)


def initial_state(module: nnx.Module, optimizer, mesh):
  """A fresh replicated :class:`engine.TrainState` for ``module``."""
  graphdef, params, model_state = engine.split_module(module)
  state = engine.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                           opt_state=optimizer.init(params))
  return graphdef, parallel.put_replicated(state, mesh)


def device_batches(setup: Setup, count: int, seed: int = 0) -> list:
  """``count`` distinct full batches already on the devices (no host work while timing)."""
  b = setup.config.train.batch_size
  rng = np.random.default_rng(seed)
  sharding = parallel.batch_sharding(setup.mesh)
  return [parallel.put_sharded(
      {"index": rng.choice(setup.train_data.size, b, replace=False).astype(np.int32),
       "mask": np.ones(b, bool)}, {"index": sharding, "mask": sharding}) for _ in range(count)]


def host_batches(setup: Setup, seed: int = 0):
  """Endless batches fed as ``engine.fit`` feeds them (:class:`engine.BatchFeeder`)."""
  feeder = engine.BatchFeeder(setup.train_data.size, setup.config.train.batch_size, seed,
                             setup.mesh)
  step = 0
  while True:
    yield feeder(step)
    step += 1


def time_steps(runners: dict[str, Callable[[int], Any]], *, steps: int, repeats: int,
               warmup: int = 2, min_repeat_seconds: float = 0.3) -> dict[str, dict]:
  """Median seconds per step of each ``runners[name](k)`` (runs k steps, returns something to block on).

  Every repeat runs at least ``steps`` steps of a runner back to back — more for
  fast steps, so that a repeat lasts ``min_repeat_seconds`` — and blocks once at
  the end, so dispatch overlaps device work as in a training loop. Runners take
  turns within a repeat, so a change of machine load hits them all alike; ratios
  are best taken per repeat (:func:`paired_ratio`).
  """
  counts = {}
  for name, run in runners.items():
    jax.block_until_ready(run(warmup))     # compiles
    start = time.perf_counter()
    jax.block_until_ready(run(steps))
    per_step = (time.perf_counter() - start) / steps
    counts[name] = max(steps, math.ceil(min_repeat_seconds / max(per_step, 1e-9)))
  per_step = {name: [] for name in runners}
  for r in range(repeats):
    # Alternate the order, so that no runner always follows the same neighbour.
    for name, run in (list(runners.items()) if r % 2 == 0 else list(runners.items())[::-1]):
      start = time.perf_counter()
      jax.block_until_ready(run(counts[name]))
      per_step[name].append((time.perf_counter() - start) / counts[name])
  return {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                 "steps_per_repeat": counts[name], "repeats_s": t}
          for name, t in per_step.items()}


def median_seconds(fn: Callable, *args, repeats: int) -> float:
  """Median seconds of ``fn(*args)`` over ``repeats`` calls, after a compiling call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def paired_ratio(times: dict, numerator: str, denominator: str) -> float:
  """Median over repeats of the per-repeat time ratio (the two ran back to back in each)."""
  return statistics.median(a / b for a, b in zip(times[numerator]["repeats_s"],
                                                  times[denominator]["repeats_s"]))


def step_runner(step: engine.TrainStep, state, batches, seed: int = 0):
  """``run(k)``: k train steps from the current state; keeps the (donated) state threaded.

  Passes one replicated base key, as ``engine.fit`` does (the step folds in its step count).
  """
  holder = {"state": state, "i": 0}
  key = engine.replicated_key(seed, state.step.sharding.mesh)
  is_list = isinstance(batches, list)

  def run(k):
    metrics = None
    for _ in range(k):
      batch = batches[holder["i"] % len(batches)] if is_list else next(batches)
      holder["state"], metrics = step(holder["state"], batch, key)
      holder["i"] += 1
    return metrics

  return run


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def cpu_flops(fn: Callable, *args) -> float:
  """FLOPs of ``fn(*args)`` from XLA's cost analysis of its CPU lowering.

  The CPU lowering counts convolutions and matmuls on every host; GPU lowerings
  hand them to library calls whose FLOPs the analysis may not see.
  """
  lowered = jax.jit(fn).trace(*abstract(args)).lower(lowering_platforms=("cpu",))
  return float(lowered.cost_analysis()["flops"])


def forward_flops(module: nnx.Module, batch_size: int, input_shape, dtype, *, train_mode: bool):
  graphdef, params, model_state = engine.split_module(module)
  x = jnp.zeros((batch_size, *input_shape), dtype)
  fn = lambda p, s, x: engine.forward(graphdef, p, s, x, train=train_mode)[0][0]
  return cpu_flops(fn, params, model_state, x)


def matmul_flops_per_second(dtype, n: int, repeats: int = 7) -> float:
  """Best measured dense matmul rate (2n³ FLOPs per n×n product) on the default device.

  The fastest repeat: the rate the device reaches, the denominator of an MFU.
  """
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    times.append(time.perf_counter() - start)
  return 2 * n**3 / min(times)


def device_description() -> str:
  d = jax.devices()[0]
  kind = d.device_kind if d.platform != "cpu" else (_cpu_model() or platform.processor() or "cpu")
  return f"{jax.device_count()}x {d.platform}: {kind}"


def _cpu_model() -> str | None:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return None


def machine() -> dict:
  """Where and under what load the numbers were taken."""
  info = {"device": device_description(), "platform": jax.devices()[0].platform,
          "device_count": jax.device_count(), "host_cpus": os.cpu_count(),
          "jax": jax.__version__, "python": platform.python_version()}
  if hasattr(os, "getloadavg"):
    info["load_average_1m"] = round(os.getloadavg()[0], 2)
  return info


def write_results(script: str, payload: dict, tag: str = "") -> str:
  """Writes ``benchmarks/results/<script>[-<tag>].json`` with the command and the machine."""
  os.makedirs(RESULTS_DIR, exist_ok=True)
  name = f"{script}-{tag}" if tag else script
  path = os.path.join(RESULTS_DIR, f"{name}.json")
  record = {**payload, "command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]),
            "machine": machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  with open(path, "w") as f:
    json.dump(record, f, indent=2, default=float)
  return path


def print_table(title: str, rows: list[tuple]) -> None:
  """Rows of (label, value[, note]); floats printed with 4 significant digits."""
  print(f"\n{title}\n" + "-" * len(title))
  for row in rows:
    label, value, *note = row
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"  {label:<44} {shown:>14}  {note[0] if note else ''}")


def target(value: float | None, bound: float, *, at_most: bool = True) -> str:
  if value is None:
    return "n/a"
  ok = value <= bound if at_most else value >= bound
  return f"{'met' if ok else 'MISSED'} (target {'<=' if at_most else '>='} {bound:g})"


def model_summary(setup: Setup) -> dict:
  from kd_jax.tasks import metrics as metrics_lib
  count = lambda m: metrics_lib.count_params(nnx.state(m, nnx.Param))
  return {"pair": {"teacher": setup.config.teacher.model,
                   "teacher_kwargs": setup.config.teacher.kwargs.to_dict(),
                   "student": setup.config.student.model,
                   "student_kwargs": setup.config.student.kwargs.to_dict()},
          "teacher_params": count(setup.teacher_module),
          "student_params": count(setup.student_model),
          "batch_size": setup.config.train.batch_size, "precision": setup.config.precision,
          "data": setup.data_source, "train_examples": setup.train_data.size}

