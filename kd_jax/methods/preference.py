"""Rank-based distillation (``method="dpo"``) of a language-model student: its checks, its
objective, and the preference pairs it trains on.

Two ways to make the (chosen, rejected) pairs of a prompt (``dpo.pairs``):

* ``"ranked"`` — the student's own k samples, ranked by a reward: the verifier's
  verdict (1 or 0) plus ``dpo.teacher_weight`` times the teacher's mean per-token
  log-likelihood of the response (:func:`kd_jax.objectives.rl_losses.teacher_rewards`), so the
  teacher orders samples the verifier ties. The best verified-correct sample is chosen
  (any best sample with ``dpo.correct_chosen=False``), the worst rejected; a prompt
  whose samples all tie, or with no correct sample, gives no pair.
* ``"teacher"`` — teacher-versus-student pairs: a verified teacher sample chosen, the
  student's first sample rejected (prompts without a verified teacher sample give no
  pair). DPO on them is DPKD (Li et al. 2024), the baseline DistiLLM-2 (Ko et al. 2025)
  compares with; DistiLLM-2's own loss on such data is not DPO.

``dpo.nll_weight`` = λ > 0 adds λ times the chosen responses' length-normalised NLL to
the loss (Pang et al. 2024; :func:`kd_jax.objectives.rl_losses.dpo_loss`).

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

from kd_jax.config import checks, schema
from kd_jax.core import parallel
from kd_jax.core.errors import ConfigError
from kd_jax.engine import teacher_cache
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.llm import compute, transfer
from kd_jax.methods.base import PROMPT_TASKS, Method, require_block, require_sft_start
from kd_jax.objectives import rl_losses
from kd_jax.tasks import lm

# How the pairs are made (the module docstring).
PAIRS = ("ranked", "teacher")


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


def ranked_pairs(tokens: np.ndarray, lengths: np.ndarray, rewards: np.ndarray,
                 correct: np.ndarray | None = None) -> Pairs:
  """Pairs from k samples per prompt (``tokens`` ``[k, N, T]``, ``lengths`` and ``rewards``
  ``[k, N]``): the highest-reward sample chosen, the lowest rejected (the first of equals);
  prompts whose rewards all tie, or whose chosen and rejected answers are the same
  tokens, are left out.

  With ``correct`` (``[k, N]`` bool, the verifier's verdicts) the chosen sample is the
  highest-reward *correct* one, and a prompt without a correct sample gives no pair: a
  pair that prefers one wrong answer to another teaches the wrong answer's chain.
  """
  chosen_rewards = rewards if correct is None else np.where(correct, rewards, -np.inf)
  best, worst = np.argmax(chosen_rewards, axis=0), np.argmin(rewards, axis=0)
  prompts = np.arange(rewards.shape[1])
  has_chosen = np.ones(rewards.shape[1], bool) if correct is None else correct.any(axis=0)
  keep = has_chosen & (rewards[best, prompts] > rewards[worst, prompts]) & _differ(
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
                else None,
                **({} if correct is None else
                   {"prompts_without_a_correct_sample": int((~has_chosen).sum())})})


def teacher_pairs(teacher_prompt_index: np.ndarray, teacher_responses: np.ndarray,
                  teacher_lengths: np.ndarray, student_tokens: np.ndarray,
                  student_lengths: np.ndarray) -> Pairs:
  """Teacher-versus-student pairs (DPKD's): each prompt's first verified teacher response (a
  :class:`kd_jax.llm.transfer.TransferSet`'s) chosen, the student's first sample
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


@device_split
class PairData(DeviceSplit):
  """The student's training split on the devices: both sides' token rows (``lm.TokenData``
  layout) and the reference's sequence log-probabilities ``[M]`` of each response."""
  chosen: lm.TokenData
  rejected: lm.TokenData
  reference_chosen: jax.Array
  reference_rejected: jax.Array


def sequence_log_probs(model, token_data: lm.TokenData, batch_size: int = 256, *,
                       mean: bool = False) -> np.ndarray:
  """``[M]``: ``model``'s log-probability of each row's response (its masked targets), or
  with ``mean`` its mean per-token log-likelihood (:func:`kd_jax.objectives.rl_losses.teacher_rewards`)."""
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
  chosen = lm.token_data(*transfer.response_rows(pairs.chosen, pairs.chosen_lengths, pairs.prompt_index, prompts,
                               prompt_lengths, max_len), mesh)
  rejected = lm.token_data(*transfer.response_rows(pairs.rejected, pairs.rejected_lengths, pairs.prompt_index,
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
  # Two rows per example: a teacher-output cache holds one (a teacher in the step runs live).
  teacher_outputs_cacheable: ClassVar[bool] = False

  def train_batch(self, data: PairData, index, mask, rng, policy=None, teacher=None):
    del rng, policy, teacher
    tokens = jnp.concatenate([data.chosen.tokens[index], data.rejected.tokens[index]])
    loss_mask = (jnp.concatenate([data.chosen.loss_mask[index], data.rejected.loss_mask[index]])
                 & jnp.concatenate([mask, mask])[:, None])
    reference = jnp.concatenate([data.reference_chosen[index], data.reference_rejected[index]])
    return tokens[:, :-1], (tokens[:, 1:], reference), loss_mask, {}

  def train_metrics(self, logits, targets, loss_mask) -> dict:
    return super().train_metrics(logits, targets[0], loss_mask)


def _direct_preference(settings, step, s_logits, t_logits, labels, mask):
  """``dpo``: DPO on a batch of pairs (:class:`PreferencePairs`: rows
  chosen then rejected, ``labels`` = (targets, the reference's sequence log-probabilities))
  with β = ``dpo.beta``; no teacher in the step (it ranked or wrote the pairs)."""
  del step, t_logits
  targets, reference = labels
  logps = rl_losses.sequence_log_probs(rl_losses.token_log_probs(s_logits, targets), mask)
  half = logps.shape[0] // 2
  loss, metrics = rl_losses.dpo_loss(logps[:half], logps[half:], reference[:half],
                                     reference[half:], beta=settings.dpo.beta,
                                     mask=jnp.any(mask[:half], axis=-1),
                                     nll_weight=settings.dpo.get("nll_weight", 0.0),
                                     chosen_lengths=jnp.sum(mask[:half], axis=-1))
  return loss, metrics


def _check(config) -> None:
  p = require_block(config, "dpo", "dpo_config")
  require_sft_start(config)
  checks.choice("dpo.pairs", p.pairs, PAIRS)
  checks.positive("dpo.beta", p.beta)
  checks.positive("dpo.learning_rate", p.learning_rate)
  checks.positive("dpo.temperature", p.temperature)
  checks.ints_at_least("dpo", p, ("k",), 2 if p.pairs == "ranked" else 1)
  checks.nonnegative("dpo.teacher_weight", p.teacher_weight)
  checks.nonnegative("dpo.nll_weight", p.get("nll_weight", 0.0))
  if p.pairs == "teacher":
    lm.check_transfer_block(config, "dpo.pairs='teacher'")


def pairs_task(config, prepared):
  """Batches of preference pairs, evaluated as the run's task is."""
  del config
  return prepared.task.trained_as(PreferencePairs)


def pair_data(p, config, prepared, student_module, teacher_module, teacher_identity, cache_dir):
  """Pairs on the task's training prompts from the starting student's samples, as the block
  ``p`` says (``pairs``, ``k``, ``temperature``, ``teacher_weight``, ``correct_chosen``: the
  fields of :func:`kd_jax.config.dpo_config`), as the student's training split and the
  report ``results.json`` adds (``preference_pairs``)."""
  prompts, mesh = prepared.prompts, prepared.mesh
  samples = transfer.sample(
      student_module, prompts.prompts, prompts.prompt_lengths, k=p.k,
      sampling=schema.sampling_config(temperature=p.temperature),
      max_new_tokens=prepared.task.max_new_tokens, eos_id=prompts.eos_id, pad_id=prompts.pad_id,
      directory=cache_dir,
      identity={"student": teacher_cache.fingerprint(nnx.state(student_module))},
      seed=config.seed)
  k, n = samples.lengths.shape
  if p.pairs == "teacher":
    written = prompts.teacher_samples(teacher_module, teacher_identity, cache_dir)
    pairs = teacher_pairs(written.prompt_index, written.responses, written.lengths,
                          samples.tokens, samples.lengths)
  else:
    verdicts = np.array([[prompts.check_answer(prompts.decode(row), answer)
                          for row, answer in zip(sample_rows, prompts.answers)]
                         for sample_rows in samples.tokens], np.float32)
    rewards = verdicts
    if p.teacher_weight:
      every = lm.token_data(*transfer.response_rows(
          samples.tokens.reshape(k * n, -1), samples.lengths.reshape(-1),
          np.tile(np.arange(n), k), prompts.tokens, prompts.prompt_lengths, prompts.max_len),
          mesh)
      rewards = rewards + p.teacher_weight * sequence_log_probs(
          teacher_module, every, mean=True).reshape(k, n)
    pairs = ranked_pairs(samples.tokens, samples.lengths, rewards,
                         correct=verdicts > 0 if p.get("correct_chosen", True) else None)
    pairs.stats["verifier_accuracy"] = float(verdicts.mean())
  if not len(pairs.prompt_index):
    if p.pairs == "teacher":
      raise ConfigError("transfer", "no preference pairs: none of the teacher's samples "
                        "passed the verifier (transfer.k, transfer.label_free)")
    raise ConfigError("dpo", f"no preference pairs: every prompt's {k} samples tie or none "
                      "is correct (sample more: dpo.k, dpo.temperature)")
  data = preference_data(pairs, prompts.tokens, prompts.prompt_lengths, prompts.max_len,
                         student_module, mesh)
  return data, {"preference_pairs": {**pairs.stats, "generation_seconds": samples.seconds,
                                     **_pair_flops(p, config, prepared, student_module,
                                                   teacher_module, k * n, len(pairs.prompt_index))}}


def _pair_flops(p, config, prepared, student_module, teacher_module, samples: int,
                pairs: int) -> dict[str, int]:
  """What making the pairs cost once (:mod:`kd_jax.llm.compute`): the student's samples and
  the reference's scores of both answers of each pair; the teacher's scores of the samples
  (ranked pairs with ``teacher_weight``) or its transfer set (teacher pairs)."""
  prompt = prepared.prompts.prompts.shape[1]
  row, new_tokens = prepared.prompts.max_len - 1, prepared.task.max_new_tokens
  student = (compute.generation(student_module.config, samples, prompt, new_tokens)
             + compute.forward(student_module.config, 2 * pairs, row))
  teacher = 0
  if p.pairs == "teacher":
    teacher = compute.generation(teacher_module.config,
                                 len(prepared.prompts.answers) * config.transfer.k, prompt,
                                 new_tokens)
  elif p.teacher_weight:
    teacher = compute.forward(teacher_module.config, samples, row)
  return {"student_flops": student, "teacher_flops": teacher}


METHODS = {
    # No teacher in the step: it ranked or wrote the pairs.
    "dpo": Method(_direct_preference, PROMPT_TASKS, uses_teacher=False, check=_check,
                  train_overrides=lambda c: {"learning_rate": c.dpo.learning_rate},
                  training_task=pairs_task,
                  student_data=lambda config, *rest: pair_data(config.dpo, config, *rest)),
}
