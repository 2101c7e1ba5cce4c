"""Rewards, advantages, the policy-gradient and DPO losses (kd_jax/objectives/rl_losses.py) against float64
NumPy references on hand-made batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from kd_jax import divergences
from kd_jax.objectives import rl_losses
from kd_jax.data import arithmetic

MASK = np.array([[True, True, True, False], [True, True, False, False]])


def test_token_log_probs_pick_the_sampled_tokens():
  logits = np.random.default_rng(0).normal(size=(2, 4, 5))
  tokens = np.array([[0, 4, 2, 1], [3, 3, 0, 2]])
  expected = np.take_along_axis(scipy.special.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]
  np.testing.assert_allclose(rl_losses.token_log_probs(logits, tokens), expected, rtol=1e-5)
  np.testing.assert_allclose(rl_losses.sequence_log_probs(expected, MASK),
                             [expected[0, :3].sum(), expected[1, :2].sum()], rtol=1e-5)


def test_verifier_rewards_are_the_checker():
  texts = ["1+2=3####3", "1+2=3####4", "garbage", "####-7"]
  answers = [3, 3, 3, -7]
  rewards = rl_losses.verifier_rewards(texts, answers, arithmetic.check_answer)
  np.testing.assert_array_equal(rewards, [float(arithmetic.check_answer(t, a))
                                          for t, a in zip(texts, answers)])
  np.testing.assert_array_equal(rewards, [1, 0, 0, 1])


def test_teacher_rewards_are_mean_token_log_likelihoods_or_log_ratios():
  teacher = np.log(np.array([[0.5, 0.25, 0.5, 0.9], [0.1, 0.2, 0.3, 0.4]]))
  student = np.log(np.array([[0.25, 0.25, 0.5, 0.1], [0.2, 0.2, 0.3, 0.4]]))
  np.testing.assert_allclose(rl_losses.teacher_rewards(teacher, MASK),
                             [teacher[0, :3].mean(), teacher[1, :2].mean()], rtol=1e-6)
  np.testing.assert_allclose(rl_losses.teacher_rewards(teacher, MASK, student),
                             [np.log(2) / 3, np.log(0.5) / 2], rtol=1e-6)


def test_group_advantages_are_standardised_within_each_group():
  rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.2, 0.2, 0.2, 0.2], [3.0, 1.0, 2.0, 0.0]])
  mean, std = rewards.mean(-1, keepdims=True), rewards.std(-1, keepdims=True)
  expected = (rewards - mean) / (std + 1e-4)
  got = rl_losses.group_advantages(rewards)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[1], 0.0)            # all equal: no preference


def _np_policy_gradient(logp, old, ref, adv, mask, eps, beta):
  ratio = np.exp(logp - old)
  surrogate = -np.minimum(ratio * adv[:, None], np.clip(ratio, 1 - eps, 1 + eps) * adv[:, None])
  d = ref - logp
  kl = np.exp(d) - d - 1
  return surrogate[mask].mean() + beta * kl[mask].mean()


def test_policy_gradient_loss_matches_the_float64_formula():
  rng = np.random.default_rng(1)
  logp = np.log(rng.uniform(0.05, 0.9, (2, 4)))
  old = logp + rng.normal(0, 0.4, (2, 4))            # some ratios beyond the clip range
  ref = logp + rng.normal(0, 0.3, (2, 4))
  adv = np.array([1.5, -0.7])
  loss, metrics = rl_losses.policy_gradient_loss(logp, old, ref, adv, MASK, clip_epsilon=0.2,
                                                 kl_coef=0.05)
  np.testing.assert_allclose(loss, _np_policy_gradient(logp, old, ref, adv, MASK, 0.2, 0.05),
                             rtol=1e-5)
  assert 0 < float(metrics["clip_fraction"]) < 1 and float(metrics["kl_to_reference"]) > 0


def test_equal_rewards_leave_only_the_kl_term():
  rng = np.random.default_rng(2)
  logp = jnp.asarray(np.log(rng.uniform(0.05, 0.9, (2, 4))), jnp.float32)
  ref = logp + jnp.asarray(rng.normal(0, 0.3, (2, 4)), jnp.float32)
  advantages = rl_losses.group_advantages(jnp.full((1, 2), 0.7)).reshape(2)   # all zero
  grad = lambda coef: jax.grad(lambda lp: rl_losses.policy_gradient_loss(
      lp, logp, ref, advantages, MASK, kl_coef=coef)[0])(logp)
  np.testing.assert_array_equal(grad(0.0), 0.0)           # the policy term does nothing
  kl_only = jax.grad(lambda lp: 0.1 * rl_losses.policy_gradient_loss(
      lp, logp, ref, jnp.zeros(2), MASK, kl_coef=1.0)[1]["kl_to_reference"])(logp)
  np.testing.assert_allclose(grad(0.1), kl_only, rtol=1e-6)


def _np_dpo(pc, pr, rc, rr, beta):
  margin = beta * ((pc - rc) - (pr - rr))
  return np.mean(np.log1p(np.exp(-margin)))


def test_dpo_loss_matches_the_float64_formula_and_is_log2_for_equal_policies():
  pc, pr = np.array([-3.0, -10.0, -2.5]), np.array([-4.0, -9.0, -2.0])
  rc, rr = np.array([-3.5, -9.5, -2.0]), np.array([-3.5, -9.5, -2.2])
  for beta in (0.1, 1.0):
    loss, metrics = rl_losses.dpo_loss(pc, pr, rc, rr, beta=beta)
    np.testing.assert_allclose(loss, _np_dpo(pc, pr, rc, rr, beta), rtol=1e-6)
  np.testing.assert_allclose(metrics["preference_accuracy"], 1 / 3)
  for beta in (1e-8, 0.1, 10.0):     # identical policy and reference: every margin is 0
    same, _ = rl_losses.dpo_loss(pc, pr, pc, pr, beta=beta)
    np.testing.assert_allclose(same, np.log(2), rtol=1e-6)
  masked, _ = rl_losses.dpo_loss(pc, pr, rc, rr, beta=1.0, mask=np.array([True, False, True]))
  np.testing.assert_allclose(masked, _np_dpo(pc[[0, 2]], pr[[0, 2]], rc[[0, 2]], rr[[0, 2]], 1.0),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="beta must be > 0"):
    rl_losses.dpo_loss(pc, pr, rc, rr, beta=0.0)


def test_dpo_with_an_nll_term_adds_the_chosen_per_token_nll_and_logs_both_log_probs():
  pc, pr = np.array([-3.0, -10.0, -2.5]), np.array([-4.0, -9.0, -2.0])
  rc, rr = np.array([-3.5, -9.5, -2.0]), np.array([-3.5, -9.5, -2.2])
  counts, beta, lam = np.array([3, 5, 2]), 0.5, 0.7
  loss, metrics = rl_losses.dpo_loss(pc, pr, rc, rr, beta=beta, nll_weight=lam,
                                     chosen_lengths=counts)
  nll = np.mean(-pc / counts)               # Pang et al. 2024, eq. 1: -log p(y_w) / |y_w|
  np.testing.assert_allclose(loss, _np_dpo(pc, pr, rc, rr, beta) + lam * nll, rtol=1e-6)
  np.testing.assert_allclose(metrics["chosen_nll"], nll, rtol=1e-6)
  np.testing.assert_allclose(metrics["chosen_log_prob"], pc.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["rejected_log_prob"], pr.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["chosen_reward"], beta * (pc - rc).mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics["rejected_reward"], beta * (pr - rr).mean(), rtol=1e-6)
  # The pair mask covers the NLL term too.
  keep = np.array([True, False, True])
  masked, _ = rl_losses.dpo_loss(pc, pr, rc, rr, beta=beta, nll_weight=lam, chosen_lengths=counts,
                                 mask=keep)
  np.testing.assert_allclose(masked, _np_dpo(pc[keep], pr[keep], rc[keep], rr[keep], beta)
                             + lam * np.mean(-pc[keep] / counts[keep]), rtol=1e-6)
  # Its gradient raises the chosen log-probability more than DPO alone does.
  grad = lambda w: jax.grad(lambda c: rl_losses.dpo_loss(
      c, pr, rc, rr, beta=beta, nll_weight=w, chosen_lengths=counts)[0])(jnp.asarray(pc))
  np.testing.assert_allclose(grad(lam) - grad(0.0), -lam / counts / 3, rtol=1e-5)
  with pytest.raises(ValueError, match="needs chosen_lengths"):
    rl_losses.dpo_loss(pc, pr, rc, rr, nll_weight=1.0)
  with pytest.raises(ValueError, match="nll_weight must be >= 0"):
    rl_losses.dpo_loss(pc, pr, rc, rr, nll_weight=-1.0, chosen_lengths=counts)


def test_dpo_gradients_reach_only_the_policy():
  pc, pr, rc, rr = (jnp.asarray(x) for x in ([-3.0, -1.0], [-2.0, -4.0], [-3.5, -1.0],
                                              [-2.0, -3.0]))
  grads = jax.grad(lambda *a: rl_losses.dpo_loss(*a, beta=0.5)[0], argnums=(0, 1, 2, 3))(
      pc, pr, rc, rr)
  assert np.all(np.asarray(grads[0]) < 0) and np.all(np.asarray(grads[1]) > 0)
  np.testing.assert_array_equal(grads[2], 0.0)
  np.testing.assert_array_equal(grads[3], 0.0)


def _encode_rows(texts, width=24, tail=(2, 0, 0)):
  tokenizer = arithmetic.CharTokenizer()
  rows = np.zeros((len(texts), width), np.int32)
  for i, text in enumerate(texts):
    ids = [*tokenizer.encode(text), *tail][:width]
    rows[i, :len(ids)] = ids
  return rows


def test_the_token_verifier_is_the_text_checker():
  from kd_jax.tasks import arithmetic as arithmetic_task
  texts = ["1+2=3####3", "1+2=3####4", "####12", "#####12", "####012", "####-0", "####-",
           "####", "##12", "####12#", "1####2####3", "12", "", "####-12", "--####3",
           "####1-2", "####9999999", "9=9####99999999", "#######7"]
  answers = [3, 3, 12, 12, 12, 0, 0, 0, 12, 12, 3, 12, 0, -12, 3, 1, 9999999, 99999999, 7]
  rows = _encode_rows(texts)
  expected = [arithmetic.check_answer(t, a) for t, a in zip(texts, answers)]
  got = arithmetic_task.answers_correct(jnp.asarray(rows), jnp.asarray(answers))
  np.testing.assert_array_equal(np.asarray(got), expected)
  # What follows the first EOS is ignored; PAD and BOS inside the text are dropped, as decode does.
  rows = _encode_rows(["####3"], tail=(2, 4, 4))
  assert bool(arithmetic_task.answers_correct(jnp.asarray(rows), jnp.asarray([3]))[0])
  tokenizer = arithmetic.CharTokenizer()
  (hash_,), (three,) = tokenizer.encode("#"), tokenizer.encode("3")
  row = np.array([[hash_, hash_, 0, 1, hash_, 99, hash_, three, 2, three]], np.int32)
  assert tokenizer.decode(row[0]) == "####3"           # PAD, BOS and unknown ids dropped
  assert bool(arithmetic_task.answers_correct(jnp.asarray(row), jnp.asarray([3]))[0])


def _future_means(rewards, mask):
  """R^norm_{t+1} by the definition: the mean of the masked rewards after t (0 if none)."""
  out = np.zeros(rewards.shape)
  for b in range(rewards.shape[0]):
    for t in range(rewards.shape[1]):
      later = [rewards[b, u] for u in range(t + 1, rewards.shape[1]) if mask[b, u]]
      out[b, t] = np.mean(later) if later else 0.0
  return out


def test_normalized_future_rewards_are_the_mean_of_the_later_tokens():
  rewards = np.array([[1.0, -2.0, 4.0, 100.0], [0.5, 3.0, 7.0, 9.0]])
  got = rl_losses.normalized_future_rewards(rewards, MASK)
  np.testing.assert_allclose(got, _future_means(rewards, MASK), rtol=1e-6)
  np.testing.assert_allclose(got[0, :3], [1.0, 4.0, 0.0])   # the padded 100 never counts


def test_mixture_importance_weights_are_q_over_the_mixture():
  log_q = np.log(np.array([[0.2, 0.5], [0.9, 0.01]]))
  log_p = np.log(np.array([[0.6, 0.5], [0.1, 0.3]]))
  expected = np.exp(log_q) / (0.3 * np.exp(log_p) + 0.7 * np.exp(log_q))
  np.testing.assert_allclose(rl_losses.mixture_importance_weights(log_q, log_p, 0.3), expected,
                             rtol=1e-5)
  np.testing.assert_array_equal(rl_losses.mixture_importance_weights(log_q, log_p, 0.0), 1.0)
  assert np.all(expected <= 1 / 0.7)


def _minillm_constants(logits, teacher_logits, tokens, mask, mix):
  """Float64 NumPy: both models' log-probabilities (all tokens; sampled tokens), the importance
  weights and the whitened long-term rewards, from their definitions."""
  log_q_all = scipy.special.log_softmax(logits, -1)
  log_p_all = scipy.special.log_softmax(teacher_logits, -1)
  pick = lambda a: np.take_along_axis(a, tokens[..., None], -1)[..., 0]
  log_q, log_p = pick(log_q_all), pick(log_p_all)
  w = np.exp(log_q) / (mix * np.exp(log_p) + (1 - mix) * np.exp(log_q))
  future = _future_means(log_p - log_q, mask)
  centred = future - future[mask].mean()
  return log_q_all, log_p_all, log_q, w, centred / np.sqrt(centred[mask].var() + 1e-8)


@pytest.mark.parametrize("mix", [0.0, 0.2])
def test_minillm_loss_matches_its_definition_and_its_gradient_is_the_policy_gradient(mix):
  rng = np.random.default_rng(3)
  logits, teacher_logits = rng.normal(size=(2, 2, 4, 6))
  tokens = rng.integers(0, 6, size=(2, 4))
  reference = np.log(rng.uniform(0.05, 1.0, size=(2, 4)))
  log_q_all, log_p_all, log_q, w, advantages = _minillm_constants(logits, teacher_logits, tokens,
                                                                  MASK, mix)

  def loss(z):
    return rl_losses.minillm_loss(
        rl_losses.token_log_probs(z, tokens), rl_losses.token_log_probs(teacher_logits, tokens),
        divergences.reverse_kl(z, teacher_logits), reference, MASK,
        mix=mix, kl_coef=0.05)[0]

  # The value, term by term (the losses compute in float32, the reference in float64).
  single = np.sum(np.exp(log_q_all) * (log_q_all - log_p_all), -1)
  d = reference - log_q
  expected = (np.mean((-w * advantages)[MASK]) + 0.05 * (w * (np.exp(d) - d - 1))[MASK].mean()
              + np.mean((w * single)[MASK]))
  z = jnp.asarray(logits, jnp.float32)
  assert float(loss(z)) == pytest.approx(expected, rel=1e-5)

  # The gradient: rewards, advantages and weights are constants, the rest is differentiated.
  def surrogate(z):
    log_q_z = jax.nn.log_softmax(z, -1)
    picked = jnp.take_along_axis(log_q_z, tokens[..., None], -1)[..., 0]
    single = jnp.sum(jnp.exp(log_q_z) * (log_q_z - log_p_all), -1)
    d = reference - picked
    per_token = -w * advantages * picked + w * (0.05 * (jnp.exp(d) - d - 1) + single)
    return jnp.sum(jnp.where(MASK, per_token, 0.0)) / MASK.sum()

  np.testing.assert_allclose(jax.grad(loss)(z), jax.grad(surrogate)(z), rtol=1e-4, atol=1e-6)


def test_per_token_advantages_equal_per_response_ones_broadcast():
  rng = np.random.default_rng(4)
  log_probs, old, reference = np.log(rng.uniform(0.1, 1.0, size=(3, 2, 4)))
  advantages = np.array([0.5, -1.5])
  per_response = rl_losses.policy_gradient_loss(log_probs, old, reference, advantages, MASK)
  per_token = rl_losses.policy_gradient_loss(log_probs, old, reference,
                                             np.repeat(advantages[:, None], 4, 1), MASK)
  np.testing.assert_allclose(per_response[0], per_token[0], rtol=1e-6)
