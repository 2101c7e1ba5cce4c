"""kd_jax.methods.make_objective: each config field reaches the loss, each method computes its
own term. Expected values are the float64 references of test_losses / test_divergences."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax import config as config_lib
from kd_jax import methods
from kd_jax import divergences
from tests.test_divergences import CASES, CASE_IDS, reference
from tests.test_losses import (np_attention, np_ce, np_pkt, np_rkd, np_sp, np_tckd_nckd,
                               rand)

S_LOGITS, T_LOGITS = rand(20, 6, 5, scale=2.0), rand(21, 6, 5, scale=2.0)
LABELS = np.array([0, 1, 2, 3, 4, 0], np.int32)
MASK = np.array([True, True, False, True, True, True])


def _config(**overrides):
  return ml_collections.ConfigDict({**config_lib.base_config().to_dict(), **overrides})


def _run(config, step, student_features=None, teacher_features=None, pairs=None):
  objective = methods.make_objective(config, pairs)
  loss, metrics = objective(jnp.int32(step), (S_LOGITS, student_features or {}),
                            (T_LOGITS, teacher_features or {}), LABELS, MASK)
  return float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("name, params", CASES, ids=CASE_IDS)
def test_divergence_params_and_temperature_schedule_reach_the_kd_term(name, params):
  config = _config(method="kd", divergence=name, divergence_params=params, alpha=0.3,
                   temperature={"schedule": "linear", "init": 1.0, "end": 5.0, "steps": 4})
  loss, metrics = _run(config, step=2)                         # T = 1 + (5 − 1)·2/4 = 3
  assert metrics["temperature"] == pytest.approx(3.0)
  scale = 9.0 if name in divergences.PROBABILITY_DIVERGENCES else 1.0
  expected_distill = np.mean(scale * reference(name, S_LOGITS, T_LOGITS, temperature=3.0,
                                               **params)[MASK])
  expected_ce = np.mean(np_ce(S_LOGITS, LABELS)[MASK])
  assert metrics["distill"] == pytest.approx(expected_distill, rel=1e-5, abs=1e-7)
  assert metrics["ce"] == pytest.approx(expected_ce, rel=1e-5)
  assert loss == pytest.approx(0.3 * expected_ce + 0.7 * expected_distill, rel=1e-5)


def test_alpha_schedule_and_its_static_ends():
  warm = _config(alpha={"schedule": "linear", "init": 1.0, "end": 0.0, "steps": 10})
  _, metrics = _run(warm, step=4)
  assert metrics["alpha"] == pytest.approx(0.6)
  assert "ce" in metrics and "distill" in metrics
  assert "distill" not in _run(_config(alpha=1.0), 0)[1]          # no 0 · D computed
  assert "ce" not in _run(_config(alpha=0.0), 0)[1]


def test_dkd_weights_and_warmup_reach_the_loss():
  config = _config(method="dkd", temperature=2.0,
                   dkd={"alpha": 2.0, "beta": 5.0, "warmup_steps": 4})
  loss, metrics = _run(config, step=1)
  tckd, nckd = np_tckd_nckd(S_LOGITS, T_LOGITS, LABELS, 2.0)
  expected_dkd = np.mean((4.0 * (2.0 * tckd + 5.0 * nckd))[MASK])
  expected_ce = np.mean(np_ce(S_LOGITS, LABELS)[MASK])
  assert metrics["dkd"] == pytest.approx(expected_dkd, rel=1e-5)
  assert loss == pytest.approx(expected_ce + 0.25 * expected_dkd, rel=1e-5)  # ramp 1/4


# (method, student feature, teacher feature, float64 reference on the unmasked rows)
FEATURE_CASES = {
    "fitnets": (rand(30, 6, 8), rand(31, 6, 8), lambda s, t: np.mean((s - t) ** 2)),
    "at": (rand(32, 6, 4, 4, 3), rand(33, 6, 4, 4, 7), lambda s, t: np_attention(s, t, 2)),
    "rkd": (rand(34, 6, 8), rand(35, 6, 5), lambda s, t: np_rkd(s, t, 25.0, 50.0)),
    "sp": (rand(36, 6, 8), rand(37, 6, 5), np_sp),
    "pkt": (rand(38, 6, 8), rand(39, 6, 5), np_pkt),
}


@pytest.mark.parametrize("method", FEATURE_CASES)
def test_each_feature_method_computes_its_own_term(method):
  student, teacher, ref = FEATURE_CASES[method]
  config = _config(method=method, alpha=1.0, feature_weight=3.0)
  loss, metrics = _run(config, 0, {"s": student}, {"t": teacher}, pairs={"s": "t"})
  expected = ref(np.asarray(student, np.float64)[MASK], np.asarray(teacher, np.float64)[MASK])
  assert metrics["feature_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
  expected_ce = np.mean(np_ce(S_LOGITS, LABELS)[MASK])
  assert loss == pytest.approx(expected_ce + 3.0 * expected, rel=1e-4)


def test_a_new_method_is_one_registry_entry_validated_and_trained_by_the_plugins(monkeypatch):
  """docs/architecture.md's worked example: a method defined outside kd_jax, registered by
  one line, is validated (its own check and the task families it accepts) and builds its
  objective without any change to config, engine or run."""
  from kd_jax.config import checks
  from kd_jax.core.errors import ConfigError
  from kd_jax.methods.base import Method, require_block
  from kd_jax.objectives import losses
  from kd_jax.run import validation

  def term(settings, step, s_logits, t_logits, labels, mask):
    distill = losses.kd_loss(s_logits, t_logits, None, divergence="reverse_kl",
                             temperature=settings.temperature(step), alpha=0.0, mask=mask)
    ce = losses.cross_entropy(s_logits, labels, mask)
    return ce + distill, {"ce": ce, "distill": distill}

  def check(config):
    checks.positive("reverse.weight", require_block(config, "reverse", "reverse_config").weight)

  monkeypatch.setitem(methods.REGISTRY, "reverse",
                      Method(term, ("classification", "arithmetic", "text"), check=check))
  config = _config(method="reverse", temperature={"schedule": "constant", "init": 2.0})
  with pytest.raises(ConfigError, match="needs a reverse block") as e:
    validation.validate(config)
  assert e.value.field == "reverse"
  config.reverse = ml_collections.ConfigDict({"weight": 0.0})
  with pytest.raises(ConfigError, match="reverse.weight must be a positive number"):
    validation.validate(config)
  config.reverse.weight = 1.0
  validation.validate(config)
  assert "reverse" in methods.accepting("classification")
  assert "reverse" not in methods.accepting("embedding")
  loss, metrics = _run(config, 0)
  want_ce = np.sum(np_ce(S_LOGITS, LABELS) * MASK) / MASK.sum()
  # T² · the masked mean of KL(student ‖ teacher) at T = 2 (kd_loss's scaling).
  want_distill = 4.0 * np.sum(reference("reverse_kl", S_LOGITS, T_LOGITS, temperature=2.0)
                              * MASK) / MASK.sum()
  np.testing.assert_allclose([metrics["ce"], metrics["distill"]], [want_ce, want_distill],
                             rtol=1e-5)
  np.testing.assert_allclose(loss, want_ce + want_distill, rtol=1e-5)


def test_a_continued_sft_phase_takes_its_blocks_learning_rate_and_steps():
  # The same-learning-rate control of a warm-started method (experiments/arithmetic/rank_table.py).
  from kd_jax import config as config_lib
  from kd_jax.methods import student_train_config
  from tests.test_experiments import assert_refused_field, cli_load
  c = cli_load("experiments/arithmetic/rank_table.py:smoke")
  c.method, c.student_init, c.baseline = "none", "baseline", True
  assert student_train_config(c).learning_rate == c.train.learning_rate      # block at defaults
  c.sft = config_lib.sft_config(learning_rate=1e-4, steps=3)
  phase = student_train_config(c)
  assert (phase.learning_rate, phase.steps) == (1e-4, 3)
  assert (c.train.learning_rate, c.train.steps) != (1e-4, 3)     # the baseline keeps train's
  assert_refused_field(c, lambda c: setattr(c, "student_init", "scratch"), "sft")


@pytest.mark.parametrize("start", ["baseline", "seqkd"])
def test_a_warm_started_gkd_phase_takes_its_blocks_learning_rate_and_steps(start):
  # seqkd+kd (experiments/reasoning/r1_table.py): on-policy KD at 1e-4 from the seqkd student.
  from kd_jax import config as config_lib
  from kd_jax.methods import student_train_config
  from kd_jax.run import validation
  from tests.test_experiments import assert_refused_field, cli_load
  c = cli_load("experiments/reasoning/r1_table.py:smoke")
  c.method, c.student_init, c.baseline = "gkd", start, True
  c.gkd = config_lib.gkd_config(fraction=1.0, beta=1.0)
  assert student_train_config(c).learning_rate == c.train.learning_rate      # block at defaults
  c.gkd = config_lib.gkd_config(fraction=1.0, beta=1.0, learning_rate=1e-4, steps=5)
  validation.validate(c)
  phase = student_train_config(c)
  assert (phase.learning_rate, phase.steps) == (1e-4, 5) != (c.train.learning_rate, c.train.steps)
  copy = lambda: ml_collections.ConfigDict(c.to_dict())
  assert_refused_field(copy(), lambda c: setattr(c, "student_init", "scratch"), "gkd")
  assert_refused_field(copy(), lambda c: setattr(c.gkd, "steps", -1), "gkd.steps")


def test_a_seqkd_start_needs_a_transfer_block_and_the_baseline():
  from kd_jax.run import validation
  from tests.test_experiments import assert_refused_field, cli_load
  c = cli_load("experiments/reasoning/r1_table.py:smoke")
  c.method, c.student_init, c.baseline = "none", "seqkd", True
  copy = lambda: ml_collections.ConfigDict(c.to_dict())
  assert_refused_field(copy(), lambda c: setattr(c, "baseline", False), "student_init")
  assert_refused_field(copy(), lambda c: delattr(c, "transfer"), "transfer")
