"""Policy-gradient students on the one engine (kd_jax/methods/policy_gradient.py, methods grpo and minillm):
sampling inside the step, a step with all-equal rewards, teacher-mixed sampling, resumption."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import methods
from kd_jax.llm import generate
from kd_jax.objectives import rl_losses
from kd_jax.methods import policy_gradient as rollouts
from kd_jax.engine import step
from kd_jax import engine
from kd_jax.data import arithmetic as ar
from kd_jax.tasks import arithmetic, lm
from tests.test_experiments import assert_refused_field, cli_load
from tests.test_lm import TOKENIZER, _gpt, _mesh, _split, _task

K = 2   # samples per prompt


def _always_right(tokens, answers):
  del answers
  return jnp.ones(tokens.shape[0], bool)


def _setup(method="grpo", verify=_always_right, teacher_mix=0.0, **rl):
  """(config, task, data, student module, teacher) on 16 training problems."""
  problems, tokens, prompt_lengths, lengths = _split("train", 16)
  data_mesh = _mesh()
  prompts = lm.token_data(tokens, prompt_lengths, lengths, data_mesh)
  task = _task(problems, prompt_lengths, lengths).trained_as(
      rollouts.Rollouts, samples_per_prompt=K, teacher_mix=teacher_mix, verify=verify)
  reference = _gpt(seed=5)                   # a reference that differs from the policy
  data = rollouts.rollout_data(prompts, np.array([p.answer for p in problems]), reference,
                               data_mesh)
  c = config_lib.base_config()
  c.method = method
  c.rl = config_lib.rl_config(k=K, teacher_mix=teacher_mix, **rl)
  c.train.batch_size, c.train.epochs, c.train.learning_rate = 4 * K, 2.0, 1e-3
  c.train.eval_batch_size = 16
  module = methods.Student(_gpt(), {}, {}, rngs=nnx.Rngs(1))
  t_graphdef, t_params, t_state = engine.split_module(_gpt(seed=9, dim=64))
  teacher = engine.Teacher(t_graphdef, (t_params, t_state))
  return c, task, data, module, teacher


def _one_step(c, task, data, module, teacher):
  """One jitted train step with SGD at rate 1 (the update is −grad); the rows it trained on."""
  graphdef, params, model_state = engine.split_module(module)
  optimizer = optax.sgd(1.0)
  state = step.TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                          opt_state=optimizer.init(params))
  train_step = step.make_train_step(graphdef, methods.make_objective(c), optimizer, task, teacher,
                                    data, _mesh())
  batch = {"index": jnp.arange(4, dtype=jnp.int32), "mask": jnp.ones(4, bool)}
  rng = jax.random.key(0)
  new_state, metrics = train_step(jax.tree.map(jnp.copy, state), batch, rng)
  # The same rows, sampled as the step did (its key is the base key folded with the step).
  rows = jax.jit(lambda d: task.train_batch(
      d, batch["index"], batch["mask"], jax.random.fold_in(rng, 0),
      policy=(graphdef, params, model_state),
      teacher=(teacher.graphdef, teacher.variables)))(data)
  return graphdef, state, new_state, metrics, rows


def test_grpo_step_with_all_equal_rewards_changes_nothing_but_the_kl_term():
  c, task, data, module, teacher = _setup(verifier_weight=1.0, teacher_weight=0.0, kl_coef=0.5)
  graphdef, state, new_state, metrics, (inputs, targets, loss_mask, _) = _one_step(
      c, task, data, module, teacher)
  assert float(metrics["verifier_reward"]) == 1.0 and float(metrics["policy_loss"]) == 0.0

  def kl_term(params):     # 0.5 × the k3 estimate of KL(π ‖ π_ref) per token, by its formula
    (logits, _), _ = step.forward(graphdef, params, state.model_state, inputs, train=True)
    log_pi = rl_losses.token_log_probs(logits, targets.tokens)
    d = targets.reference - log_pi
    return 0.5 * jnp.sum(jnp.where(loss_mask, jnp.exp(d) - d - 1, 0.0)) / jnp.sum(loss_mask)

  expected_grads = jax.grad(kl_term)(state.params)
  assert optax.tree.norm(expected_grads) > 1e-3          # the reference differs: KL pulls
  update = jax.tree.map(lambda new, old: old - new, new_state.params, state.params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-7),
               update, expected_grads)


def _large_answer(tokens, answers):
  """A verdict that is the same for every sample of a prompt but differs between prompts
  (the first four answers are 6, 10, 11, 11: prompts 0 and 1 differ)."""
  del tokens
  return answers >= 10


@pytest.mark.parametrize("verify", [_always_right, _large_answer])
def test_grpo_step_with_rewards_equal_within_each_group_and_no_kl_penalty_changes_nothing(
    verify):
  # Advantages compare the k samples of one prompt: rewards that differ only between
  # prompts carry no preference (this fails if the samples were not grouped by prompt).
  c, task, data, module, teacher = _setup(verify=verify, verifier_weight=1.0,
                                          teacher_weight=0.0, kl_coef=0.0)
  _, state, new_state, metrics, _ = _one_step(c, task, data, module, teacher)
  if verify is _large_answer:
    assert 0 < float(metrics["verifier_reward"]) < 1       # prompts' rewards differ
  assert float(metrics["grad_norm"]) == 0.0
  jax.tree.map(np.testing.assert_array_equal, new_state.params, state.params)


def test_verifier_rewards_in_the_step_are_the_checker_on_each_prompts_answers():
  _, task, data, module, _ = _setup()
  graphdef, params, model_state = engine.split_module(module)
  seen = []

  def verify(tokens, gold):       # the task's checker, on what the step hands the verifier
    seen.append((tokens, gold))
    return arithmetic.answers_correct(tokens, gold) | _large_answer(tokens, gold)

  # A generation budget beyond the rows' end: long answers are cut where the row ends.
  task = dataclasses.replace(task, verify=verify, max_new_tokens=30)
  index = jnp.array([3, 0, 2, 1])
  inputs, targets, _, _ = task.train_batch(data, index, jnp.ones(4, bool), jax.random.key(1),
                                           policy=(graphdef, params, model_state))
  tokens, gold = seen[0]
  # Each prompt's gold answer, once per sample, prompt by prompt.
  np.testing.assert_array_equal(gold, np.repeat(np.asarray(data.answers)[np.asarray(index)], K))
  expected = [ar.check_answer(TOKENIZER.decode(row), int(a)) or a >= 10
              for row, a in zip(np.asarray(tokens), np.asarray(gold))]
  np.testing.assert_array_equal(targets.verified, np.asarray(expected, np.float32))
  assert 0 < float(np.mean(expected)) < 1
  # The verifier reads the answer the row holds: the row after its prompt, to the EOS.
  rows = np.asarray(jnp.concatenate([inputs, targets.tokens[:, -1:]], axis=1))
  starts = np.repeat(np.argmax(np.asarray(data.prompts.loss_mask), 1)[np.asarray(index)] + 1, K)
  texts = [TOKENIZER.decode(answer) for answer in np.asarray(tokens)]
  assert any(texts)
  assert texts == [TOKENIZER.decode(row[start:]) for row, start in zip(rows, starts)]


def test_sampling_from_a_model_mixed_with_itself_is_sampling_from_it():
  model = _gpt()
  graphdef, state = nnx.split(model)
  _, tokens, prompt_lengths, _ = _split("test", 4)
  args = (graphdef, state, jnp.asarray(tokens), jnp.asarray(prompt_lengths), jax.random.key(2))
  kwargs = dict(max_new_tokens=12, temperature=1.0, eos_id=TOKENIZER.eos_id,
                pad_id=TOKENIZER.pad_id)
  alone = generate.sample_in_trace(*args, **kwargs)
  mixed = generate.sample_in_trace(*args, **kwargs, mix=(graphdef, state, 0.3))
  np.testing.assert_array_equal(alone[0], mixed[0])


def test_teacher_mixed_sampling_draws_from_the_mixture():
  # One token from a prompt, many times: its frequencies are α·p_teacher + (1 − α)·q_student.
  student, teacher = _gpt(seed=0), _gpt(seed=3)
  teacher.norm.weight[...] = teacher.norm.weight[...] * 40.0   # a peaked teacher
  _, tokens, prompt_lengths, _ = _split("test", 1)
  n = 4000
  prompts = jnp.asarray(np.repeat(tokens, n, 0))
  lengths = jnp.asarray(np.repeat(prompt_lengths, n))
  s_graphdef, s_state = nnx.split(student)
  t_graphdef, t_state = nnx.split(teacher)
  drawn, _ = generate.sample_in_trace(s_graphdef, s_state, prompts, lengths, jax.random.key(0),
                                      max_new_tokens=1, temperature=1.0, eos_id=None, pad_id=0,
                                      mix=(t_graphdef, t_state, 0.4))
  last = int(prompt_lengths[0]) - 1
  q = jax.nn.softmax(student(jnp.asarray(tokens))[0, last])
  p = jax.nn.softmax(teacher(jnp.asarray(tokens))[0, last])
  expected = 0.4 * np.asarray(p) + 0.6 * np.asarray(q)
  frequencies = np.bincount(np.asarray(drawn[:, 0]), minlength=len(expected)) / n
  # Multinomial standard errors at n = 4000 are at most 0.008.
  np.testing.assert_allclose(frequencies, expected, atol=0.03)
  assert np.abs(np.asarray(p) - np.asarray(q)).max() > 0.2    # the two models differ


def _rl_fit(workdir, method, stop_at_step=None):
  c, task, data, module, teacher = _setup(method=method, verify=arithmetic.answers_correct,
                                          teacher_mix=0.2 if method == "minillm" else 0.0)
  problems, tokens, prompt_lengths, lengths = _split("test", 16)
  test_data = lm.token_data(tokens, prompt_lengths, lengths, _mesh())
  return engine.fit(name="rl", module=module, objective=methods.make_objective(c),
                   train_config=methods.student_train_config(c), train_data=data,
                   test_data=test_data, task=dataclasses.replace(
                       task, **{f.name: getattr(_task(problems, prompt_lengths, lengths), f.name)
                                for f in dataclasses.fields(lm.LanguageModeling)}),
                   mesh=_mesh(), workdir=str(workdir), seed=0, teacher=teacher,
                   show_progress=False, log_every_steps=1, stop_at_step=stop_at_step)


@pytest.mark.parametrize("method", ["grpo", "minillm"])
def test_the_rl_loop_resumes_bit_identically(tmp_path, method):
  straight = _rl_fit(tmp_path / "straight", method)
  assert straight.step_compiles == 1 and straight.steps == 8        # 2 epochs of 4 steps
  with pytest.raises(KeyboardInterrupt):
    _rl_fit(tmp_path / "resumed", method, stop_at_step=6)       # checkpoint after epoch 1
  resumed = _rl_fit(tmp_path / "resumed", method)
  assert resumed.resumed_from_step == 4
  jax.tree.map(np.testing.assert_array_equal, nnx.state(straight.module),
               nnx.state(resumed.module))
  assert resumed.final == straight.final
  def read(directory):
    with open(directory / "metrics.jsonl") as f:
      return [r for r in map(json.loads, f) if "loss" in r]

  assert read(tmp_path / "straight") == read(tmp_path / "resumed")
  assert straight.train_rows == 8 * 4 * K


@pytest.mark.parametrize("arg, edit, field", [
    ("smoke", lambda c: setattr(c, "student_init", "scratch"), "student_init"),
    ("smoke", lambda c: setattr(c.rl, "k", 1), "rl.k"),                 # GRPO needs a group
    ("smoke", lambda c: setattr(c.rl, "k", 3), "rl.k"),                 # 64 rows ≠ prompts × 3
    ("smoke", lambda c: setattr(c.rl, "teacher_reward", "kl"), "rl.teacher_reward"),
    ("smoke", lambda c: setattr(c.rl, "teacher_mix", 0.2), "rl.teacher_mix"),   # GRPO: none
    ("smoke", lambda c: (setattr(c.rl, "verifier_weight", 0.0),
                         setattr(c.rl, "teacher_weight", 0.0)), "rl.verifier_weight"),
    ("smoke", lambda c: setattr(c, "teacher_cache", "memory"), "teacher_cache"),
    ("minillm_smoke", lambda c: setattr(c.rl, "teacher_mix", 1.0), "rl.teacher_mix"),
    ("minillm_smoke", lambda c: setattr(c.rl, "kl_coef", -0.1), "rl.kl_coef"),
])
def test_rl_configs_name_the_bad_field(arg, edit, field):
  assert_refused_field(cli_load(f"experiments/arithmetic/rl.py:{arg}"), edit, field)


def test_a_policy_gradient_phase_keeps_the_rows_per_step_and_takes_its_learning_rate():
  c = cli_load("experiments/arithmetic/rl.py")
  student = methods.student_train_config(c)
  assert student.batch_size * c.rl.k == c.train.batch_size == 64
  assert student.learning_rate == c.rl.learning_rate and c.train.learning_rate == 3e-3
