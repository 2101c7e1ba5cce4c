"""Top-k teacher logits (kd_jax/objectives/topk.py) against float64 references and the full-logit loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from kd_jax.run import validation
from kd_jax import divergences
from kd_jax import losses
from kd_jax.objectives import topk
from tests.test_losses import rand

B, T, V = 3, 5, 11
STUDENT = rand(0, B, T, V, scale=2.0)
TEACHER = rand(1, B, T, V, scale=2.0)
MASK = np.arange(B * T).reshape(B, T) % 4 != 0


def _np_kl(p_log, q_log):
  return np.sum(np.exp(p_log) * (p_log - q_log), axis=-1)


def test_from_logits_keeps_the_largest_raw_logits_and_the_full_logsumexp():
  cached = topk.from_logits(jnp.asarray(TEACHER), 4)
  order = np.argsort(-TEACHER, axis=-1)[..., :4]
  np.testing.assert_array_equal(cached.ids, order)
  np.testing.assert_allclose(cached.logits, np.take_along_axis(TEACHER, order, -1))
  np.testing.assert_allclose(cached.lse, scipy.special.logsumexp(TEACHER, axis=-1), rtol=1e-6)
  assert cached.k == 4 and cached.bytes_per_position() == 4 * 4 + 4 * 4 + 4


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_renormalize_is_the_divergence_on_the_teachers_ids(temperature):
  k = 4
  cached = topk.from_logits(jnp.asarray(TEACHER), k)
  ids = np.argsort(-TEACHER, axis=-1)[..., :k]
  s = np.take_along_axis(STUDENT.astype(np.float64), ids, -1) / temperature
  t = np.take_along_axis(TEACHER.astype(np.float64), ids, -1) / temperature
  per = _np_kl(scipy.special.log_softmax(t, -1), scipy.special.log_softmax(s, -1))
  want = temperature ** 2 * per[MASK].mean()
  got = topk.topk_kd_loss(jnp.asarray(STUDENT), cached, mode="renormalize",
                          temperature=temperature, mask=MASK)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_tail_at_t1_is_the_kl_between_the_k_plus_1_buckets():
  k = 3
  cached = topk.from_logits(jnp.asarray(TEACHER), k)
  ids = np.argsort(-TEACHER, axis=-1)[..., :k]
  p = scipy.special.softmax(TEACHER.astype(np.float64), -1)
  q = scipy.special.softmax(STUDENT.astype(np.float64), -1)
  buckets = lambda x: np.concatenate(
      [np.take_along_axis(x, ids, -1), 1 - np.take_along_axis(x, ids, -1).sum(-1, keepdims=True)],
      -1)
  per = _np_kl(np.log(buckets(p)), np.log(buckets(q)))
  got = topk.topk_kd_loss(jnp.asarray(STUDENT), cached, mode="tail", mask=MASK)
  np.testing.assert_allclose(got, per[MASK].mean(), rtol=1e-5)


@pytest.mark.parametrize("divergence", sorted(divergences.PROBABILITY_DIVERGENCES))
@pytest.mark.parametrize("mode", topk.MODES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_with_k_equal_to_v_both_modes_are_the_full_logit_loss(divergence, mode, temperature):
  cached = topk.from_logits(jnp.asarray(TEACHER), V)
  params = {"beta": 0.3} if divergence == "js" else {}

  def full(s):
    return losses.kd_loss(s, jnp.asarray(TEACHER), None, divergence=divergence,
                          temperature=temperature, alpha=0.0, mask=MASK, divergence_params=params)

  def cached_loss(s):
    return topk.topk_kd_loss(s, cached, mode=mode, divergence=divergence,
                             temperature=temperature, mask=MASK, divergence_params=params)

  (value, grad), (want, want_grad) = (jax.value_and_grad(f)(jnp.asarray(STUDENT))
                                      for f in (cached_loss, full))
  np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(grad, want_grad, rtol=2e-4, atol=1e-6)


def test_only_the_tail_mode_sees_the_students_mass_outside_the_ids():
  cached = topk.from_logits(jnp.asarray(TEACHER), 3)
  outside = np.ones((B, T, V), bool)
  np.put_along_axis(outside, np.asarray(cached.ids), False, -1)
  moved = STUDENT + 5.0 * outside                     # more student mass off the teacher's ids
  for mode, changes in (("renormalize", False), ("tail", True)):
    before, after = (float(topk.topk_kd_loss(jnp.asarray(s), cached, mode=mode))
                     for s in (STUDENT, moved))
    assert (abs(after - before) > 1e-3) == changes, mode
    if changes:
      assert after > before


def test_errors_name_the_valid_choices():
  cached = topk.from_logits(jnp.asarray(TEACHER), 3)
  with pytest.raises(ValueError, match="renormalize, tail"):
    topk.topk_kd_loss(jnp.asarray(STUDENT), cached, mode="drop")
  with pytest.raises(ValueError, match="probability divergence; got 'cosine'"):
    topk.topk_kd_loss(jnp.asarray(STUDENT), cached, mode="tail", divergence="cosine")


# ------------------------------------------------------------------ the cache in the engine

def _arithmetic_config(**topk_block):
  import os
  from kd_jax.config import cli
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  c = cli.load_config_file(os.path.join(root, "experiments", "arithmetic", "token_kd.py:smoke"))
  c.baseline = False
  c.teacher_cache = "memory"
  c.topk.update(topk_block)
  return c


def _losses(workdir):
  import json
  with open(workdir / "student" / "metrics.jsonl") as f:
    return [r["loss"] for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_a_full_vocabulary_top_k_trains_exactly_like_the_full_logits(tmp_path):
  """k = V: the cached top-k run takes the same steps as the cached-full-logits run."""
  from kd_jax.run.pipeline import run_experiment
  teachers = str(tmp_path / "cache" / "teachers")
  run = lambda name, c: run_experiment(c, str(tmp_path / name), teacher_dir=teachers,
                                       show_progress=False)
  full = run("full", _arithmetic_config(k=0))
  cached = run("topk", _arithmetic_config(k=19, mode="tail"))    # the task's 19 tokens
  np.testing.assert_allclose(_losses(tmp_path / "topk"), _losses(tmp_path / "full"), rtol=2e-5)
  report = cached["topk"]
  assert report["k"] == 19 and report["bytes_per_token"] == 19 * 8 + 4
  assert report["distill_topk"] == pytest.approx(report["distill_full_logits"], rel=1e-4)
  assert full["student"]["exact_match"] == pytest.approx(cached["student"]["exact_match"], abs=0.02)
  # The cache is shared: another seed reads it back; another k writes another file.
  shared = tmp_path / "cache" / "teacher_outputs"
  (written,) = list(shared.iterdir())
  stamp = written.stat().st_mtime_ns
  c = _arithmetic_config(k=19, mode="renormalize")
  c.seed = 1
  run("seed1", c)
  assert list(shared.iterdir()) == [written] and written.stat().st_mtime_ns == stamp
  run("k4", _arithmetic_config(k=4))
  assert len(list(shared.iterdir())) == 2


@pytest.mark.parametrize("overrides, message", [
    (dict(method="none"), "topk.k=4 caches a language-model teacher's top-k logits: it needs method='kd'"),
    (dict(divergence="cosine"), "topk.k=4 needs a probability divergence, got 'cosine'"),
    (dict(teacher_cache="none"), "teacher_cache='none' contradicts it"),
    (dict(mode="all"), "topk.mode: unknown value 'all'; valid choices: renormalize, tail"),
])
def test_top_k_settings_are_checked_before_anything_runs(overrides, message):
  c = _arithmetic_config(k=4)
  if "mode" in overrides:
    c.topk.mode = overrides.pop("mode")
  for key, value in overrides.items():
    c[key] = value
  with pytest.raises(ValueError, match=message):
    validation.validate(c)
