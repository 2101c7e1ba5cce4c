"""The language-modelling task on the one engine: loss masks, per-token means, token-level KD,
training, evaluation, resumption and compilation counts."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import methods, models
from kd_jax import divergences
from kd_jax import losses
from kd_jax.core import parallel
from kd_jax import engine
from kd_jax.data import arithmetic as ar
from kd_jax.core.errors import WorkdirConflictError
from kd_jax.tasks import lm
from tests.test_divergences import reference
from tests.test_losses import np_ce, rand

TOKENIZER = ar.CharTokenizer()
DIFFICULTY = ar.Difficulty(steps=2, digits=1)
MAX_LEN = 28


def _mesh():
  return parallel.make_mesh(1, 1, jax.devices()[:1])


def _split(name, size, seed=0):
  problems = ar.generate_split(name, size, seed=seed, difficulty=DIFFICULTY)
  tokens, prompt_lengths, lengths = ar.encode_pairs(problems, TOKENIZER, MAX_LEN)
  return problems, tokens, prompt_lengths, lengths


def _task(problems, prompt_lengths, lengths):
  return lm.LanguageModeling(TOKENIZER, prompt_lengths, np.array([p.answer for p in problems]),
                             ar.check_answer, int((lengths - prompt_lengths).max()) + 2)


def test_response_mask_keeps_the_response_and_eos_even_when_pad_is_eos():
  # Row: BOS a b = | r r EOS | PAD PAD  (prompt 4 tokens, length 7, max_len 9)
  mask = lm.response_mask(np.array([4]), np.array([7]), 9)
  # Target j is token j+1: tokens 4, 5 (response) and 6 (EOS) count; 1-3 (prompt), 7-8 (pad) not.
  assert mask[0].tolist() == [False, False, False, True, True, True, False, False]
  # The mask comes from lengths, so a pad id equal to the EOS id changes nothing.
  tokens = np.array([[1, 5, 6, 7, 8, 9, 2, 2, 2]])
  task = _task([ar.Problem("", "", 0)], np.array([4]), np.array([7]))
  data = lm.token_data(tokens, np.array([4]), np.array([7]), _mesh())
  inputs, targets, loss_mask, _ = task.train_batch(data, jnp.array([0]), jnp.array([True]),
                                                   None)
  assert targets[0, 5] == 2 and bool(loss_mask[0, 5])        # the EOS is a target
  assert not bool(loss_mask[0, 6])                           # the padding after it is not


def _kd_objective(divergence="kl", alpha=0.5, temperature=2.0):
  c = ml_collections.ConfigDict({**config_lib.base_config().to_dict(), "divergence": divergence,
                                 "alpha": alpha, "temperature": temperature})
  objective = methods.make_objective(c)
  return lambda s, t, y, m: objective(jnp.int32(0), (s, {}), (t, {}), y, m)[0]


def test_masked_tokens_change_neither_loss_nor_gradient():
  s, t = rand(1, 2, 5, 7), rand(2, 2, 5, 7)
  labels = np.array([[1, 2, 3, 4, 5], [6, 0, 1, 2, 3]], np.int32)
  mask = np.array([[False, True, True, True, False], [False, False, True, True, True]])
  objective = _kd_objective()
  loss, grad = jax.value_and_grad(objective)(s, t, labels, mask)
  s2, t2, labels2 = s.copy(), t.copy(), labels.copy()
  s2[~mask] = 1e4 * rand(3, int((~mask).sum()), 7)          # huge student logits there
  t2[~mask] = -t2[~mask]
  labels2[~mask] = -100                                      # and padding labels
  loss2, grad2 = jax.value_and_grad(objective)(s2, t2, labels2, mask)
  assert float(loss2) == pytest.approx(float(loss), rel=1e-6)
  np.testing.assert_allclose(grad2, grad, rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(np.asarray(grad)[~mask], 0.0)


def test_the_loss_is_a_mean_over_tokens_not_over_sequences():
  # One sequence with 4 response tokens and one with 1: each token weighs 1/5.
  s, t = rand(4, 2, 4, 6), rand(5, 2, 4, 6)
  labels = np.array([[0, 1, 2, 3], [4, 5, 0, 0]], np.int32)
  mask = np.array([[True, True, True, True], [False, True, False, False]])
  ce = np_ce(s, labels)
  kl = reference("kl", s, t, temperature=2.0)
  per_token = 0.5 * ce + 0.5 * 4.0 * kl
  got = float(_kd_objective()(s, t, labels, mask))
  assert got == pytest.approx(per_token[mask].mean(), rel=1e-5)
  per_sequence = np.mean([per_token[0].mean(), per_token[1, 1]])
  assert abs(got - per_sequence) > 1e-3                     # the two conventions differ here


@pytest.mark.parametrize("name", divergences.NAMES)
def test_token_level_kd_with_every_divergence(name):
  s, t = rand(6, 2, 3, 8), rand(7, 2, 3, 8)
  labels = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
  mask = np.array([[True, True, False], [True, False, True]])
  scale = 4.0 if name in divergences.PROBABILITY_DIVERGENCES else 1.0
  expected = (0.25 * np_ce(s, labels) + 0.75 * scale * reference(name, s, t, temperature=2.0))
  got = float(_kd_objective(name, alpha=0.25)(s, t, labels, mask))
  assert got == pytest.approx(expected[mask].mean(), rel=1e-5, abs=1e-7)
  direct = losses.kd_loss(s, t, labels, divergence=name, temperature=2.0, alpha=0.25, mask=mask)
  assert got == pytest.approx(float(direct), rel=1e-5, abs=1e-7)


def _gpt(seed=0, **kw):
  options = dict(vocab_size=TOKENIZER.vocab_size, max_len=MAX_LEN + 32, num_layers=2,
                 num_heads=4, dim=48)
  return models.create("gpt", rngs=nnx.Rngs(seed), **{**options, **kw})


def _fit(tmp_path, *, epochs=2.0, stop_at_step=None, teacher=None, method="none", train_size=512,
         mesh=None, on_policy=0.0, identity=None):
  mesh = mesh or _mesh()
  problems, tokens, prompt_lengths, lengths = _split("train", train_size)
  test_problems, test_tokens, test_prompt_lengths, test_lengths = _split("test", 64)
  train_data = lm.token_data(tokens, prompt_lengths, lengths, mesh)
  test_data = lm.token_data(test_tokens, test_prompt_lengths, test_lengths, mesh)
  task = dataclasses.replace(_task(test_problems, test_prompt_lengths, test_lengths),
                             on_policy=on_policy)
  c = config_lib.base_config()
  c.method = method
  c.gkd = config_lib.gkd_config(fraction=on_policy, beta=0.3)
  c.train.batch_size, c.train.epochs, c.train.learning_rate = 32, epochs, 3e-3
  c.train.eval_batch_size = 32
  module = methods.Student(_gpt(), {}, {}, rngs=nnx.Rngs(1))
  return engine.fit(name="lm", module=module, objective=methods.make_objective(c),
                   train_config=c.train, train_data=train_data, test_data=test_data, task=task,
                   mesh=mesh, workdir=str(tmp_path), seed=0, teacher=teacher,
                   show_progress=False, log_every_steps=1, stop_at_step=stop_at_step,
                   identity=identity)


def test_an_lm_trains_on_the_engine_and_is_evaluated(tmp_path):
  fit = _fit(tmp_path, epochs=3.0)
  assert fit.step_compiles == 1                             # one compile, ragged batches included
  records = [r for r in map(__import__("json").loads, open(tmp_path / "metrics.jsonl"))
             if "loss" in r]
  assert np.mean([r["loss"] for r in records[-5:]]) < 0.6 * np.mean(
      [r["loss"] for r in records[:5]])
  assert set(fit.final) == {"exact_match", "nll", "token_accuracy"}
  assert 0.0 <= fit.final["exact_match"] <= 1.0
  assert fit.final["token_accuracy"] > 0.4 and fit.final["nll"] < 2.0
  assert [h["step"] for h in fit.history] == [16, 32, 48]


def test_token_level_kd_from_a_live_teacher_and_its_evaluation(tmp_path):
  teacher_fit = _fit(tmp_path / "teacher", epochs=2.0)
  graphdef, params, model_state = engine.split_module(teacher_fit.module)
  teacher = engine.Teacher(graphdef, (params, model_state))
  student = _fit(tmp_path / "student", epochs=1.0, teacher=teacher, method="kd")
  records = [r for r in map(__import__("json").loads, open(tmp_path / "student" / "metrics.jsonl"))
             if "loss" in r]
  assert all(r["distill"] > 0 and np.isfinite(r["loss"]) for r in records)
  # The evaluation against a reference model reports per-token KL and agreement.
  problems, tokens, prompt_lengths, lengths = _split("test", 64)
  data = lm.token_data(tokens, prompt_lengths, lengths, _mesh())
  s_graphdef, s_params, s_state = engine.split_module(student.module)
  evaluate = _task(problems, prompt_lengths, lengths).evaluator(
      s_graphdef, data, 32, _mesh(), reference=(graphdef, (params, model_state)))
  metrics, _ = evaluate((s_params, s_state))
  assert metrics["kl_to_teacher"] > 0 and 0 <= metrics["agreement"] <= 1
  itself = _task(problems, prompt_lengths, lengths).evaluator(
      graphdef, data, 32, _mesh(), reference=(graphdef, (params, model_state)))
  same, _ = itself((params, model_state))
  assert same["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6) and same["agreement"] == 1.0
  assert same["exact_match"] == teacher_fit.final["exact_match"]


def test_an_lm_run_resumes_bit_identically(tmp_path):
  straight = _fit(tmp_path / "straight")
  with pytest.raises(KeyboardInterrupt):
    _fit(tmp_path / "resumed", stop_at_step=21)      # checkpoint after epoch 1 (step 16)
  resumed = _fit(tmp_path / "resumed")
  assert resumed.resumed_from_step == 16
  for tree_a, tree_b in ((nnx.state(straight.module), nnx.state(resumed.module)),):
    jax.tree.map(np.testing.assert_array_equal, tree_a, tree_b)
  assert resumed.final == straight.final


def test_the_gold_continuation_passes_the_checker_and_a_cut_one_does_not():
  problems, tokens, prompt_lengths, lengths = _split("test", 8)
  task = _task(problems, prompt_lengths, lengths)
  for i, p in enumerate(problems):
    continuation = tokens[i, prompt_lengths[i]:lengths[i]]      # response + EOS
    assert task.check(TOKENIZER.decode(continuation), p.answer)
    assert not task.check(TOKENIZER.decode(continuation[:-3]), p.answer)


_LOSSES_SCRIPT = """
import json, sys, tempfile
import jax, numpy as np
sys.path.insert(0, '.')
from tests import test_lm

from kd_jax.core import parallel
mesh = parallel.make_mesh(jax.device_count(), 1)
with tempfile.TemporaryDirectory() as tmp:
  test_lm._fit(tmp, epochs=0.5, mesh=mesh)
  print(json.dumps([r['loss'] for r in map(json.loads, open(tmp + '/metrics.jsonl'))
                    if 'loss' in r]))
"""


def test_one_and_four_devices_give_the_same_lm_losses(tmp_path):
  from tests import multidevice
  one = multidevice.finish(multidevice.start(_LOSSES_SCRIPT, 1)).strip().splitlines()[-1]
  four = multidevice.finish(multidevice.start(_LOSSES_SCRIPT, 4)).strip().splitlines()[-1]
  one, four = np.array(__import__("json").loads(one)), np.array(__import__("json").loads(four))
  assert len(one) == 8
  np.testing.assert_allclose(four, one, rtol=2e-5)


# --------------------------------------------------------------------------- GKD


def _teacher(tmp_path):
  fit = _fit(tmp_path / "teacher", epochs=1.0)
  graphdef, params, model_state = engine.split_module(fit.module)
  return engine.Teacher(graphdef, (params, model_state))


def test_gkd_with_lambda_0_is_the_kd_step_with_jsd(tmp_path):
  teacher = _teacher(tmp_path)
  mesh = _mesh()
  problems, tokens, prompt_lengths, lengths = _split("train", 64)
  data = lm.token_data(tokens, prompt_lengths, lengths, mesh)
  c = config_lib.base_config()
  gkd = ml_collections.ConfigDict({**c.to_dict(), "method": "gkd",
                                   "gkd": config_lib.gkd_config(fraction=0.0, beta=0.3)})
  kd = ml_collections.ConfigDict({**c.to_dict(), "method": "kd", "divergence": "js",
                                  "divergence_params": {"beta": 0.3}, "alpha": 0.0})
  student = methods.Student(_gpt(), {}, {}, rngs=nnx.Rngs(1))
  optimizer = engine.make_optimizer(c.train, 100)
  batch = {"index": jnp.arange(32, dtype=jnp.int32), "mask": jnp.ones(32, bool)}
  outs = []
  for config, on_policy in ((gkd, 0.0), (kd, 0.0)):
    task = dataclasses.replace(_task(problems, prompt_lengths, lengths), on_policy=on_policy)
    graphdef, params, model_state = engine.split_module(student)
    state = engine.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             model_state=model_state, opt_state=optimizer.init(params))
    step = engine.make_train_step(graphdef, methods.make_objective(config), optimizer, task,
                                 teacher, data, mesh)
    outs.append(step(parallel.put_replicated(state, mesh), batch, jax.random.key(0)))
  (gkd_state, gkd_metrics), (kd_state, kd_metrics) = outs
  assert float(gkd_metrics["loss"]) == pytest.approx(float(kd_metrics["loss"]), rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
               gkd_state.params, kd_state.params)


def test_gkd_with_lambda_1_samples_every_batch_and_compiles_once(tmp_path):
  teacher = _teacher(tmp_path)
  fit = _fit(tmp_path / "gkd", epochs=1.0, teacher=teacher, method="gkd", on_policy=1.0)
  records = [r for r in map(__import__("json").loads, open(tmp_path / "gkd" / "metrics.jsonl"))
             if "loss" in r]
  assert len(records) == 16 and all(r["on_policy"] == 1.0 for r in records)
  assert all(np.isfinite(r["loss"]) and r["distill"] > 0 for r in records)
  assert fit.step_compiles == 1


def test_gkd_mixes_batches_and_resumes_bit_identically(tmp_path):
  teacher = _teacher(tmp_path)
  run = lambda name, **kw: _fit(tmp_path / name, epochs=2.0, teacher=teacher, method="gkd",
                                on_policy=0.5, **kw)
  straight = run("straight")
  flags = [r["on_policy"] for r in map(__import__("json").loads,
                                       open(tmp_path / "straight" / "metrics.jsonl"))
           if "loss" in r]
  assert 0 < sum(flags) < len(flags)                     # both kinds of batches occur
  with pytest.raises(KeyboardInterrupt):
    run("resumed", stop_at_step=21)
  resumed = run("resumed")
  jax.tree.map(np.testing.assert_array_equal, nnx.state(straight.module),
               nnx.state(resumed.module))
  assert ([r for r in map(__import__("json").loads, open(tmp_path / "resumed" / "metrics.jsonl"))]
          == [r for r in map(__import__("json").loads,
                             open(tmp_path / "straight" / "metrics.jsonl"))])


def test_a_student_starts_from_a_finished_fit_of_its_identity(tmp_path):
  """student_init='baseline': the weights are the finished baseline's, exactly."""
  fit = _fit(tmp_path, epochs=1.0, identity={"phase": "baseline", "seed": 0})
  fresh = methods.Student(_gpt(), {}, {}, rngs=nnx.Rngs(1))
  assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, nnx.state(fresh, nnx.Param),
                                              nnx.state(fit.module, nnx.Param))))
  c = config_lib.base_config()
  step = engine.load_trained(fresh, c.train, str(tmp_path), {"phase": "baseline", "seed": 0})
  assert step == fit.steps
  same = jax.tree.map(np.array_equal, nnx.state(fresh), nnx.state(fit.module))
  assert all(jax.tree.leaves(same))
  with pytest.raises(WorkdirConflictError, match="seed"):
    engine.load_trained(fresh, c.train, str(tmp_path), {"phase": "baseline", "seed": 1})
