"""One experiment, end to end: ``run_experiment(config, workdir) -> results``.

Phases, each resumable and skipped once finished:

1. **teacher**  — loaded from ``teacher.checkpoint`` or the teacher cache, else
   trained (hard labels) and cached for every later run and sweep.
2. **baseline** — with ``baseline=True``, the student trained from scratch with
   the same budget. It depends neither on the method nor on its hyper-parameters,
   so it is cached next to the teacher cache (``TEACHER_DIR/../baselines/<key>``,
   see :func:`kd_jax.run.teachers.baseline_key`) and shared by every point of a sweep
   with the same seed; ``workdir/baseline/result.json`` is a copy.
3. **student**  — the student distilled with ``method`` (``workdir/student``).

``results.json`` (docs/results.md) is written by process 0 at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import nnx

from kd_jax.run import validation
from kd_jax import config as config_lib
from kd_jax import methods
from kd_jax.engine import feeding
from kd_jax.core import files, parallel
from kd_jax.core import fingerprint as source_code
from kd_jax.core import identity as identity_lib
from kd_jax.engine import run_log
from kd_jax.engine import teacher_cache
from kd_jax.llm import compute
from kd_jax.run import teachers
from kd_jax import engine
from kd_jax import tasks
from kd_jax.tasks import metrics as metrics_lib
from kd_jax.config import records
from kd_jax.run import workdir as workdir_lib
from kd_jax.models import hf_checkpoint
from kd_jax.core.errors import ConfigError

DEFAULT_TEACHER_DIR = os.path.join("~", ".cache", "kd_jax", "teachers")
RESULT_FILE = "result.json"   # a finished phase's report, in its directory


def _dtype(config):
  return jnp.bfloat16 if config.precision == "bf16" else jnp.float32


def host_device():
  """This process's CPU device (host memory), or None when JAX runs without the CPU backend."""
  try:
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return None


def _write_json(path: str, obj) -> None:
  if jax.process_index() == 0:    # every process computes the same results; one writes them
    files.write_json(path, obj, default=float)


def _fit_report(fit: engine.FitResult, module, headline: str) -> dict:
  """The task-independent fields of a trained phase's report: size, best, history, timing."""
  return {
      "params": metrics_lib.count_params(nnx.state(module, nnx.Param)),
      f"best_{headline}": fit.best,
      "history": fit.history,
      "wall_seconds": fit.wall_seconds,
      "train_seconds": fit.train_seconds,
      "eval_seconds": fit.eval_seconds,
      "checkpoint_seconds": fit.checkpoint_seconds,
      "steps": fit.steps,
      "resumed_from_step": fit.resumed_from_step,
      "steps_per_second": fit.steps_per_second,
      "compile_seconds": fit.compile_seconds,
      "step_compiles": fit.step_compiles,
  }


def shared_entry(path: str):
  """A lock held while this run loads or produces the shared cache entry ``path`` (a
  teacher, a shared baseline): concurrent runs take turns (:func:`kd_jax.core.files.exclusive`).
  A multi-process run takes none: its processes decide together, and a lock held by one
  of them would stall the others' collectives."""
  return files.exclusive(path) if jax.process_count() == 1 else contextlib.nullcontext()


def obtain_teacher(config, *, module, prepared, mesh, teacher_dir, show_progress=True) -> dict:
  """Loads the teacher into ``module`` (from a checkpoint or the cache) or trains and caches it.

  Returns its info; ``"name"`` is what the run's caches are keyed by: the resolved
  checkpoint path, or the trained teacher's key (:func:`kd_jax.run.teachers.teacher_key`).
  """
  if config.teacher.checkpoint:
    source = hf_checkpoint.resolve(config.teacher.checkpoint)
    if hf_checkpoint.is_checkpoint(source):   # the task built it from the checkpoint's weights
      return {"model": config.teacher.model, "params": module.num_params(), "source": source,
              "name": source, "cached": True, "format": "huggingface"}
    info = teachers.load(source, module, num_classes=prepared.num_outputs)
    if info is None:
      raise ConfigError("teacher.checkpoint",
                        f"teacher.checkpoint: no saved teacher ({teachers.TEACHER_FILE}) in {source}")
    return {**info, "source": source, "name": source, "cached": True}
  key = teachers.teacher_key(config)
  source = os.path.join(os.path.expanduser(teacher_dir), key)
  # The runs of a parallel sweep that need this teacher take turns: one trains it, the
  # others then load it.
  with shared_entry(source):
    info = teachers.load(source, module, num_classes=prepared.num_outputs)
    if info is not None:
      return {**info, "source": source, "name": key, "cached": True}
    logging.info("training the teacher %s (cached in %s)", config.teacher.model, source)
    objective = methods.make_objective(config_lib.with_method(config, "none"))
    fit = engine.fit(name="teacher", module=module, objective=objective,
                    train_config=config.teacher.train, train_data=prepared.train_data,
                    test_data=(prepared.test_data if prepared.teacher_test_data is None
                               else prepared.teacher_test_data),
                    task=prepared.teacher_task or prepared.task, mesh=mesh,
                    workdir=source + ".train",
                    seed=config.teacher.seed, show_progress=show_progress,
                    identity=teachers.teacher_identity(config),
                    checkpoint_every_steps=config.checkpoint.every_steps,
                    keep_checkpoints=config.checkpoint.keep, log_every_steps=config.log_every_steps)
    nnx.update(module, nnx.state(fit.module))
    info = {
        "model": config.teacher.model, "kwargs": config.teacher.kwargs.to_dict(),
        "num_classes": prepared.num_outputs,
        "params": metrics_lib.count_params(nnx.state(module, nnx.Param)),
        **fit.final, f"best_{prepared.task.headline}": fit.best, "train_seconds": fit.wall_seconds,
        "steps": fit.steps, "key": key, "config": config.to_dict(),
    }
    teachers.save(source, module, info)
    if jax.process_index() == 0:  # teachers.save ends at a barrier: every process is done with it
      # Keep the training logs next to the cached teacher; drop its checkpoints.
      os.makedirs(os.path.join(source, "logs"), exist_ok=True)
      for name in (run_log.METRICS_FILE, "tb"):
        if os.path.exists(os.path.join(source + ".train", name)):
          shutil.move(os.path.join(source + ".train", name), os.path.join(source, "logs", name))
      shutil.rmtree(source + ".train", ignore_errors=True)
    return {**info, "source": source, "name": key, "cached": False}


def load_trained_student(workdir: str, mesh=None):
  """``(config, prepared, model)``: the student of the finished run in ``workdir``, as it
  trained it (its last checkpoint), without adapters; ``prepared`` is the run's task
  (:func:`kd_jax.tasks.prepare`) on ``mesh`` (default: one device).

  Raises:
    ConfigError: no finished run in ``workdir``.
  """
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if not os.path.exists(path):
    raise ConfigError(None, f"--workdir={workdir}: no finished run ({workdir_lib.RESULTS_FILE} "
                      "is missing); run kd_jax.main there first")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  prepared = tasks.prepare(config, mesh or parallel.make_mesh(1, 1), _dtype(config))
  student = prepared.build(config.student, config.seed)
  teacher = nnx.eval_shape(lambda: prepared.build(config.teacher, config.teacher.seed, "teacher"))
  module, _ = methods.trainable_student(config, student, teacher)
  engine.load_trained(module, methods.student_train_config(config),
                     os.path.join(workdir, "student"), records.result_fields(config))
  return config, prepared, getattr(module, "model", module)


def _counted_flops(prepared, entry, config, fit, trained, teacher_module, *, live: bool,
                   cached: bool, data_rows: int) -> dict[str, int]:
  """A language-model phase's counted FLOPs (:mod:`kd_jax.llm.compute`): ``fit.steps`` of the
  method's step, plus the teacher's one pass over the ``data_rows`` training rows when its
  outputs were cached instead of run in the steps."""
  shapes = prepared.compute_shapes(fit.train_rows // fit.steps, trained,
                                   teacher_module if live else None)
  step = entry.flops_per_step(config, shapes)
  flops = {"student": fit.steps * step["student"], "teacher": fit.steps * step["teacher"]}
  if cached:
    flops["teacher"] += compute.forward(teacher_module.config, data_rows, shapes.row)
  return flops


def run_experiment(config: ml_collections.ConfigDict, workdir: str, *,
                   teacher_dir: str | None = None, show_progress: bool = True,
                   stop_at_step: int | None = None, mesh=None,
                   allow_version_change: bool = False) -> dict:
  """Runs (or resumes) the experiment and returns the ``results.json`` dict.

  A workdir belongs to one config (:mod:`kd_jax.run.workdir`): the first run records
  it; a run with different result fields is refused before anything runs. When
  the workdir's run has finished, its stored ``results.json`` is returned as it
  is (nothing is loaded, trained or rewritten).

  Args:
    config: an experiment config (see kd_jax/config/schema.py); validated first.
    workdir: where results, checkpoints and logs go; re-running resumes.
    teacher_dir: the teacher cache (default ``~/.cache/kd_jax/teachers``).
    show_progress: draw progress bars.
    stop_at_step: abort the student phase at this step (tests of resumption).
    mesh: a ``("data", "model")`` mesh to run on instead of ``config.mesh`` over
      all devices (e.g. one over a subset of them: scaling tests and benchmarks).
    allow_version_change: resume a run started with other library versions (jax,
      jaxlib, flax, optax, orbax, numpy) instead of refusing it.

  Raises:
    ConfigError: an invalid config (before anything runs).
    WorkdirConflictError: ``workdir`` or its checkpoints belong to another config, or
      its unfinished run was started with other library versions.
    DatasetNotFoundError: the dataset is not installed.
  """
  validation.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  finished = workdir_lib.finished_results(workdir, config)
  if finished is not None:
    return finished
  return execute_run(config, workdir, teacher_dir=teacher_dir, show_progress=show_progress,
                     stop_at_step=stop_at_step, mesh=mesh,
                     allow_version_change=allow_version_change)


def execute_run(config: ml_collections.ConfigDict, workdir: str, *,
                teacher_dir: str | None = None, show_progress: bool = True,
                stop_at_step: int | None = None, mesh=None,
                allow_version_change: bool = False) -> dict:
  """:func:`run_experiment` for a ``config`` already validated and a ``workdir`` already
  checked (:func:`kd_jax.run.workdir.finished_results`: no finished run, no other config):
  records the config in the workdir if it has none and runs the pipeline.

  Raises:
    WorkdirConflictError: ``workdir``'s checkpoints belong to another config, or (unless
      ``allow_version_change``) its run was started with other library versions.
  """
  started = time.perf_counter()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  workdir_lib.check_versions(workdir, allow_change=allow_version_change)
  if jax.process_index() == 0:      # (the others only read it: process 0 writes files)
    workdir_lib.record(workdir, config)
  teacher_dir = teacher_dir or DEFAULT_TEACHER_DIR
  if mesh is None:
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.model)
  dtype = _dtype(config)

  prepared = tasks.prepare(config, mesh, dtype)
  task, test_data = prepared.task, prepared.test_data
  method = methods.REGISTRY[config.method]
  # The distilled student's own batches (on-policy samples, DPO pairs, GRPO rollouts).
  student_task = method.training_task(config, prepared) if method.training_task else task
  # A teacher split over `model` may not fit on one accelerator: build and load it in
  # host memory; put_sharded below then copies each device only its shard.
  with jax.default_device(host_device() if mesh.shape[parallel.MODEL_AXIS] > 1 else None):
    teacher_module = prepared.build(config.teacher, config.teacher.seed, "teacher")
  student_model = prepared.build(config.student, config.seed)
  # Feature layers are checked on shapes alone (jax.eval_shape): before any compilation.
  student_module, pairs = methods.trainable_student(config, student_model, teacher_module)

  teacher_info = obtain_teacher(config, module=teacher_module, prepared=prepared, mesh=mesh,
                                teacher_dir=teacher_dir, show_progress=show_progress)
  if config.get("student_init") == "teacher":   # e.g. a few-step diffusion student
    nnx.update(student_model, nnx.state(teacher_module))
  t_graphdef, t_params, t_state = engine.split_module(teacher_module)
  teacher_variables = (parallel.put_sharded(t_params, parallel.teacher_shardings(mesh, t_params)),
                       parallel.put_replicated(t_state, mesh))
  teacher = engine.Teacher(t_graphdef, teacher_variables, tuple(sorted(set(pairs.values()))))
  eval_batch = feeding.eval_batch_size(config.train.eval_batch_size, test_data.size, mesh)
  # The caches shared between runs (teachers, baselines, transfer sets, top-k outputs).
  cache_root = os.path.dirname(os.path.abspath(os.path.expanduser(teacher_dir)))
  if prepared.use_run_dirs is not None:
    prepared.use_run_dirs(workdir, cache_root)
  teacher_report, reference = prepared.evaluate_teacher(t_graphdef, teacher_variables, eval_batch)
  student_train_data, written = prepared.student_train_data, None
  # What the teacher-written data (transfer sets, preference pairs) is keyed by.
  teacher_identity = functools.cache(lambda: {
      "teacher": teacher_info["source"], "key": teacher_info.get("key"),
      "variables": teacher_cache.fingerprint(nnx.state(teacher_module)),
      "code": source_code.fingerprint()})
  seqkd_start = config.get("student_init") == "seqkd"
  if prepared.teacher_data is not None:   # sequence-level KD: the teacher writes the data
    teacher_written, written = prepared.teacher_data(
        teacher_module, teacher_identity(), os.path.join(cache_root, "transfer_sets"))
    # The data of the student's start; of its own phase too, unless that is the task's own
    # (a seqkd start asks for the transfer set whatever the student then trains on).
    start_data = teacher_written
    if not seqkd_start or config.get("student_data") == "transfer":
      student_train_data = teacher_written
  code = source_code.record()
  results = {
      "experiment": config.experiment,
      "headline": task.headline,
      "config": config.to_dict(),
      "git_commit": code["commit"],
      "code": code,     # the fingerprint, commit and versions of the code this process loaded
      **({"transfer_set": written} if written is not None else {}),
      "teacher": {**teacher_report,
                  "params": teacher_info["params"], "model": config.teacher.model,
                  "source": teacher_info["source"], "cached": teacher_info["cached"],
                  **({"format": teacher_info["format"]} if "format" in teacher_info else {}),
                  "logs": os.path.join(teacher_info["source"], "logs"),
                  "train_seconds": teacher_info.get("train_seconds"),
                  "steps": teacher_info.get("steps")},
  }
  if prepared.compute_shapes is not None and teacher_info.get("steps"):
    # The teacher's own training (SFT), for the table's compute of the teacher row.
    shapes = prepared.compute_shapes(config.teacher.train.batch_size, teacher_module, None)
    results["teacher"]["flops"] = {"teacher": teacher_info["steps"] * compute.supervised_step(
        shapes)["student"]}

  def phase(name, module, objective, teacher_for_step, data, identity, phase_dir=None,
            entry=method, phase_config=config):
    if phase_dir is None:
      return train_phase(name, module, objective, teacher_for_step, data, identity,
                         os.path.join(workdir, name), entry, phase_config)
    with shared_entry(phase_dir):    # a baseline or seqkd start shared by a sweep's points
      return train_phase(name, module, objective, teacher_for_step, data, identity, phase_dir,
                         entry, phase_config)

  def train_phase(name, module, objective, teacher_for_step, data, identity, phase_dir, entry,
                  phase_config):
    done = files.read_json(os.path.join(phase_dir, RESULT_FILE))
    if done is not None:
      return done
    train_config = (teachers.baseline_train_config(config) if name == "baseline"
                    else methods.student_train_config(phase_config))
    fit = engine.fit(name=name, module=module, objective=objective, train_config=train_config,
                    train_data=data, test_data=test_data,
                    task=student_task if name == "student" else task, mesh=mesh,
                    seed=config.seed, teacher=teacher_for_step, workdir=phase_dir,
                    checkpoint_every_steps=config.checkpoint.every_steps,
                    keep_checkpoints=config.checkpoint.keep,
                    log_every_steps=config.log_every_steps, show_progress=show_progress,
                    stop_at_step=stop_at_step if name == "student" else None,
                    identity=identity)
    trained = getattr(fit.module, "model", fit.module)     # without FitNets adapters
    report = {**prepared.student_report(fit, trained, reference, eval_batch),
              **_fit_report(fit, trained, task.headline), "logs": phase_dir}
    if prepared.compute_shapes is not None:
      report["flops"] = _counted_flops(prepared, entry, phase_config, fit, trained, teacher_module,
                                       live=teacher_for_step is not None,
                                       cached=entry.runs_teacher(phase_config) and teacher_for_step is None,
                                       data_rows=data.size)
    _write_json(os.path.join(phase_dir, RESULT_FILE), report)
    return {**report, "ran_now": True}

  def shared_seqkd_phase():
    """Where the seqkd start (shared by the points that start from it, and by the seqkd
    point that is it) lives, and its identity."""
    start_config = teachers.seqkd_start_config(config)
    identity = teachers.seqkd_start_identity(config, methods.student_train_config(start_config),
                                             teacher_identity())
    name = f"{config.student.model}-seqkd-{identity_lib.digest(identity)}"
    return start_config, os.path.join(cache_root, "baselines", name), identity

  def copy_report(name, report):
    os.makedirs(os.path.join(workdir, name), exist_ok=True)
    _write_json(os.path.join(workdir, name, RESULT_FILE),
                {k: v for k, v in report.items() if k != "ran_now"})

  uses_teacher = method.runs_teacher(config)
  from_baseline = config.get("student_init") in config_lib.WARM_STARTS
  # A student trained exactly as the baseline is (no method, from scratch, on the baseline's
  # data with the same train block and budget: baseline_train_config is config.train itself
  # then) is that baseline: with baseline=True it is the shared run of the points that start
  # from it (the reasoning R1 table's base), not trained twice.
  is_the_baseline = (config.baseline and config.method == "none" and not from_baseline
                     and prepared.teacher_data is None and not teacher_cache.topk_k(config)
                     and prepared.baseline_data is prepared.student_train_data
                     and teachers.baseline_train_config(config) is config.train)
  if config.baseline and (uses_teacher or from_baseline or is_the_baseline):
    scratch = prepared.build(config.student, config.seed)
    # Shared by every run with the same student, data, budget, seed and teacher
    # (a sweep's points), next to the teacher cache; a copy goes into the workdir.
    shared_dir = os.path.join(cache_root, "baselines", teachers.baseline_key(config))
    results["baseline"] = phase("baseline", scratch,
                                methods.make_objective(config_lib.with_method(config, "none")),
                                None, prepared.baseline_data,
                                teachers.baseline_identity(config),
                                phase_dir=shared_dir, entry=methods.REGISTRY["none"])
    copy_report("baseline", results["baseline"])
    if from_baseline:   # e.g. SFT, then on-policy distillation (GKD starts from an SFT student)
      engine.load_trained(student_model, teachers.baseline_train_config(config), shared_dir,
                        teachers.baseline_identity(config))
    if seqkd_start:     # then SFT on the teacher's traces (R1's recipe), then this method
      start_config, start_dir, start_identity = shared_seqkd_phase()
      results["start"] = phase("start", student_model, methods.make_objective(start_config),
                               None, start_data, start_identity, phase_dir=start_dir,
                               entry=methods.REGISTRY["none"], phase_config=start_config)
      copy_report("start", results["start"])
      engine.load_trained(student_model, methods.student_train_config(start_config), start_dir,
                          start_identity)
  if method.student_data is not None:   # made from the starting student (DPO's pairs)
    student_train_data, report = method.student_data(
        config, prepared, student_model, teacher_module, teacher_identity(),
        os.path.join(cache_root, "transfer_sets"))
    results.update(report)
  if not uses_teacher:
    student_teacher, data = None, student_train_data
  else:
    if config.get("loss_chunk_size", 0):
      # The fused-linear kd loss: the teacher gives its hidden states and head in every step.
      data, student_teacher = student_train_data, dataclasses.replace(teacher, head_inputs=True)
    elif method.teacher_outputs is not None:    # the method's own form of cached outputs
      data = method.teacher_outputs(config, teacher, student_train_data, student_task, mesh)
      student_teacher = None if data.teacher_logits is not None else teacher
    else:
      data = teacher_cache.attach(config, teacher, student_train_data, student_task, mesh,
                                  workdir, shared_dir=os.path.join(cache_root, "teacher_outputs"),
                                  teacher_name=teacher_info["name"])
      student_teacher = None if data.teacher_logits is not None else teacher
  if is_the_baseline:
    results["student"] = {**results["baseline"], "is_the_baseline": True}
  elif teachers.is_seqkd_start(config):
    _, start_dir, start_identity = shared_seqkd_phase()
    results["student"] = phase("student", student_module, methods.make_objective(config, pairs),
                               student_teacher, data, start_identity, phase_dir=start_dir)
    copy_report("student", results["student"])
  else:
    results["student"] = phase("student", student_module, methods.make_objective(config, pairs),
                               student_teacher, data, records.result_fields(config))
  results["student"]["teacher_cached"] = uses_teacher and student_teacher is None
  if teacher_cache.topk_k(config):
    # The trained student, as its last checkpoint holds it (also when this phase was done).
    engine.load_trained(student_module, config.train, os.path.join(workdir, "student"),
                       records.result_fields(config))
    results["topk"] = teacher_cache.topk_report(config, student_module, teacher, data, task)
  results["timing"] = {
      "train_seconds": results["student"]["train_seconds"],
      "steps_per_second": results["student"]["steps_per_second"],
      "compile_seconds": results["student"]["compile_seconds"],
      "teacher_train_seconds": teacher_info.get("train_seconds") if not teacher_info["cached"] else 0.0,
      # What this invocation spent: 0 for a baseline another run had already trained.
      "baseline_train_seconds": (results["baseline"]["wall_seconds"]
                                 if results.get("baseline", {}).get("ran_now") else
                                 0.0 if "baseline" in results else None),
      "student_wall_seconds": (results["student"]["wall_seconds"]
                               if results["student"].get("ran_now") else 0.0),
      "total_seconds": time.perf_counter() - started,
      "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
      "devices": mesh.size, "mesh": dict(mesh.shape), "processes": jax.process_count(),
      "platform": mesh.devices.flat[0].platform,
  }
  for name in ("baseline", "start", "student"):
    if name in results:
      results[name].pop("ran_now", None)
  _write_json(os.path.join(workdir, workdir_lib.RESULTS_FILE), results)
  return results
