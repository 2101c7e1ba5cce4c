"""Distillation across tokenizers (DESIGN §9): ``uld`` (Boizard et al. 2024) and
``aligned_kd`` (byte-aligned KL on the shared vocabulary, ULD elsewhere: TRL's GOLD form).

Both read the teacher on its own tokens of the student's text: the student's task is
:class:`kd_jax.tasks.aligned_text.AlignedNextTokens`, which moves the teacher's logits onto
the student's positions — by sequence order for ``uld`` (position j of both, as the paper
does), by byte offsets for ``aligned_kd``. ``aligned_kd`` runs the teacher in every step.
``uld`` needs only the teacher's sorted probabilities, and its rows are fixed: with
``teacher_cache`` ``'auto'`` or ``'memory'``, a truncated ULD (``uld.top_k`` > 0) at a
constant temperature computes them once per run
(:meth:`~kd_jax.tasks.aligned_text.AlignedNextTokens.with_sorted_teacher`, held in memory)
instead of a teacher pass, a softmax and a ``lax.top_k`` over the teacher's vocabulary in
every step; ``'none'`` keeps the teacher live. The losses are
:mod:`kd_jax.objectives.cross_tokenizer`'s; ``alpha`` weighs the student's CE and
``temperature`` both softmaxes, as for ``kd``. With one tokenizer ``aligned_kd`` is ``kd``
with the KL divergence. An optional ``uld`` block (:func:`kd_jax.config.uld_config`)
truncates the ULD term to each side's ``top_k`` largest probabilities (exact without it).
"""

from __future__ import annotations

from absl import logging

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.engine import teacher_cache
from kd_jax.methods.base import Method
from kd_jax.objectives import cross_tokenizer as ct
from kd_jax.objectives import schedules
from kd_jax.objectives.masked import masked_mean
from kd_jax.tasks import aligned_text

TEXT_TASKS = ("text",)


def _term(distill_terms):
  """A logit term ``α·CE + (1−α)·mean(distill over the aligned positions)``
  (:func:`kd_jax.objectives.cross_tokenizer.combine`), its two parts logged apart (``ce``,
  ``distill``), the aligned fraction of the targets and, for a truncated ULD
  (``uld.top_k``), ``uld_tail_bound``: how far below exact ULD its term may lie on average."""
  def term(settings, step, s_logits, t_logits: ct.AlignedTeacher | ct.SortedTeacher, labels,
           mask):
    t, a = settings.temperature(step), settings.alpha(step)
    top_k = int(settings.uld.top_k) if settings.uld is not None else 0
    aligned = mask & t_logits.aligned
    distill, bound = distill_terms(s_logits, t_logits, t, top_k, aligned)
    loss, parts = ct.combine(s_logits, labels, a, distill, aligned, mask)
    metrics = {"temperature": t, "alpha": a, **parts,
               "aligned_fraction": masked_mean(t_logits.aligned.astype("float32"), mask)}
    if top_k:
      metrics["uld_tail_bound"] = masked_mean(bound, aligned)
    return loss, metrics
  return term


def _uld(s_logits, t_logits, temperature, top_k, aligned):
  del aligned   # by order nearly every position is aligned: nothing to skip
  if isinstance(t_logits, ct.SortedTeacher):     # computed once (_sorted_teacher_outputs)
    return ct.uld_terms_from_sorted(s_logits, t_logits, temperature=temperature,
                                    with_bound=True)
  return ct.uld_terms(s_logits, t_logits.logits, temperature=temperature, top_k=top_k,
                      with_bound=True)


def _constant_temperature(config) -> float | None:
  """T when ``config.temperature`` is constant (a number then), else None."""
  value = schedules.make(config.temperature, field="temperature", positive=True,
                         constant_as_number=True)(0)
  return float(value) if isinstance(value, (int, float)) else None


def _uld_cacheable(config) -> bool:
  return (config.method == "uld" and int((config.get("uld") or {}).get("top_k", 0)) > 0
          and _constant_temperature(config) is not None)


def _sorted_teacher_outputs(config, teacher, data, task, mesh):
  """uld's teacher side computed once (see the module docstring), or ``data`` unchanged.
  Under ``teacher_cache='auto'`` only within the engine cache's size limit
  (:data:`kd_jax.engine.teacher_cache.AUTO_CACHE_MAX_BYTES`); ``'memory'`` at any size."""
  if config.teacher_cache == "none" or not _uld_cacheable(config):
    return data
  # float32 [N, L-1, k] probabilities and [N, L-1] tails (k ≤ the teacher's vocabulary),
  # and the bool [N, L-1] aligned mask.
  width = min(int(config.uld.top_k), data.vocab_map.shape[0])
  size = data.size * data.loss_mask.shape[1] * ((width + 1) * 4 + 1)
  if config.teacher_cache == "auto" and size > teacher_cache.AUTO_CACHE_MAX_BYTES:
    logging.info("uld's sorted teacher side would take %.1f GB: the teacher runs live "
                 "(teacher_cache='memory' keeps it anyway)", size / 1e9)
    return data
  return task.with_sorted_teacher(data, teacher, temperature=_constant_temperature(config),
                                  top_k=int(config.uld.top_k),
                                  batch_size=config.train.eval_batch_size, mesh=mesh)


def _aligned(s_logits, t_logits, temperature, top_k, aligned):
  return ct.aligned_kd_terms(s_logits, t_logits.logits, t_logits.vocab_map, t_logits.exact,
                             temperature=temperature, top_k=top_k, with_bound=True,
                             aligned=aligned)


def _training_task(alignment: str):
  def task(config, prepared):
    del config
    if not hasattr(prepared.student_train_data, "teacher_tokens"):
      raise ConfigError("method", "this task's rows carry no teacher view to align")
    return aligned_text.AlignedNextTokens(alignment=alignment)
  return task


def _check(config) -> None:
  if config.get("uld") is not None:
    checks.ints_at_least("uld", config.uld, ("top_k",))
  if config.teacher_cache in ("disk", "shared") or (
      config.teacher_cache == "memory" and not _uld_cacheable(config)):
    only = ("'auto' or 'none' (uld with uld.top_k > 0 and a constant temperature also "
            "'memory': its sorted teacher probabilities, computed once per run)")
    raise ConfigError("teacher_cache", f"teacher_cache={config.teacher_cache!r}: "
                      f"method={config.method!r} reads the teacher on its own tokens, which "
                      f"the shared teacher cache cannot hold; use {only}")
  if config.divergence != "kl":
    raise ConfigError("divergence", f"method={config.method!r} compares the teacher by its own "
                      f"loss (KL on the shared vocabulary, ULD elsewhere): divergence must be "
                      f"'kl', got {config.divergence!r}")


METHODS = {
    "uld": Method(_term(_uld), TEXT_TASKS, check=_check, training_task=_training_task("order"),
                  cross_tokenizer=True, teacher_outputs=_sorted_teacher_outputs),
    "aligned_kd": Method(_term(_aligned), TEXT_TASKS, check=_check,
                         training_task=_training_task("bytes"), cross_tokenizer=True),
}
