r"""Rewards, advantages and the policy-gradient and preference losses of RL- and rank-based
distillation of language models. Pure functions of per-token log-probabilities.

Shapes: a batch of B sampled responses of T tokens, ``mask`` ``[B, T]`` marking the
response tokens (prompt and padding out, the EOS in); log-probabilities are of the
sampled tokens, ``[B, T]`` (:func:`token_log_probs`).

Rewards (one per response):

* :func:`verifier_rewards` — 1 if the response's final answer checks, else 0
  (DeepSeek-R1's rule-based reward);
* :func:`teacher_rewards` — the teacher's mean per-token log-likelihood of the
  response; with ``student_log_probs`` the mean log-ratio log p_T − log q_S, whose
  expectation under the student is −KL(q_S ‖ p_T) per token (MiniLLM's reverse-KL
  reward, Gu et al. 2024);
* a weighted sum of the two is ``a * verifier + b * teacher`` (no function needed).

Policy gradient: :func:`group_advantages` (GRPO, Shao et al. 2024: k samples per
prompt, reward minus the group mean over the group standard deviation) and
:func:`policy_gradient_loss` (the clipped importance-weighted surrogate, per-token
mean, plus β_KL times the k3 estimate of KL(π ‖ π_ref) to the starting policy).

MiniLLM (Gu et al. 2024): :func:`normalized_future_rewards` (the length-normalised
return of the tokens after each one), :func:`mixture_importance_weights` (for
teacher-mixed sampling) and :func:`minillm_loss`, the reverse-KL policy gradient with
its single-step regularisation.

Preferences: :func:`dpo_loss` (Rafailov et al. 2023) on (chosen, rejected) pairs
against a frozen reference; with teacher samples as chosen and student samples as
rejected it is DPKD (Li et al. 2024), the DPO baseline of DistiLLM-2 (Ko et al. 2025).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.objectives.masked import masked_mean


def token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """``log softmax(logits)[b, t, tokens[b, t]]``: ``[B, T]`` float32 from logits ``[B, T, V]``."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]


def _masked_sum(values, mask):
  return jnp.sum(jnp.where(mask, values, 0.0), axis=-1)


def sequence_log_probs(token_logps: jax.Array, mask: jax.Array) -> jax.Array:
  """``[B]``: the log-probability of each response, the sum over its masked tokens."""
  return _masked_sum(token_logps.astype(jnp.float32), mask.astype(bool))


def verifier_rewards(texts: Sequence[str], answers: Sequence, check: Callable) -> np.ndarray:
  """``[B]`` float32: 1.0 where ``check(text, answer)`` (the task's answer checker), else 0.0."""
  return np.asarray([1.0 if check(t, a) else 0.0 for t, a in zip(texts, answers)], np.float32)


def teacher_rewards(teacher_log_probs: jax.Array, mask: jax.Array,
                    student_log_probs: jax.Array | None = None) -> jax.Array:
  """``[B]``: the mean over each response's tokens of log p_T(y_t), or, with
  ``student_log_probs``, of log p_T(y_t) − log q_S(y_t) (MiniLLM's reverse-KL reward).
  The student's log-probabilities are constants here (a reward is not differentiated)."""
  mask = mask.astype(bool)
  values = teacher_log_probs.astype(jnp.float32)
  if student_log_probs is not None:
    values = values - jax.lax.stop_gradient(student_log_probs.astype(jnp.float32))
  return _masked_sum(values, mask) / jnp.maximum(jnp.sum(mask, axis=-1), 1)


def group_advantages(rewards: jax.Array, *, eps: float = 1e-4) -> jax.Array:
  r"""GRPO's group-relative advantages of rewards ``[P, K]`` (K samples of each of P prompts):

  .. math:: A_{p,k} = \frac{r_{p,k} - \operatorname{mean}_k r_{p,\cdot}}
                           {\operatorname{std}_k r_{p,\cdot} + \epsilon}

  with the population standard deviation; a group whose rewards are all equal gets
  advantages 0 (it carries no preference). :func:`policy_gradient_loss` takes one
  advantage per response: ``advantages.reshape(-1)``, with the batch's responses laid
  out prompt by prompt (the K samples of prompt 0, then of prompt 1, ...).
  """
  rewards = rewards.astype(jnp.float32)
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  std = jnp.std(rewards, axis=-1, keepdims=True)
  return (rewards - mean) / (std + eps)


def _k3(reference_log_probs, log_probs):
  """Per token, the k3 estimate e^d − d − 1 of KL(π ‖ π_ref), d = log π_ref − log π (≥ 0)."""
  d = reference_log_probs - log_probs
  return jnp.exp(d) - d - 1.0


def policy_gradient_loss(log_probs: jax.Array, old_log_probs: jax.Array,
                         reference_log_probs: jax.Array, advantages: jax.Array,
                         mask: jax.Array, *, clip_epsilon: float = 0.2,
                         kl_coef: float = 0.04) -> tuple[jax.Array, dict]:
  r"""The clipped policy-gradient surrogate with a KL penalty to the reference, per token.

  .. math::
    \ell = \frac{1}{|M|}\sum_{(b,t)\in M} -\min\big(\rho_{bt} A_b,\
           \operatorname{clip}(\rho_{bt}, 1-\epsilon, 1+\epsilon) A_b\big)
           + \beta\,\big(e^{d_{bt}} - d_{bt} - 1\big)

  with :math:`\rho = e^{\log\pi - \log\pi_{old}}` and :math:`d = \log\pi_{ref} - \log\pi`
  (the k3 estimator of KL(π ‖ π_ref), ≥ 0, unbiased under samples of π). With one
  update per batch of samples (π = π_old) the first term's gradient is the
  REINFORCE gradient −A ∇log π. Only ``log_probs`` is differentiated.

  Args:
    log_probs: ``[B, T]`` the trained policy's log-probabilities of the sampled tokens.
    old_log_probs: ``[B, T]`` the sampling policy's (constants).
    reference_log_probs: ``[B, T]`` the frozen starting policy's (constants).
    advantages: ``[B]`` one per response, or ``[B, T]`` one per token (MiniLLM).
    mask: ``[B, T]`` the response tokens.

  Returns:
    ``(loss, {"policy_loss", "kl_to_reference", "clip_fraction"})``.
  """
  mask = mask.astype(bool)
  log_probs = log_probs.astype(jnp.float32)
  old = jax.lax.stop_gradient(old_log_probs.astype(jnp.float32))
  reference = jax.lax.stop_gradient(reference_log_probs.astype(jnp.float32))
  advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))
  if advantages.ndim == 1:
    advantages = advantages[:, None]
  ratio = jnp.exp(log_probs - old)
  clipped = jnp.clip(ratio, 1.0 - clip_epsilon, 1.0 + clip_epsilon)
  surrogate = -jnp.minimum(ratio * advantages, clipped * advantages)
  kl = _k3(reference, log_probs)
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0)) / count
  policy, kl_mean = mean(surrogate), mean(kl)
  clip_fraction = mean((jnp.abs(ratio - 1.0) > clip_epsilon).astype(jnp.float32))
  return policy + kl_coef * kl_mean, {"policy_loss": policy, "kl_to_reference": kl_mean,
                                      "clip_fraction": clip_fraction}


def dpo_loss(chosen_log_probs: jax.Array, rejected_log_probs: jax.Array,
             reference_chosen_log_probs: jax.Array, reference_rejected_log_probs: jax.Array,
             *, beta: float = 0.1, mask: jax.Array | None = None, nll_weight: float = 0.0,
             chosen_lengths: jax.Array | None = None) -> tuple[jax.Array, dict]:
  r"""Direct preference optimisation, with an optional NLL term on the chosen responses:
  the mean over pairs of

  .. math:: -\log\sigma\Big(\beta\big[(\log\pi(y_w) - \log\pi_{ref}(y_w))
                                   - (\log\pi(y_l) - \log\pi_{ref}(y_l))\big]\Big)
            \;-\; \lambda\,\frac{\log\pi(y_w)}{|y_w|}

  from sequence log-probabilities ``[B]`` (:func:`sequence_log_probs`) of the chosen
  ``y_w`` and rejected ``y_l`` responses (Rafailov et al. 2023). Equal policy and reference
  give log 2 for every β when λ = ``nll_weight`` = 0. The reference's log-probabilities
  are constants. ``mask`` ``[B]`` keeps the real pairs (the padding of a ragged last
  batch counts for nothing).

  The λ term is the length-normalised negative log-likelihood of the chosen response
  (``chosen_lengths`` ``[B]``: its token count), Pang et al. 2024, "Iterative Reasoning
  Preference Optimization" (https://arxiv.org/abs/2404.19733), eq. 1; TRL calls λ
  ``rpo_alpha``. It counters *likelihood displacement*: chosen and rejected chains that
  share their first tokens let DPO raise the margin by lowering both log-probabilities,
  which the logged ``chosen_log_prob`` and ``rejected_log_prob`` show.

  Returns:
    ``(loss, metrics)``: ``reward_margin`` (β·margin mean), ``preference_accuracy``
    (fraction with margin > 0), ``chosen_log_prob`` / ``rejected_log_prob`` (the policy's
    mean sequence log-probabilities), ``chosen_reward`` / ``rejected_reward`` (β times
    their log-ratios to the reference) and, with λ > 0, ``chosen_nll`` (the λ term's NLL).
  """
  if beta <= 0:
    raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
  if nll_weight < 0:
    raise ValueError(f"dpo_loss: nll_weight must be >= 0, got {nll_weight}")
  if nll_weight and chosen_lengths is None:
    raise ValueError("dpo_loss: nll_weight > 0 needs chosen_lengths (the chosen token counts)")
  chosen = chosen_log_probs.astype(jnp.float32) - jax.lax.stop_gradient(
      reference_chosen_log_probs.astype(jnp.float32))
  rejected = rejected_log_probs.astype(jnp.float32) - jax.lax.stop_gradient(
      reference_rejected_log_probs.astype(jnp.float32))
  margin = beta * (chosen - rejected)
  valid = jnp.ones(margin.shape, bool) if mask is None else mask.astype(bool)
  mean = lambda x: masked_mean(x, valid)
  loss = mean(-jax.nn.log_sigmoid(margin))
  metrics = {"reward_margin": mean(margin),
             "preference_accuracy": mean((margin > 0).astype(jnp.float32)),
             "chosen_log_prob": mean(chosen_log_probs.astype(jnp.float32)),
             "rejected_log_prob": mean(rejected_log_probs.astype(jnp.float32)),
             "chosen_reward": mean(beta * chosen), "rejected_reward": mean(beta * rejected)}
  if nll_weight:
    counts = jnp.maximum(chosen_lengths.astype(jnp.float32), 1.0)
    metrics["chosen_nll"] = mean(-chosen_log_probs.astype(jnp.float32) / counts)
    loss = loss + nll_weight * metrics["chosen_nll"]
  return loss, metrics


def normalized_future_rewards(token_rewards: jax.Array, mask: jax.Array) -> jax.Array:
  r"""MiniLLM's length-normalised long-term reward of each token ``[B, T]``:

  .. math:: R^{\text{norm}}_{t+1} = \frac{1}{|\{t' > t\}|}\sum_{t' > t} r_{t'}

  over the masked positions after t (0 where none follows: the last token's long-term
  reward is empty, its own reward is the single-step term's)."""
  mask = mask.astype(bool)
  values = jnp.where(mask, token_rewards.astype(jnp.float32), 0.0)
  # Suffix sums from t on, minus the token itself: the sums and counts after t. (Keyword
  # arguments: jax2onnx, once imported, replaces jnp.cumsum with a keyword-only version.)
  after = lambda x: jnp.flip(jnp.cumsum(jnp.flip(x, axis=-1), axis=-1), axis=-1) - x
  total, count = after(values), after(mask.astype(jnp.float32))
  return jnp.where(count > 0, total / jnp.maximum(count, 1.0), 0.0)


def mixture_importance_weights(student_log_probs: jax.Array, teacher_log_probs: jax.Array,
                               mix: float) -> jax.Array:
  r"""``[B, T]`` per-token importance weights :math:`w_t = q(y_t) / \tilde p(y_t)` of tokens
  drawn from MiniLLM's teacher-mixed distribution :math:`\tilde p = \alpha p + (1-\alpha) q`
  (``mix`` = α in [0, 1)); bounded by 1 / (1 − α). Constants (not differentiated)."""
  log_q = jax.lax.stop_gradient(student_log_probs.astype(jnp.float32))
  log_p = jax.lax.stop_gradient(teacher_log_probs.astype(jnp.float32))
  if mix == 0:
    return jnp.ones_like(log_q)
  log_mixture = jnp.logaddexp(jnp.log(mix) + log_p, jnp.log1p(-mix) + log_q)
  return jnp.exp(log_q - log_mixture)


def minillm_loss(log_probs: jax.Array, teacher_log_probs: jax.Array, single_step_kl: jax.Array,
                 reference_log_probs: jax.Array, mask: jax.Array, *, mix: float = 0.0,
                 kl_coef: float = 0.0) -> tuple[jax.Array, dict]:
  r"""MiniLLM's reverse-KL policy gradient (Gu et al. 2024, eq. 5–7) as a surrogate loss.

  With per-token rewards :math:`r_t = \log p(y_t) - \log q(y_t)` (constants) and the
  importance weights :math:`w_t` of teacher-mixed sampling (1 without it):

  .. math::
    \ell = \frac{1}{|M|}\sum_{(b,t)\in M} w_{bt}\Big[-A_{bt}
           \log q(y_{bt}) + \mathrm{KL}\big(q(\cdot|y_{<t}) \,\|\, p(\cdot|y_{<t})\big)
           + \beta\,\mathrm{k3}_{bt}\Big],
    \qquad A_{bt} = \frac{R^{\text{norm}}_{b,t+1} - \bar R}{\sqrt{\sigma_R^2 + 10^{-8}}}

  The first term is the policy gradient of the long-term reward
  (:func:`normalized_future_rewards`) *whitened* over the batch's response tokens, as
  the MiniLLM authors' code (LMOps) does: less its mean :math:`\bar R` (a baseline that
  leaves the expected gradient unchanged) and divided by its standard deviation
  :math:`\sigma_R` (population variance over the masked tokens), which keeps the
  policy term's scale fixed as the rewards shrink during training; the second the *single-step
  regularisation*: the current token's expected reward, −KL(q_t ‖ p_t) over the whole
  vocabulary, differentiated exactly instead of through a sampled token. The last is
  :func:`policy_gradient_loss`'s k3 estimate of KL(q ‖ q_ref) to the frozen reference,
  weighted by ``kl_coef`` (and, like the others, by :math:`w_t`: the tokens were drawn
  from the mixture, not from q).

  Args:
    log_probs: ``[B, T]`` the student's log-probabilities of the sampled tokens (differentiated).
    teacher_log_probs: ``[B, T]`` the teacher's (constants).
    single_step_kl: ``[B, T]`` KL(q_t ‖ p_t) per position over the vocabulary, differentiable
      in the student (:func:`kd_jax.divergences.reverse_kl`).
    reference_log_probs: ``[B, T]`` the frozen starting student's (constants).
    mask: ``[B, T]`` the response tokens.
    mix: α of teacher-mixed sampling (0: the tokens were sampled from the student).
    kl_coef: β of the KL penalty to the reference.

  Returns:
    ``(loss, {"policy_loss", "single_step_kl", "kl_to_reference", "reward",
    "importance_weight"})``; ``reward`` is the mean per-token r_t.
  """
  mask = mask.astype(bool)
  rewards = (jax.lax.stop_gradient(teacher_log_probs.astype(jnp.float32))
             - jax.lax.stop_gradient(log_probs.astype(jnp.float32)))
  weights = mixture_importance_weights(log_probs, teacher_log_probs, mix)
  future = normalized_future_rewards(rewards, mask)
  count = jnp.maximum(jnp.sum(mask), 1)
  mean = lambda x: jnp.sum(jnp.where(mask, x, 0.0)) / count
  centred = future - mean(future)
  advantages = centred * jax.lax.rsqrt(mean(centred * centred) + 1e-8)
  policy, metrics = policy_gradient_loss(log_probs, log_probs, reference_log_probs,
                                         weights * advantages, mask, kl_coef=0.0)
  single_step = mean(weights * single_step_kl.astype(jnp.float32))
  # k3 is an estimate under samples of q: weighted like the other terms under mixing.
  kl = mean(weights * _k3(jax.lax.stop_gradient(reference_log_probs.astype(jnp.float32)),
                          log_probs.astype(jnp.float32)))
  return policy + single_step + kl_coef * kl, {
      "policy_loss": metrics["policy_loss"], "single_step_kl": single_step,
      "kl_to_reference": kl, "reward": mean(rewards), "importance_weight": mean(weights)}
