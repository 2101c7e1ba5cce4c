"""On-policy rollouts for policy-gradient distillation of a language-model student.

The students of ``method="grpo"`` and ``method="minillm"`` (:mod:`kd_jax.methods`) train
on their own answers, sampled inside the jitted step: :class:`Rollouts` is their task. A
batch of P prompts becomes P·k rows, the k samples of prompt 0, then of prompt 1, ...
(the layout :func:`kd_jax.rl_losses.group_advantages` expects), drawn at temperature 1
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

from kd_jax.core import parallel
from kd_jax.objectives import rl_losses
from kd_jax.tasks import lm


@dataclasses.dataclass(frozen=True)
class RolloutData:
  """The prompts on the devices: ``prompts`` the gold rows (only their prompts are used),
  ``answers`` ``[N]`` int32 the gold answers, ``reference`` the frozen starting student's
  ``nnx.State`` (model variables, replicated)."""
  prompts: lm.TokenData
  answers: jax.Array
  reference: Any
  teacher_logits: jax.Array | None = None      # (never cached: every batch is new)
  teacher_features: dict | None = None

  @property
  def size(self) -> int:
    return self.prompts.size


jax.tree_util.register_dataclass(
    RolloutData, data_fields=["prompts", "answers", "reference", "teacher_logits",
                              "teacher_features"], meta_fields=[])


class RolloutTargets(NamedTuple):
  """A rollout batch's targets: ``tokens`` ``[B, T]`` (the sampled rows shifted by one),
  ``verified`` ``[B]`` float32 (1 where the answer checks), ``reference`` ``[B, T]`` the
  reference's log-probabilities of ``tokens``."""
  tokens: jax.Array
  verified: jax.Array
  reference: jax.Array


def rollout_data(prompts: lm.TokenData, answers: np.ndarray, reference_model: nnx.Module,
                 mesh) -> RolloutData:
  """The rollout split: the gold rows, their answers and a copy of ``reference_model``'s
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
