"""Preference pairs for rank-based distillation (DPO) of a language-model student.

Two ways to make the (chosen, rejected) pairs of a prompt (``dpo.pairs``):

* ``"ranked"`` — the student's own k samples, ranked by a reward: the verifier's
  verdict (1 or 0) plus ``dpo.teacher_weight`` times the teacher's mean per-token
  log-likelihood of the response (:func:`kd_jax.rl_losses.teacher_rewards`), so the
  teacher orders samples the verifier ties. The best sample is chosen, the worst
  rejected; a prompt whose samples all tie gives no pair.
* ``"teacher"`` — DistiLLM-2's contrastive pairs (Ko et al. 2025): a verified teacher
  sample chosen, the student's first sample rejected (prompts without a verified
  teacher sample give no pair).

:func:`preference_data` turns pairs into the student's training split: token rows for
both sides and the frozen reference's (the starting student's) sequence
log-probabilities of each response, computed once because the reference and the rows
are fixed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax.core import parallel
from kd_jax.objectives import rl_losses
from kd_jax.tasks import lm


@dataclasses.dataclass(frozen=True)
class Pairs:
  """``M`` pairs: ``prompt_index`` ``[M]``; ``chosen`` / ``rejected`` responses ``[M, T]`` int32
  (pad after EOS) with their lengths ``[M]`` (up to and including EOS); ``stats``."""
  prompt_index: np.ndarray
  chosen: np.ndarray
  chosen_lengths: np.ndarray
  rejected: np.ndarray
  rejected_lengths: np.ndarray
  stats: dict


def _differ(a: np.ndarray, a_lengths: np.ndarray, b: np.ndarray, b_lengths: np.ndarray):
  """``[M]``: whether two responses differ (a token-identical pair teaches nothing: its DPO
  loss is log 2 with no gradient)."""
  width = min(a.shape[-1], b.shape[-1])
  same_tokens = np.all(np.where(np.arange(width) < a_lengths[:, None], a[:, :width] == b[:, :width],
                                True), axis=1)
  return (a_lengths != b_lengths) | ~same_tokens


def ranked_pairs(tokens: np.ndarray, lengths: np.ndarray, rewards: np.ndarray) -> Pairs:
  """Pairs from k samples per prompt (``tokens`` ``[k, N, T]``, ``lengths`` and ``rewards``
  ``[k, N]``): the highest-reward sample chosen, the lowest rejected (the first of equals);
  prompts whose rewards all tie, or whose chosen and rejected answers are the same
  tokens, are left out."""
  best, worst = np.argmax(rewards, axis=0), np.argmin(rewards, axis=0)
  prompts = np.arange(rewards.shape[1])
  keep = (rewards[best, prompts] > rewards[worst, prompts]) & _differ(
      tokens[best, prompts], lengths[best, prompts], tokens[worst, prompts],
      lengths[worst, prompts])
  index = prompts[keep]
  pick = lambda which, array: array[which[keep], index]
  return Pairs(index.astype(np.int32), pick(best, tokens), pick(best, lengths),
               pick(worst, tokens), pick(worst, lengths),
               {"prompts": int(rewards.shape[1]), "pairs": int(keep.sum()),
                "samples_per_prompt": int(rewards.shape[0]),
                "mean_reward_chosen": float(rewards[best, prompts][keep].mean()) if keep.any()
                else None,
                "mean_reward_rejected": float(rewards[worst, prompts][keep].mean()) if keep.any()
                else None})


def teacher_pairs(teacher_prompt_index: np.ndarray, teacher_responses: np.ndarray,
                  teacher_lengths: np.ndarray, student_tokens: np.ndarray,
                  student_lengths: np.ndarray) -> Pairs:
  """DistiLLM-2's pairs: each prompt's first verified teacher response (a
  :class:`kd_jax.transfer.TransferSet`'s) chosen, the student's first sample
  (``[k, N, T]``) rejected; a prompt where the two are the same tokens is left out."""
  prompts, first = np.unique(teacher_prompt_index, return_index=True)
  width = max(teacher_responses.shape[1], student_tokens.shape[2])
  pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
  chosen, chosen_lengths = pad(teacher_responses[first]), teacher_lengths[first]
  rejected, rejected_lengths = pad(student_tokens[0, prompts]), student_lengths[0, prompts]
  keep = _differ(chosen, chosen_lengths, rejected, rejected_lengths)
  return Pairs(prompts[keep].astype(np.int32), chosen[keep], chosen_lengths[keep], rejected[keep],
               rejected_lengths[keep],
               {"prompts": int(student_tokens.shape[1]), "pairs": int(keep.sum()),
                "samples_per_prompt": int(student_tokens.shape[0])})


@dataclasses.dataclass(frozen=True)
class PairData:
  """The student's training split on the devices: both sides' token rows (``lm.TokenData``
  layout) and the reference's sequence log-probabilities ``[M]`` of each response."""
  chosen: lm.TokenData
  rejected: lm.TokenData
  reference_chosen: jax.Array
  reference_rejected: jax.Array
  teacher_logits: jax.Array | None = None      # (never cached: the step has no teacher)
  teacher_features: dict | None = None

  @property
  def size(self) -> int:
    return self.chosen.size


jax.tree_util.register_dataclass(
    PairData, data_fields=["chosen", "rejected", "reference_chosen", "reference_rejected",
                           "teacher_logits", "teacher_features"], meta_fields=[])


def rows(pairs_responses, pairs_lengths, prompt_index, prompts, prompt_lengths, max_len):
  """Token rows ``prompt + response`` and their lengths (``encode_pairs`` layout)."""
  out = np.zeros((len(prompt_index), max_len), np.int32)
  lengths = np.zeros(len(prompt_index), np.int32)
  for i, (p, response, n) in enumerate(zip(prompt_index, pairs_responses, pairs_lengths)):
    row = np.concatenate([prompts[p, :prompt_lengths[p]], response[:n]])[:max_len]
    out[i, :len(row)], lengths[i] = row, len(row)
  return out, prompt_lengths[prompt_index].astype(np.int32), lengths


def sequence_log_probs(model, token_data: lm.TokenData, batch_size: int = 256, *,
                       mean: bool = False) -> np.ndarray:
  """``[M]``: ``model``'s log-probability of each row's response (its masked targets), or
  with ``mean`` its mean per-token log-likelihood (:func:`kd_jax.rl_losses.teacher_rewards`)."""
  graphdef, state = nnx.split(model)
  tokens, mask = np.asarray(token_data.tokens), np.asarray(token_data.loss_mask)
  return np.concatenate([np.asarray(_score(graphdef, state, jnp.asarray(tokens[i:i + batch_size]),
                                           jnp.asarray(mask[i:i + batch_size]), mean=mean))
                         for i in range(0, len(tokens), batch_size)])


@functools.partial(jax.jit, static_argnames=("graphdef", "mean"))
def _score(graphdef, state, tokens, mask, *, mean: bool):
  """Compiled once per model and shape (the graph is a static argument)."""
  token_logps = rl_losses.token_log_probs(nnx.merge(graphdef, state)(tokens[:, :-1]),
                                          tokens[:, 1:])
  return (rl_losses.teacher_rewards(token_logps, mask) if mean
          else rl_losses.sequence_log_probs(token_logps, mask))


def preference_data(pairs: Pairs, prompts, prompt_lengths, max_len: int, reference,
                    mesh) -> PairData:
  """``pairs`` as the student's training split, scored once by the frozen ``reference``."""
  chosen = lm.token_data(*rows(pairs.chosen, pairs.chosen_lengths, pairs.prompt_index, prompts,
                               prompt_lengths, max_len), mesh)
  rejected = lm.token_data(*rows(pairs.rejected, pairs.rejected_lengths, pairs.prompt_index,
                                 prompts, prompt_lengths, max_len), mesh)
  scored = parallel.put_replicated((sequence_log_probs(reference, chosen),
                                    sequence_log_probs(reference, rejected)), mesh)
  return PairData(chosen, rejected, *scored)


@dataclasses.dataclass(frozen=True, eq=False)
class PreferencePairs(lm.LanguageModeling):
  """The DPO student's task: a batch of B pairs is 2B rows, the chosen ones then the rejected
  ones; the targets carry the reference's sequence log-probabilities ``[2B]`` for the loss
  (``methods``' ``dpo``). Evaluation is :class:`~kd_jax.tasks.lm.LanguageModeling`'s."""
  rows_per_example: ClassVar[int] = 2

  def train_batch(self, data: PairData, index, mask, rng, policy=None, teacher=None):
    del rng, policy, teacher
    tokens = jnp.concatenate([data.chosen.tokens[index], data.rejected.tokens[index]])
    loss_mask = (jnp.concatenate([data.chosen.loss_mask[index], data.rejected.loss_mask[index]])
                 & jnp.concatenate([mask, mask])[:, None])
    reference = jnp.concatenate([data.reference_chosen[index], data.reference_rejected[index]])
    return tokens[:, :-1], (tokens[:, 1:], reference), loss_mask, {}

  def train_metrics(self, logits, targets, loss_mask) -> dict:
    return super().train_metrics(logits, targets[0], loss_mask)
