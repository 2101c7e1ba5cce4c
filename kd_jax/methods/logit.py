"""Logit distillation: ``none`` (the gold labels alone), ``kd`` (Hinton et al. 2015),
``dkd`` (Zhao et al. 2022) and, for language models, ``gkd`` (on-policy, Agarwal et al. 2024).

``kd`` is also every feature method's logit term (:mod:`kd_jax.methods.features`); on a
language model it compares a cached top-k teacher (``topk.k``) or runs through the output
heads in chunks (``loss_chunk_size``, the fused-linear loss).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kd_jax import config as config_lib
from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.llm import compute
from kd_jax.methods.base import PROMPT_TASKS, Method, require_block
from kd_jax.objectives import fused_linear, losses, topk
from kd_jax.objectives.masked import masked_mean

# Every task family (kd_jax.tasks.FAMILIES) but the sentence encoders, which have no labels.
LABELLED_TASKS = ("classification", "arithmetic", "reasoning", "text")


def regression(settings, step, prediction, t_logits, target, mask):
  """The squared error to a real-valued ``target`` of the prediction's shape (a denoiser's
  v), averaged over each row's elements, then over the real rows of ``mask``."""
  del settings, step, t_logits
  squared = jnp.square(prediction.astype(jnp.float32) - target)
  return masked_mean(squared.reshape(squared.shape[0], -1).mean(axis=1), mask), {}


def _hard_labels(settings, step, s_logits, t_logits, labels, mask):
  """``none``: the task's own supervised loss, no teacher: cross-entropy on integer labels,
  or :func:`regression` on real-valued targets."""
  if not isinstance(labels, losses.MixedLabels) and jnp.issubdtype(labels.dtype, jnp.floating):
    return regression(settings, step, s_logits, t_logits, labels, mask)
  ce = losses.cross_entropy(s_logits, labels, mask)
  return ce, {}


def hinton_term(settings, step, s_logits, t_logits, labels, mask):
  """``kd`` (and the logit term of the feature methods): α·CE + (1−α)·T²·D (Hinton et al. 2015).

  kd_loss's value with its two terms logged apart ("ce", "distill"): both are
  means over the same mask, so their weighted sum is kd_loss's. A term whose
  static weight is 0 is neither computed nor logged.
  """
  t, a = settings.temperature(step), settings.alpha(step)
  metrics = {"temperature": t, "alpha": a}
  if isinstance(s_logits, tuple):     # (hidden, head) pairs: loss_chunk_size > 0
    return _fused_hinton(settings, t, a, s_logits, t_logits, labels, mask), metrics
  static_alpha = a if isinstance(a, float) else None   # None: scheduled, both terms
  loss = 0.0
  if static_alpha != 0:
    metrics["ce"] = losses.cross_entropy(s_logits, labels, mask)
    loss = a * metrics["ce"]
  if static_alpha != 1:
    if isinstance(t_logits, topk.TopKLogits):      # the teacher's cached top-k (topk.k > 0)
      metrics["distill"] = topk.topk_kd_loss(s_logits, t_logits, mode=settings.topk_mode,
                                             divergence=settings.divergence, temperature=t,
                                             mask=mask,
                                             divergence_params=settings.divergence_params)
    else:
      metrics["distill"] = losses.kd_loss(s_logits, t_logits, None,
                                          divergence=settings.divergence, temperature=t,
                                          alpha=0.0, mask=mask,
                                          divergence_params=settings.divergence_params)
    loss = loss + (1.0 - a) * metrics["distill"]
  return loss, metrics


def _fused_hinton(settings, t, a, student, teacher, labels, mask):
  """The ``kd`` loss through the output heads, ``loss_chunk_size`` rows at a time
  (:func:`kd_jax.objectives.fused_linear.fused_linear_kd_loss`); its two terms are not logged apart
  (that would make the logits twice)."""
  (h_s, w_s), (h_t, w_t) = student, teacher
  return fused_linear.fused_linear_kd_loss(
      h_s.reshape(-1, h_s.shape[-1]), w_s, h_t.reshape(-1, h_t.shape[-1]), w_t,
      labels.reshape(-1), divergence=settings.divergence, temperature=t, alpha=a,
      mask=mask.reshape(-1), chunk_size=settings.loss_chunk_size,
      divergence_params=settings.divergence_params)


def _decoupled(settings, step, s_logits, t_logits, labels, mask):
  """``dkd``: CE + min(1, step / dkd.warmup_steps) · DKD (Zhao et al. 2022)."""
  dkd, t = settings.dkd, settings.temperature(step)
  ce = losses.cross_entropy(s_logits, labels, mask)
  ramp = jnp.minimum(1.0, step / dkd.warmup_steps) if dkd.warmup_steps else 1.0
  distill = losses.dkd_loss(s_logits, t_logits, labels, alpha=dkd.alpha, beta=dkd.beta,
                            temperature=t, mask=mask)
  return ce + ramp * distill, {"temperature": t, "ce": ce, "dkd": distill}


def _check_dkd(config) -> None:
  d = config.dataset
  if d.get("mixup", 0.0) > 0 or d.get("cutmix", 0.0) > 0:
    raise ConfigError("dataset.mixup", "dkd splits the logits at the gold class, which a mixed "
                      "image does not have: set dataset.mixup and dataset.cutmix to 0, or use kd")


def _generalized_jsd(settings, step, s_logits, t_logits, labels, mask):
  """``gkd``: T²·JSD(β) between teacher and student on every batch, gold or student-sampled
  (Agarwal et al. 2024, "On-Policy Distillation of Language Models"); no CE term. β
  follows TRL: 0 gives KL(teacher ‖ student), 1 KL(student ‖ teacher). Which batches
  the student samples is the task's (``gkd.fraction``, kd_jax/tasks/lm.py)."""
  t = settings.temperature(step)
  distill = losses.kd_loss(s_logits, t_logits, None, divergence="js", temperature=t, alpha=0.0,
                           mask=mask, divergence_params={"beta": settings.gkd.beta})
  return distill, {"temperature": t, "distill": distill}


def _check_gkd(config) -> None:
  g = require_block(config, "gkd", "gkd_config")
  for field in ("fraction", "beta"):
    checks.in_unit_interval(f"gkd.{field}", g[field])
  if g.temperature <= 0:
    raise ConfigError("gkd.temperature", f"gkd.temperature must be > 0, got {g.temperature}")
  _check_warm_phase(config, "gkd")


def _on_policy_task(config, prepared):
  """The run's task, with a fraction ``gkd.fraction`` of its batches sampled by the student."""
  g = config.gkd
  return dataclasses.replace(prepared.task, on_policy=float(g.fraction),
                             policy_temperature=float(g.temperature))


def _warm_phase(block_name: str):
  """The train overrides of a warm-started student's phase: the ``block_name`` block's
  ``learning_rate`` and ``steps`` (its zeros, no block or a cold start: ``train``'s)."""
  def overrides(config) -> dict:
    block = config.get(block_name)
    if block is None or config.get("student_init") not in config_lib.WARM_STARTS:
      return {}
    return {name: block[name] for name in ("learning_rate", "steps") if block[name]}
  return overrides


def _check_warm_phase(config, block_name: str) -> None:
  block = config[block_name]
  checks.nonnegative(f"{block_name}.learning_rate", block.learning_rate)
  checks.ints_at_least(block_name, block, ("steps",))
  if ((block.learning_rate or block.steps)
      and config.get("student_init") not in config_lib.WARM_STARTS):
    raise ConfigError(block_name, f"{block_name}.learning_rate and .steps set the phase that "
                      "continues a trained start: set baseline=True and student_init to one "
                      f"of {', '.join(config_lib.WARM_STARTS)}, or leave them at 0 (train's "
                      "learning rate and steps)")


def _check_sft(config) -> None:
  if config.get("sft") is not None:
    _check_warm_phase(config, "sft")


def _gkd_step_flops(config, shapes: compute.Shapes) -> dict[str, int]:
  """SFT's step plus, in the expected fraction ``gkd.fraction`` of the steps (each batch is
  drawn on-policy with that probability), the student's sampling of its rows from
  whole-row prompt buffers."""
  step = compute.supervised_step(shapes)
  sampled = compute.generation(shapes.student, shapes.batch, shapes.row + 1, shapes.new_tokens)
  return {**step, "student": step["student"] + round(float(config.gkd.fraction) * sampled)}


METHODS = {
    "none": Method(_hard_labels, (*LABELLED_TASKS, "diffusion"), uses_teacher=False,
                   check=_check_sft,
                   train_overrides=_warm_phase("sft")),
    "kd": Method(hinton_term, LABELLED_TASKS,
                 head_inputs=lambda c: int(c.get("loss_chunk_size", 0)) > 0),
    "dkd": Method(_decoupled, ("classification",), check=_check_dkd),
    "gkd": Method(_generalized_jsd, PROMPT_TASKS, check=_check_gkd,
                  train_overrides=_warm_phase("gkd"),
                  training_task=_on_policy_task, step_flops=_gkd_step_flops),
}
