"""Validation: one pipeline over the two plug-in registries (DESIGN §7).

:func:`validate` checks a config in plain Python, before any model is built or any
function is compiled, and raises ``ConfigError`` (a ``ValueError``) naming the field and
the valid choices: first the dataset's task family (its fields and models), then the
method (one the family accepts, and the method family's own checks), then the fields
every run shares (training, divergence, schedules, caches, precision, mesh, checkpoints).
Checks that need the models' shapes — feature layer names — are
:func:`kd_jax.methods.feature_pairs`'s, which uses ``jax.eval_shape`` only.
"""

from __future__ import annotations

import ml_collections

from kd_jax import methods, tasks
from kd_jax.config import checks, schema
from kd_jax.core.errors import ConfigError
from kd_jax.objectives import divergences, schedules, topk


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field; raises ``ConfigError`` naming the field and the valid choices."""
  family = tasks.family_of(config.dataset.name)
  family.check(config)
  checks.choice("method", config.method, methods.accepting(family.NAME))
  method = methods.REGISTRY[config.method]
  if method.check is not None:
    method.check(config)
  _check_tokenizers(config, family, method)
  _check_distillation_head(config, method)
  _check_shared_fields(config, family)


def _check_tokenizers(config, family, method) -> None:
  """Teacher and student with different tokenizers (DESIGN §9): only a cross-tokenizer
  method may use the teacher, and never through a same-vocabulary cache or loss."""
  differ = getattr(family, "tokenizers_differ", None)
  if differ is None or not differ(config) or not method.runs_teacher(config):
    return
  across = [n for n, m in methods.REGISTRY.items()
            if m.cross_tokenizer and family.NAME in m.tasks]
  if not method.cross_tokenizer:
    raise ConfigError("method", f"method={config.method!r} compares teacher and student token "
                      "by token in one vocabulary, but their tokenizers differ "
                      f"(dataset.student_vocab_size={config.dataset.student_vocab_size}): use "
                      f"one of {', '.join(across)}, or method='none' (no teacher)")


def _check_distillation_head(config, method) -> None:
  """A student with a distillation token (a DeiT ViT) needs a method that trains its head:
  at test time its logits average both heads'."""
  has_head = config.student.get("kwargs", {}).get("distillation_token", False)
  if has_head and not method.distillation_head:
    trains = [n for n, m in methods.REGISTRY.items() if m.distillation_head]
    raise ConfigError("student.kwargs.distillation_token", f"method={config.method!r} does not "
                      "train the student's distillation head, which its test-time logits "
                      f"average in: use one of {', '.join(trains)}, or "
                      "student.kwargs.distillation_token=False")


def _check_training(prefix: str, t) -> None:
  checks.positive(f"{prefix}.epochs", t.epochs)
  checks.positive(f"{prefix}.batch_size", t.batch_size, integer=True)
  checks.positive(f"{prefix}.eval_batch_size", t.eval_batch_size, integer=True)
  checks.choice(f"{prefix}.optimizer", t.optimizer, schema.OPTIMIZERS)
  checks.positive(f"{prefix}.learning_rate", t.learning_rate)
  checks.choice(f"{prefix}.lr_schedule", t.lr_schedule, schema.LR_SCHEDULES)
  checks.in_unit_interval(f"{prefix}.warmup_fraction", t.warmup_fraction, closed=False)
  for field in ("weight_decay", "grad_clip_norm"):
    checks.nonnegative(f"{prefix}.{field}", t[field])
  checks.ints_at_least(prefix, t, ("eval_every_steps",))


def _check_shared_fields(config, family) -> None:
  _check_training("teacher.train", config.teacher.train)
  _check_training("train", config.train)
  checks.ints_at_least("train", config.train, ("steps",))
  checks.choice("divergence", config.divergence, divergences.NAMES)
  _check_student_init(config, family)
  _check_baseline_steps(config)
  _check_topk(config, family)
  _check_fused(config, family)
  for field, bounds in (("temperature", dict(positive=True)), ("alpha", dict(unit_interval=True))):
    try:
      schedules.validate(config[field], field=field, **bounds)
    except ValueError as e:
      raise ConfigError(field, str(e)) from None
  for field in ("alpha", "beta"):
    checks.nonnegative(f"dkd.{field}", config.dkd[field])
  checks.nonnegative("feature_weight", config.feature_weight)
  checks.choice("precision", config.precision, schema.PRECISIONS)
  checks.choice("teacher_cache", config.teacher_cache, schema.TEACHER_CACHES)
  if not isinstance(config.teacher_fixed_views, bool):
    raise ConfigError("teacher_fixed_views", "teacher_fixed_views must be True or False, got "
                      f"{config.teacher_fixed_views!r}")
  if config.teacher_fixed_views and config.teacher_cache == "none":
    raise ConfigError("teacher_fixed_views",
        "teacher_fixed_views=True needs cached teacher outputs (they are the un-augmented "
        "views); set teacher_cache to 'auto', 'memory' or 'disk'.")
  for field in ("data", "model"):
    value = config.mesh[field]
    if value == 0 or value < -1:
      raise ConfigError(f"mesh.{field}",
                        f"mesh.{field} must be a positive int or -1 (the rest), got {value}")
  checks.nonnegative("checkpoint.every_steps", config.checkpoint.every_steps)
  if config.checkpoint.keep < 1:
    raise ConfigError("checkpoint.keep", f"checkpoint.keep must be >= 1, got {config.checkpoint.keep}")


def _check_student_init(config, family) -> None:
  init = config.get("student_init", "scratch")
  every = tuple(dict.fromkeys(i for f in tasks.FAMILIES.values() for i in f.STUDENT_INITS))
  checks.choice("student_init", init, every)
  if init not in family.STUDENT_INITS:
    kinds = " or ".join(f.KIND for f in tasks.FAMILIES.values() if init in f.STUDENT_INITS)
    raise ConfigError("student_init", f"student_init={init!r} needs a {kinds} dataset; valid "
                      f"here: {', '.join(family.STUDENT_INITS)}")
  if init == "teacher" and (config.student.model != config.teacher.model
                            or config.student.kwargs.to_dict() != config.teacher.kwargs.to_dict()):
    raise ConfigError("student_init", "student_init='teacher' starts the student as a copy of "
                      "the trained teacher: student.model and student.kwargs must be the "
                      f"teacher's ({config.teacher.model!r}, {config.teacher.kwargs.to_dict()})")
  if init in schema.WARM_STARTS and not config.baseline:
    raise ConfigError("student_init", f"student_init={init!r} starts the student from the "
                      "trained baseline: set baseline=True")


def _check_baseline_steps(config) -> None:
  steps = config.get("baseline_steps", 0)
  checks.int_at_least("baseline_steps", steps)      # 0: the students' budget
  if steps and not config.baseline:
    raise ConfigError("baseline_steps", "baseline_steps is the trained baseline's budget: set "
                      "baseline=True, or leave it at 0")
  # Only a warm start uses a baseline of another budget. Elsewhere the baseline is the
  # students' same-budget control (the report's "KD gain"), or, for a student alone, the
  # run itself, where the field would be silently ignored.
  if steps and config.get("student_init", "scratch") not in schema.WARM_STARTS:
    raise ConfigError("baseline_steps", "baseline_steps is the budget of the base that a "
                      "warm-started student starts from: set student_init to one of "
                      f"{', '.join(schema.WARM_STARTS)}, or leave it at 0 (for the base "
                      "itself, set train.steps)")


def _check_topk(config, family) -> None:
  t = config.get("topk")
  if t is None:
    return
  checks.ints_at_least("topk", t, ("k",))
  checks.choice("topk.mode", t.mode, topk.MODES)
  if not t.k:
    return
  _require_language_kd(config, family, "topk.k", f"topk.k={t.k}",
                       "caches a language-model teacher's top-k logits")
  if config.teacher_cache == "none":
    raise ConfigError("teacher_cache", f"topk.k={t.k} is a teacher cache: teacher_cache='none' "
                      "contradicts it")


def _require_language_kd(config, family, field: str, setting: str, what: str) -> None:
  """``setting`` (e.g. ``topk.k=4``) needs method='kd' on a language dataset with a
  probability divergence."""
  if not family.LANGUAGE or config.method != "kd":
    raise ConfigError(field, f"{setting} {what}: it needs method='kd' on a language dataset")
  if config.divergence not in divergences.PROBABILITY_DIVERGENCES:
    raise ConfigError("divergence", f"{setting} needs a probability divergence, got "
                      f"{config.divergence!r}; valid: "
                      f"{', '.join(sorted(divergences.PROBABILITY_DIVERGENCES))}")


def _check_fused(config, family) -> None:
  chunk = config.get("loss_chunk_size", 0)
  checks.int_at_least("loss_chunk_size", chunk)
  if not chunk:
    return
  field = f"loss_chunk_size={chunk}"
  _require_language_kd(config, family, "loss_chunk_size", field,
                       "is the language-model kd loss through the output heads")
  if (config.get("topk") or {}).get("k", 0) or config.teacher_cache in ("memory", "disk",
                                                                         "shared"):
    raise ConfigError("loss_chunk_size", f"{field} runs the teacher in every step (its hidden "
                      "states, not its logits): it cannot be combined with topk.k or "
                      f"teacher_cache={config.teacher_cache!r}")
