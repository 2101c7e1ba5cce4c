"""Preference pairs for DPO (kd_jax/methods/preference.py) and the dpo config's errors."""

import numpy as np
import pytest

from kd_jax.methods import preference as preferences
from tests.test_experiments import assert_refused_field, cli_load


def test_ranked_pairs_take_the_best_and_worst_sample_and_drop_ties():
  tokens = np.arange(3 * 4 * 2).reshape(3, 4, 2)         # [k=3, N=4, T=2]: every sample distinct
  lengths = np.full((3, 4), 2)
  rewards = np.array([[1.0, 0.5, 0.0, 0.2],
                      [0.0, 0.5, 1.0, 0.9],
                      [0.5, 0.5, 0.3, 0.9]])               # prompt 1 ties throughout
  pairs = preferences.ranked_pairs(tokens, lengths, rewards)
  np.testing.assert_array_equal(pairs.prompt_index, [0, 2, 3])
  np.testing.assert_array_equal(pairs.chosen, [tokens[0, 0], tokens[1, 2], tokens[1, 3]])
  np.testing.assert_array_equal(pairs.rejected, [tokens[1, 0], tokens[0, 2], tokens[0, 3]])
  assert pairs.stats["pairs"] == 3 and pairs.stats["prompts"] == 4
  assert pairs.stats["mean_reward_chosen"] == pytest.approx((1.0 + 1.0 + 0.9) / 3)


def test_a_ranked_pair_chooses_only_a_verified_correct_answer():
  tokens = np.arange(3 * 3 * 2).reshape(3, 3, 2)         # [k=3, N=3, T=2]
  lengths = np.full((3, 3), 2)
  # Rewards where a wrong answer outranks the right one (a large teacher term), prompt 2
  # has no correct sample at all.
  rewards = np.array([[1.0, 0.9, 0.8],
                      [1.5, 0.1, 0.2],
                      [0.0, 0.5, 0.0]])
  correct = np.array([[True, True, False],
                      [False, False, False],
                      [False, True, False]])
  pairs = preferences.ranked_pairs(tokens, lengths, rewards, correct=correct)
  np.testing.assert_array_equal(pairs.prompt_index, [0, 1])
  np.testing.assert_array_equal(pairs.chosen, [tokens[0, 0], tokens[0, 1]])   # not [1, 0]
  np.testing.assert_array_equal(pairs.rejected, [tokens[2, 0], tokens[1, 1]])
  assert pairs.stats["prompts_without_a_correct_sample"] == 1
  # Without verdicts the highest reward wins, right or wrong.
  np.testing.assert_array_equal(preferences.ranked_pairs(tokens, lengths, rewards).chosen[0],
                                tokens[1, 0])


def test_teacher_pairs_choose_the_teachers_first_verified_answer():
  teacher_index = np.array([0, 0, 2])
  teacher = np.array([[7, 7, 0], [8, 8, 0], [9, 9, 9]])
  student = np.arange(2 * 3 * 2).reshape(2, 3, 2)
  pairs = preferences.teacher_pairs(teacher_index, teacher, np.array([2, 2, 3]), student,
                                    np.full((2, 3), 2))
  np.testing.assert_array_equal(pairs.prompt_index, [0, 2])
  np.testing.assert_array_equal(pairs.chosen, [[7, 7, 0], [9, 9, 9]])
  np.testing.assert_array_equal(pairs.rejected, [[0, 1, 0], [4, 5, 0]])     # padded to 3
  np.testing.assert_array_equal(pairs.chosen_lengths, [2, 3])


@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c, "student_init", "scratch"), "student_init"),
    (lambda c: setattr(c.dpo, "pairs", "random"), "dpo.pairs"),
    (lambda c: setattr(c.dpo, "beta", 0.0), "dpo.beta"),
    (lambda c: setattr(c.dpo, "k", 1), "dpo.k"),
    (lambda c: setattr(c.dpo, "nll_weight", -0.5), "dpo.nll_weight"),
])
def test_dpo_configs_name_the_bad_field(edit, field):
  assert_refused_field(cli_load("experiments/arithmetic/dpo.py:smoke"), edit, field)


def test_only_the_dpo_phase_takes_the_dpo_learning_rate():
  from kd_jax import methods
  c = cli_load("experiments/arithmetic/dpo.py")
  student = methods.student_train_config(c)
  assert student.learning_rate == c.dpo.learning_rate == 1e-4
  assert c.train.learning_rate == 3e-3                 # the SFT start's, unchanged
  assert student.steps == c.train.steps and student.lr_schedule == c.train.lr_schedule
  c.method = "gkd"
  assert methods.student_train_config(c) is c.train


def test_identical_chosen_and_rejected_answers_make_no_pair():
  tokens = np.array([[[5, 6, 2]], [[5, 6, 2]], [[5, 7, 2]]])      # [k=3, N=1, T=3]
  lengths = np.full((3, 1), 3)
  same = preferences.ranked_pairs(tokens[:2], lengths[:2], np.array([[1.0], [0.0]]))
  assert same.stats["pairs"] == 0                          # rewards differ, tokens do not
  differ = preferences.ranked_pairs(tokens[1:], lengths[1:], np.array([[1.0], [0.0]]))
  assert differ.stats["pairs"] == 1
  teacher = preferences.teacher_pairs(np.array([0]), np.array([[5, 6, 2]]), np.array([3]),
                                      tokens[:1], lengths[:1])
  assert teacher.stats["pairs"] == 0


def test_the_dpo_objective_reads_chosen_then_rejected_rows():
  import jax.numpy as jnp
  import scipy.special
  from kd_jax import methods
  c = cli_load("experiments/arithmetic/dpo.py:smoke")
  c.dpo.beta = 0.5
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3, 5))                  # 2 pairs: rows 0, 1 chosen; 2, 3 rejected
  targets = rng.integers(0, 5, (4, 3))
  mask = np.array([[1, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]], bool)   # pair 1 is padding
  reference = np.array([-2.0, -1.0, -4.0, -3.0])
  loss, metrics = methods.make_objective(c)(0, (jnp.asarray(logits), {}), None,
                                            (jnp.asarray(targets), jnp.asarray(reference)), mask)
  token_logps = np.take_along_axis(scipy.special.log_softmax(logits, -1), targets[..., None],
                                   -1)[..., 0]
  sequence = np.where(mask, token_logps, 0).sum(-1)
  margin = 0.5 * ((sequence[0] - reference[0]) - (sequence[2] - reference[2]))
  np.testing.assert_allclose(loss, np.log1p(np.exp(-margin)), rtol=1e-5)
  np.testing.assert_allclose(metrics["reward_margin"], margin, rtol=1e-5)
