"""On-policy rollouts for policy-gradient distillation of a language-model student.

The students of ``method="grpo"`` and ``method="minillm"`` (:mod:`kd_jax.methods`) train
on their own answers, sampled inside the jitted step: :class:`Rollouts` is their task. A
batch of P prompts becomes P·k rows, the k samples of prompt 0, then of prompt 1, ...
(the layout :func:`kd_jax.objectives.rl_losses.group_advantages` expects), drawn at temperature 1
from the current student (or, with ``teacher_mix`` = α, from α·teacher + (1 − α)·student:
MiniLLM's teacher-mixed sampling), with fixed shapes, so the step compiles once.

Each row carries what the loss needs besides the student's and the teacher's logits
(:class:`RolloutTargets`): the sampled tokens, the verifier's verdict on the answer
(computed on the devices by the task's ``verify``, e.g.
:func:`kd_jax.tasks.arithmetic.answers_correct`) and the frozen starting student's
log-probabilities of the tokens (the reference of the KL penalty), from the
reference's variables stored in :class:`RolloutData`. The teacher runs live in the step
on the same rows (the engine's ``teacher(variables, inputs)``), so its rewards are
computed there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.config import checks
from kd_jax.core import parallel
from kd_jax.core.errors import ConfigError
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.llm import compute
from kd_jax.methods.base import (PROMPT_TASKS, Method, mean_over_answers, require_block,
                                 require_sft_start)
from kd_jax.objectives import divergences, rl_losses
from kd_jax.tasks import lm

# The teacher's reward of a GRPO answer (rl_losses.teacher_rewards).
TEACHER_REWARDS = ("log_ratio", "log_likelihood")


@device_split
class RolloutData(DeviceSplit):
  """The prompts on the devices: ``prompts`` the training prompts' rows (only their prompts
  are used), ``answers`` ``[N]`` int32 their answers, ``reference`` the frozen starting student's
  ``nnx.State`` (model variables, replicated)."""
  prompts: lm.TokenData
  answers: jax.Array
  reference: Any


class RolloutTargets(NamedTuple):
  """A rollout batch's targets: ``tokens`` ``[B, T]`` (the sampled rows shifted by one),
  ``verified`` ``[B]`` float32 (1 where the answer checks), ``reference`` ``[B, T]`` the
  reference's log-probabilities of ``tokens``."""
  tokens: jax.Array
  verified: jax.Array
  reference: jax.Array


def rollout_data(prompts: lm.TokenData, answers: np.ndarray, reference_model: nnx.Module,
                 mesh) -> RolloutData:
  """The rollout split: the prompts' rows, their answers and a copy of ``reference_model``'s
  variables (taken now: the student trains on from the same values, the reference stays)."""
  state = jax.tree.map(lambda x: np.array(x), nnx.state(reference_model))
  return RolloutData(prompts, *parallel.put_replicated(
      (np.asarray(answers, np.int32), state), mesh))


@dataclasses.dataclass(frozen=True, eq=False)
class Rollouts(lm.LanguageModeling):
  """The task of a policy-gradient student: ``samples_per_prompt`` sampled rows per prompt.

  Evaluation is :class:`~kd_jax.tasks.lm.LanguageModeling`'s. ``verify(tokens [B, T],
  answers [B]) -> bool [B]`` checks sampled answers inside the jitted step.
  """
  samples_per_prompt: int = 4
  teacher_mix: float = 0.0
  verify: Callable | None = None

  @property
  def rows_per_example(self) -> int:   # the budget: every sampled row is a training row
    return self.samples_per_prompt

  @property
  def augments(self) -> bool:
    return True

  def train_batch(self, data: RolloutData, index, mask, rng, policy=None, teacher=None):
    """``(inputs, RolloutTargets, loss_mask, metrics)`` of P·k freshly sampled rows."""
    k = self.samples_per_prompt
    index, mask = jnp.repeat(index, k), jnp.repeat(mask, k)
    mix = None
    if self.teacher_mix:
      t_graphdef, t_variables = teacher
      t_model = nnx.merge(t_graphdef, *t_variables)
      mix = (*nnx.split(t_model), self.teacher_mix)
    rows, loss_mask, answers = self.sample_rows(data.prompts.tokens[index],
                                                data.prompts.loss_mask[index], mask, rng,
                                                policy, mix=mix)
    reference_model = nnx.merge(lm.policy_model(policy)[0], data.reference)
    inputs, tokens = rows[:, :-1], rows[:, 1:]
    reference = jax.lax.stop_gradient(
        rl_losses.token_log_probs(reference_model(inputs), tokens))
    verified = self.verify(answers, data.answers[index]).astype(jnp.float32)
    real = mask.astype(jnp.float32)
    count = jnp.maximum(jnp.sum(real), 1.0)
    metrics = {"verifier_reward": jnp.sum(verified * real) / count,
               "response_length": jnp.sum(loss_mask) / count}
    return inputs, RolloutTargets(tokens, verified, reference), loss_mask, metrics

  def train_metrics(self, logits, targets, loss_mask) -> dict:
    return super().train_metrics(logits, targets.tokens, loss_mask)


def _group_relative_policy_gradient(settings, step, s_logits, t_logits, targets, mask):
  """``grpo``: the clipped policy gradient with GRPO's group-relative advantages and a k3 KL
  penalty (``rl.kl_coef``) to the frozen starting student (Shao et al. 2024), on a batch of
  :class:`Rollouts` (``rl.k`` samples per prompt). Reward per answer:
  ``rl.verifier_weight`` × the verifier's verdict + ``rl.teacher_weight`` × the teacher's
  reward (``rl.teacher_reward``: the mean token log-ratio log p_T − log q_S, MiniLLM's,
  or the mean log-likelihood log p_T). One update per batch of samples, so π_old = π: the
  ratio is 1, the clipping never acts (``clip_fraction`` stays 0) and the gradient is
  REINFORCE's with group baselines. With ``rl.teacher_weight`` = 0 the teacher does not
  run (the verifier's reward alone: R1-Zero). The loss is one mean over every sampled token of the
  batch (the library's per-token convention, as DAPO's token-level loss; GRPO's paper
  averages per answer first, so there a long answer weighs as much as a short one)."""
  del step
  rl = settings.rl
  log_probs = rl_losses.token_log_probs(s_logits, targets.tokens)
  if t_logits is None:    # rl.teacher_weight = 0: no teacher in the step (R1-Zero's setting)
    teacher = jnp.zeros_like(targets.verified)
  else:
    teacher = rl_losses.teacher_rewards(
        rl_losses.token_log_probs(t_logits, targets.tokens), mask,
        log_probs if rl.teacher_reward == "log_ratio" else None)
  rewards = rl.verifier_weight * targets.verified + rl.teacher_weight * teacher
  advantages = rl_losses.group_advantages(rewards.reshape(-1, rl.k)).reshape(-1)
  loss, metrics = rl_losses.policy_gradient_loss(log_probs, log_probs, targets.reference,
                                                 advantages, mask, kl_coef=rl.kl_coef)
  metrics.update(reward=mean_over_answers(rewards, mask),
                 teacher_reward=mean_over_answers(teacher, mask))
  return loss, metrics


def _reverse_kl_policy_gradient(settings, step, s_logits, t_logits, targets, mask):
  """``minillm``: MiniLLM's reverse-KL policy gradient with its single-step regularisation
  (:func:`kd_jax.objectives.rl_losses.minillm_loss`, Gu et al. 2024) on :class:`Rollouts`
  batches, sampled from the student or, with ``rl.teacher_mix`` = α > 0, from
  α·teacher + (1 − α)·student; plus ``rl.kl_coef`` × the k3 KL to the starting student."""
  del step
  rl = settings.rl
  log_probs = rl_losses.token_log_probs(s_logits, targets.tokens)
  teacher_log_probs = rl_losses.token_log_probs(t_logits, targets.tokens)
  loss, metrics = rl_losses.minillm_loss(
      log_probs, teacher_log_probs, divergences.reverse_kl(s_logits, t_logits),
      targets.reference, mask, mix=rl.teacher_mix, kl_coef=rl.kl_coef)
  # GRPO's teacher reward (the per-answer mean log-ratio), for curves comparable with it.
  metrics["teacher_reward"] = mean_over_answers(
      rl_losses.teacher_rewards(teacher_log_probs, mask, log_probs), mask)
  return loss, metrics


def _rl_overrides(config) -> dict:
  """A policy-gradient phase's step holds ``train.batch_size`` rows: batch_size / k prompts
  with k samples each (the same rows per step as every other method); its peak learning
  rate is ``rl.learning_rate``, its steps ``rl.steps`` when set."""
  overrides = {"learning_rate": config.rl.learning_rate,
               "batch_size": config.train.batch_size // config.rl.k}
  if config.rl.get("steps", 0):
    overrides["steps"] = int(config.rl.steps)
  return overrides


def _check(config) -> None:
  r = require_block(config, "rl", "rl_config")
  require_sft_start(config)
  grpo = config.method == "grpo"
  # GRPO's advantages compare the k samples of a prompt: one sample has no group.
  checks.ints_at_least("rl", r, ("k",), 2 if grpo else 1)
  if config.train.batch_size % r.k:
    raise ConfigError("rl.k", f"train.batch_size={config.train.batch_size} rows must be a "
                      f"whole number of prompts of rl.k={r.k} samples")
  checks.choice("rl.teacher_reward", r.teacher_reward, TEACHER_REWARDS)
  checks.ints_at_least("rl", r, ("steps",))
  for field in ("verifier_weight", "teacher_weight", "kl_coef"):
    checks.nonnegative(f"rl.{field}", r[field])
  if grpo and not (r.verifier_weight or r.teacher_weight):
    raise ConfigError("rl.verifier_weight", "method='grpo' needs a reward: rl.verifier_weight "
                      "or rl.teacher_weight > 0")
  checks.positive("rl.learning_rate", r.learning_rate)
  checks.in_unit_interval("rl.teacher_mix", r.teacher_mix, closed=False)
  if grpo and r.teacher_mix:
    raise ConfigError("rl.teacher_mix", "rl.teacher_mix is MiniLLM's teacher-mixed sampling: "
                      "method='grpo' samples from the student (set it to 0)")
  if config.teacher_cache not in ("auto", "none") or config.get("teacher_fixed_views", False):
    raise ConfigError("teacher_cache", f"method={config.method!r} scores new samples every "
                      "step: the teacher runs live (teacher_cache='auto' or 'none', "
                      "teacher_fixed_views=False)")


def _rollout_task(config, prepared):
  """The student's own samples, ``rl.k`` per prompt, every step (MiniLLM's teacher-mixed)."""
  return prepared.task.trained_as(
      Rollouts, samples_per_prompt=config.rl.k, verify=prepared.prompts.verify,
      teacher_mix=float(config.rl.teacher_mix) if config.method == "minillm" else 0.0)


def _rollout_prompts(config, prepared, student_module, teacher_module, teacher_identity,
                     cache_dir):
  """The task's training prompts (:class:`kd_jax.tasks.lm.PromptSet`: the gold prompts of
  arithmetic, the unlabelled pool of the reasoning testbed) and their answers, with the
  starting student as the reference."""
  del config, teacher_module, teacher_identity, cache_dir
  p = prepared.prompts
  rows = lm.token_data(p.tokens, p.prompt_lengths, p.lengths, prepared.mesh)
  return rollout_data(rows, p.answers, student_module, prepared.mesh), {}


def _rollout_step_flops(config, shapes: compute.Shapes) -> dict[str, int]:
  """A rollout step's compute: ``shapes.batch`` rows sampled from whole-row prompt buffers
  (:meth:`kd_jax.tasks.lm.LanguageModeling.sample_rows`), trained on, and scored by the
  frozen reference and (when it runs) the teacher, which with ``rl.teacher_mix`` > 0
  also decodes alongside the student."""
  rows, buffer = shapes.batch, shapes.row + 1
  student = (compute.generation(shapes.student, rows, buffer, shapes.new_tokens)
             + compute.training(shapes.student, rows, shapes.row)
             + compute.forward(shapes.student, rows, shapes.row))       # the reference
  teacher = 0
  if shapes.teacher is not None:
    teacher = compute.forward(shapes.teacher, rows, shapes.row)
    if config.method == "minillm" and config.rl.teacher_mix:
      teacher += compute.generation(shapes.teacher, rows, buffer, shapes.new_tokens)
  return {"student": student, "teacher": teacher}


def _hooks(term, uses_teacher=True):
  return Method(term, PROMPT_TASKS, uses_teacher=uses_teacher, check=_check,
                train_overrides=_rl_overrides, training_task=_rollout_task,
                student_data=_rollout_prompts, step_flops=_rollout_step_flops)


METHODS = {"grpo": _hooks(_group_relative_policy_gradient,
                          uses_teacher=lambda config: config.rl.teacher_weight > 0),
           "minillm": _hooks(_reverse_kl_policy_gradient)}
