"""The arithmetic reasoning experiment (kd_jax/data/arithmetic.py) as a language-modelling task.

:func:`prepare` wires the generated problems into :class:`kd_jax.tasks.lm.LanguageModeling`:
the gold training chains, the held-out split for evaluation, the teacher-written
transfer set for sequence-level KD (``student_data="transfer"``), the student's
own samples for on-policy distillation (``method="gkd"``) and, with
``dataset.ood_examples`` > 0, two out-of-distribution test splits (one more step,
one more digit: :func:`kd_jax.data.arithmetic.harder`) on which every model's
final report gives ``ood_exact_match``, the test of whether a student learnt the
procedure or the training distribution.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import models
from kd_jax.config import checks
from kd_jax.engine import step
from kd_jax.llm import transfer
from kd_jax.data import arithmetic as ar
from kd_jax.core.errors import ConfigError
from kd_jax.tasks.base import Prepared
from kd_jax.tasks import lm

NAME = "arithmetic"
DATASETS = ("arithmetic",)
KIND = "reasoning"
LANGUAGE = True
STUDENT_INITS = ("scratch", "baseline")
# What a student trains on: the gold responses, or the teacher's verified answers to the
# gold prompts (sequence-level KD, kd_jax/llm/transfer.py).
STUDENT_DATA = ("gold", "transfer")


def check(config) -> None:
  """The arithmetic task's fields (dataset block, models, student_data, transfer and
  sampling blocks); raises ``ConfigError`` naming the field."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples", "steps", "digits"), 1)
  checks.ints_at_least("dataset", d, ("seed",))
  if "ood_examples" in d:
    checks.ints_at_least("dataset", d, ("ood_examples",))
  checks.ints_at_least("dataset", d, ("max_len",), 8)
  if not d.ops or set(d.ops) - set("+-*"):
    raise ConfigError("dataset.ops", f"dataset.ops must be a non-empty subset of '+-*', "
                      f"got {d.ops!r}")
  lm.check_models(config)
  checks.choice("student_data", config.get("student_data", "gold"), STUDENT_DATA)
  if config.get("student_data") == "transfer":
    lm.check_transfer_block(config, "student_data='transfer'")
  lm.check_sampling_block(config)


@dataclasses.dataclass(frozen=True)
class _Split:
  """A held-out split and the task that generates and checks its answers."""
  task: lm.LanguageModeling
  data: lm.TokenData


def _split(problems, tokenizer, max_len, mesh) -> _Split:
  tokens, prompt_lengths, lengths = ar.encode_pairs(problems, tokenizer, max_len)
  task = lm.LanguageModeling(tokenizer, prompt_lengths, np.array([p.answer for p in problems]),
                             ar.check_answer, int((lengths - prompt_lengths).max()) + 4)
  return _Split(task, lm.token_data(tokens, prompt_lengths, lengths, mesh))


def _ood_splits(d, difficulty, tokenizer, mesh) -> dict[str, _Split]:
  """``{"steps+1": split, "digits+1": split}`` of ``dataset.ood_examples`` problems each."""
  if not d.get("ood_examples", 0):
    return {}
  splits = {}
  for name, harder in ar.harder(difficulty).items():
    problems = ar.generate_split("test", d.ood_examples, seed=d.seed, difficulty=harder)
    splits[name] = _split(problems, tokenizer, ar.row_length(problems), mesh)
  return splits


def prepare(config, mesh, dtype) -> Prepared:
  """The arithmetic experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`).

  Raises:
    ConfigError: a model's ``vocab_size`` differs from the task's tokenizer (or the
      teacher's from the student's), naming both sizes.
  """
  if jax.process_count() > 1:
    # Evaluation generates on each process's own devices from whole-split arrays.
    raise ConfigError(None, "language-model experiments run in one process for now "
                      f"(this run has {jax.process_count()}); use one host's devices")
  d = config.dataset
  difficulty = ar.Difficulty(steps=d.steps, digits=d.digits, ops=d.ops)
  tokenizer = ar.CharTokenizer()
  train_problems = ar.generate_split("train", d.train_examples, seed=d.seed,
                                     difficulty=difficulty)
  test_problems = ar.generate_split("test", d.test_examples, seed=d.seed, difficulty=difficulty)
  try:
    train_arrays = ar.encode_pairs(train_problems, tokenizer, d.max_len)
    test = _split(test_problems, tokenizer, d.max_len, mesh)
  except ValueError as e:
    raise ConfigError("dataset.max_len", f"dataset.max_len: {e}") from None
  task, test_data = test.task, test.data
  ood = _ood_splits(d, difficulty, tokenizer, mesh)
  train_data = lm.token_data(*train_arrays, mesh)
  lm.check_vocabularies(config, tokenizer.vocab_size)

  # A row, or a prompt and its generation, of every split (RoPE has no learnt positions:
  # max_len is only a bound the model checks).
  needed_len = max([d.max_len + task.max_new_tokens] +
                   [int(s.task.prompt_lengths.max()) + s.task.max_new_tokens
                    for s in ood.values()])

  def build(spec, seed, role="student"):
    kwargs = {"vocab_size": tokenizer.vocab_size, "max_len": needed_len, **spec.kwargs.to_dict()}
    if kwargs["max_len"] < needed_len:
      raise ConfigError(f"{role}.kwargs.max_len", f"{role}.kwargs.max_len={kwargs['max_len']} "
                        f"is below the {needed_len} positions the task needs (dataset.max_len + "
                        "the generation budget); leave it unset")
    try:
      return models.create(spec.model, rngs=nnx.Rngs(seed), dtype=dtype, **kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"{role}.kwargs",
                        f"{role}.kwargs={kwargs} do not fit model {spec.model!r}: {e}") from None

  def ood_report(module) -> dict:
    if not ood:
      return {}
    return {"ood_exact_match": {name: split.task.exact_match(module, split.data)
                                for name, split in ood.items()}}

  def evaluate_teacher(graphdef, variables, batch_size):
    metrics, _ = task.evaluator(graphdef, test_data, batch_size, mesh)(variables)
    module = nnx.merge(graphdef, *variables)
    metrics.update(lm.generation_report(task, module, test_data, config.sampling))
    metrics.update(ood_report(module))
    return metrics, (graphdef, variables)

  def student_report(fit, module, teacher, batch_size):
    # The final evaluation's exact match and token metrics, with the comparison to the
    # teacher added (one teacher-forced pass; the greedy answers are not generated again).
    graphdef, params, model_state = step.split_module(module)
    compared = task.token_metrics(graphdef, test_data, batch_size, mesh, reference=teacher)(
        (params, model_state))
    # The budget in tokens: every position of every row of every step's batch.
    train_tokens = fit.train_rows * (d.max_len - 1)
    return {**fit.final, **compared,
            **lm.generation_report(task, module, test_data, config.sampling),
            **ood_report(module), "train_tokens": train_tokens}

  prompt_len = int(train_arrays[1].max())

  def teacher_transfer_set(teacher_module, teacher_identity, cache_dir):
    t = config.transfer
    return transfer.build(
        teacher_module, train_arrays[0][:, :prompt_len], train_arrays[1], k=t.k,
        sampling=t.sampling, max_new_tokens=task.max_new_tokens, decode=tokenizer.decode,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, directory=cache_dir,
        identity=teacher_identity, answers=[p.answer for p in train_problems],
        check=ar.check_answer, extract=ar.extract_answer, label_free=t.label_free,
        seed=config.seed)

  def teacher_data(teacher_module, teacher_identity, cache_dir):
    """The transfer set on the gold training prompts, as token rows (prompt + teacher answer)."""
    written = teacher_transfer_set(teacher_module, teacher_identity, cache_dir)
    if not len(written.prompt_index):
      raise ConfigError("transfer", f"the teacher's transfer set is empty: none of its "
                        f"{written.stats['samples']} samples passed the verifier. Train the "
                        "teacher longer, sample more (transfer.k) or use transfer.label_free")
    rows, prompt_lengths, lengths = transfer_rows(written, train_arrays[0], train_arrays[1],
                                                  d.max_len)
    return lm.token_data(rows, prompt_lengths, lengths, mesh), written.stats

  prompts = lm.PromptSet(*train_arrays, max_len=d.max_len,
                         answers=np.array([p.answer for p in train_problems]),
                         decode=tokenizer.decode, check_answer=ar.check_answer,
                         verify=answers_correct, eos_id=tokenizer.eos_id,
                         pad_id=tokenizer.pad_id, teacher_samples=teacher_transfer_set)
  return Prepared(task, train_data, train_data, test_data, tokenizer.vocab_size, build,
                  evaluate_teacher, student_report,
                  teacher_data if config.get("student_data") == "transfer" else None,
                  mesh=mesh, prompts=prompts)


def transfer_rows(written: transfer.TransferSet, tokens, prompt_lengths, max_len: int):
  """Token rows ``prompt + accepted response`` (``encode_pairs`` layout) of a transfer set.

  A response longer than the row has room for is cut at ``max_len`` (so it has no
  EOS); every accepted answer of the arithmetic task fits.
  """
  return transfer.response_rows(written.responses, written.lengths, written.prompt_index,
                                tokens, prompt_lengths, max_len)


def answers_correct(tokens: jax.Array, answers: jax.Array) -> jax.Array:
  """:func:`kd_jax.data.arithmetic.check_answer` on token ids, inside a jitted step.

  ``tokens`` ``[B, T]`` int32 are generated responses, read as
  :meth:`~kd_jax.data.arithmetic.CharTokenizer.decode` reads them (the text ends at the
  first EOS; PAD, BOS and unknown ids are dropped); ``answers`` ``[B]`` the gold
  integers (|answer| < 10⁸). True where the text after the last ``####`` is an
  optional ``-`` and 1 to 30 digits whose value is the answer — the checker's rule,
  leading zeros and ``-0`` included — so that a verifier reward (DeepSeek-R1's
  rule-based reward) is computed on the devices.

  Returns:
    bool ``[B]``.
  """
  ids = {c: i + 3 for i, c in enumerate(ar.CHARS)}
  b, t = tokens.shape
  position = jnp.arange(t)
  ended = jnp.cumsum(tokens == ar.EOS, axis=1) > 0          # at or after the first EOS
  keep = (tokens >= 3) & (tokens < 3 + len(ar.CHARS)) & ~ended
  # The characters, moved to the front in order (decode drops the other ids); -1 after.
  order = jnp.argsort(~keep, axis=1, stable=True)
  text = jnp.where(position[None] < jnp.sum(keep, axis=1, keepdims=True),
                   jnp.take_along_axis(tokens, order, axis=1), -1)
  ended = text < 0
  hash_ = text == ids["#"]
  # Where a "####" starts: four '#' in a row (overlapping runs give every start, as str.find).
  shifted = lambda k: jnp.pad(hash_[:, k:], ((0, 0), (0, k)))
  starts = hash_ & shifted(1) & shifted(2) & shifted(3)
  last = jnp.max(jnp.where(starts, position, -1), axis=1)  # -1: no "####"
  rest = (position[None] >= last[:, None] + 4) & ~ended      # the text after it
  negative = jnp.take_along_axis(text, jnp.clip(last + 4, 0, t - 1)[:, None], axis=1)[:, 0] == (
      ids["-"])
  digit_value = text - ids["0"]
  is_digit = (digit_value >= 0) & (digit_value <= 9)
  sign_slot = rest & (position[None] == last[:, None] + 4) & negative[:, None]
  digits = rest & ~sign_slot
  count = jnp.sum(digits, axis=1)
  well_formed = (last >= 0) & jnp.all(~digits | is_digit, axis=1) & (count >= 1) & (count <= 30)

  def accumulate(carry, column):
    value, overflow = carry
    d, use = column
    big = value >= 10**8          # it can no longer equal an answer below 10⁸ (int32)
    value = jnp.where(use & ~big, value * 10 + d, value)
    return (value, overflow | (use & big)), None

  init = (jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))
  (value, overflow), _ = jax.lax.scan(
      accumulate, init, (jnp.where(is_digit, digit_value, 0).T, digits.T))
  value = jnp.where(negative, -value, value)
  return well_formed & ~overflow & (value == answers.astype(value.dtype))
