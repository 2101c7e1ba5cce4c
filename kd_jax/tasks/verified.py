"""Language-model tasks on verifiable problems: prompts whose ``####`` answers a checker reads.

What the arithmetic and reasoning families share once each has generated and encoded
its splits (:class:`Rows`): the models' construction, the teacher's and students'
reports (exact match, pass@k, token metrics, out-of-distribution exact match), the
teacher-written transfer set for sequence-level KD and the prompts that the methods
making their own data (DPO pairs, GRPO rollouts) sample from. :func:`prepare` turns the
splits into a :class:`kd_jax.tasks.base.Prepared`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import models
from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.data import arithmetic as ar
from kd_jax.engine import step
from kd_jax.llm import compute, transfer
from kd_jax.tasks import lm
from kd_jax.tasks.base import Prepared


@dataclasses.dataclass(frozen=True)
class Rows:
  """A split as ``BOS prompt response EOS`` token rows (``encode_pairs`` layout) and answers."""
  tokens: np.ndarray          # int32 [N, max_len]
  prompt_lengths: np.ndarray  # int32 [N]
  lengths: np.ndarray         # int32 [N]
  answers: np.ndarray         # [N]

  @classmethod
  def encode(cls, problems, tokenizer, max_len: int) -> Rows:
    """Rows of problems with ``prompt``, ``response`` and ``answer`` (ValueError if too long)."""
    return cls(*ar.encode_pairs(problems, tokenizer, max_len),
               np.array([p.answer for p in problems]))


@dataclasses.dataclass(frozen=True)
class _Split:
  """A held-out split and the task that generates and checks its answers."""
  task: lm.LanguageModeling
  data: lm.TokenData


def _split(rows: Rows, tokenizer, check_answer, mesh) -> _Split:
  task = lm.LanguageModeling(tokenizer, rows.prompt_lengths, rows.answers, check_answer,
                             int((rows.lengths - rows.prompt_lengths).max()) + 4)
  return _Split(task, lm.token_data(rows.tokens, rows.prompt_lengths, rows.lengths, mesh))


def check(config, student_data: tuple[str, ...]) -> None:
  """The fields every verifiable-problems family checks alike: the models, ``student_data``
  (one of ``student_data``, the first the default) and the transfer and sampling blocks."""
  lm.check_models(config)
  checks.choice("student_data", config.get("student_data", student_data[0]), student_data)
  if config.get("student_data") == "transfer":
    lm.check_transfer_block(config, "student_data='transfer'")
  if config.get("student_init") == "seqkd":      # (its start trains on the transfer set)
    lm.check_transfer_block(config, "student_init='seqkd'")
  lm.check_sampling_block(config)


def prepare(config, mesh, dtype, *, tokenizer, teacher_train: Rows, student_train: Rows,
            test: Rows, ood: dict[str, Rows], prompts: Rows, check_answer: Callable,
            extract_answer: Callable, max_len: int, baseline_train: Rows | None = None
            ) -> Prepared:
  """The :class:`~kd_jax.tasks.base.Prepared` of a verifiable-problems task.

  Args:
    teacher_train: what the teacher trains on (the pipeline's ``train_data``).
    student_train: what the baseline and the students train on, unless
      ``student_data="transfer"`` gives the students the teacher's verified answers
      to ``prompts`` instead.
    test: the held-out split every model is evaluated on; ``ood`` more of them, whose
      exact match the final reports give as ``ood_exact_match``.
    prompts: the training prompts the teacher writes its transfer set for and the
      prompt-sampling methods draw from (:class:`kd_jax.tasks.lm.PromptSet`).
    max_len: ``dataset.max_len``, the tokens of a training row.
    baseline_train: what the baseline trains on when it is not ``student_train``.

  Raises:
    ConfigError: language models in several processes; a model with fewer vocabulary
      rows than the tokenizer has ids (more are masked:
      :func:`kd_jax.tasks.lm.output_vocabularies`).
  """
  if jax.process_count() > 1:
    # Evaluation generates on each process's own devices from whole-split arrays.
    raise ConfigError(None, "language-model experiments run in one process for now "
                      f"(this run has {jax.process_count()}); use one host's devices")
  d = config.dataset
  test_split = _split(test, tokenizer, check_answer, mesh)
  task, test_data = test_split.task, test_split.data
  ood_splits = {name: _split(rows, tokenizer, check_answer, mesh) for name, rows in ood.items()}
  to_device = lambda rows: lm.token_data(rows.tokens, rows.prompt_lengths, rows.lengths, mesh)
  train_data = to_device(teacher_train)
  placed = {id(teacher_train): train_data}     # a split given twice goes to the devices once

  def on_devices(rows):
    if id(rows) not in placed:
      placed[id(rows)] = to_device(rows)
    return placed[id(rows)]

  student_train_data = on_devices(student_train)
  baseline_train_data = None if baseline_train is None else on_devices(baseline_train)
  output_vocab = lm.output_vocabularies(config, tokenizer.vocab_size)

  # A row, or a prompt and its generation, of every split (RoPE has no learnt positions:
  # max_len is only a bound the model checks).
  needed_len = max([max_len + task.max_new_tokens] +
                   [int(s.task.prompt_lengths.max()) + s.task.max_new_tokens
                    for s in ood_splits.values()])

  def build(spec, seed, role="student"):
    kwargs = {"vocab_size": tokenizer.vocab_size, "max_len": needed_len,
              "output_vocab": output_vocab[role], **spec.kwargs.to_dict()}
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
    if not ood_splits:
      return {}
    return {"ood_exact_match": {name: split.task.exact_match(module, split.data)
                                for name, split in ood_splits.items()}}

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

  prompt_len = int(prompts.prompt_lengths.max())

  def teacher_transfer_set(teacher_module, teacher_identity, cache_dir):
    t = config.transfer
    return transfer.build(
        teacher_module, prompts.tokens[:, :prompt_len], prompts.prompt_lengths, k=t.k,
        sampling=t.sampling, max_new_tokens=task.max_new_tokens, decode=tokenizer.decode,
        eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, directory=cache_dir,
        identity=teacher_identity, answers=prompts.answers.tolist(), check=check_answer,
        extract=extract_answer, label_free=t.label_free, seed=config.seed)

  def teacher_data(teacher_module, teacher_identity, cache_dir):
    """The transfer set on the training prompts, as token rows (prompt + teacher answer)."""
    written = teacher_transfer_set(teacher_module, teacher_identity, cache_dir)
    if not len(written.prompt_index):
      raise ConfigError("transfer", f"the teacher's transfer set is empty: none of its "
                        f"{written.stats['samples']} samples passed the verifier. Train the "
                        "teacher longer, sample more (transfer.k) or use transfer.label_free")
    written, stats = _first_examples(written, config.transfer.get("max_examples", 0))
    rows, prompt_lengths, lengths = transfer_rows(written, prompts.tokens, prompts.prompt_lengths,
                                                  d.max_len)
    # What writing the traces it trains on cost (also when they were read back from the
    # cache: the row's compute): k samples for each prompt up to the last one used, not the
    # whole pool a shared cache may hold.
    flops = compute.generation(teacher_module.config,
                               stats["prompts_sampled"] * config.transfer.k, prompt_len,
                               task.max_new_tokens)
    return lm.token_data(rows, prompt_lengths, lengths, mesh), {**stats, "teacher_flops": flops}

  prompt_set = lm.PromptSet(prompts.tokens, prompts.prompt_lengths, prompts.lengths,
                            max_len=d.max_len, answers=prompts.answers, decode=tokenizer.decode,
                            check_answer=check_answer, verify=answers_correct,
                            eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                            teacher_samples=teacher_transfer_set)
  def compute_shapes(rows_per_step, student_module, teacher_module):
    return compute.Shapes(student=student_module.config,
                          teacher=None if teacher_module is None else teacher_module.config,
                          batch=rows_per_step, row=d.max_len - 1,
                          new_tokens=task.max_new_tokens)

  return Prepared(task, train_data, student_train_data, test_data, tokenizer.vocab_size, build,
                  evaluate_teacher, student_report,
                  teacher_data if (config.get("student_data") == "transfer"
                                   or config.get("student_init") == "seqkd") else None,
                  mesh=mesh, prompts=prompt_set, compute_shapes=compute_shapes,
                  baseline_train_data=baseline_train_data)


def _first_examples(written: transfer.TransferSet, count: int):
  """The first ``count`` accepted samples of ``written`` (in prompt order; 0: all) and its
  stats with ``used``, the number kept, and ``prompts_sampled``, the prompts the teacher had
  to sample (``k`` times each) to write them: the pool up to the last kept sample's prompt.

  Raises:
    ConfigError: fewer accepted samples than ``count``, naming ``transfer.max_examples``.
  """
  accepted = len(written.prompt_index)
  if count > accepted:
    raise ConfigError("transfer.max_examples", f"transfer.max_examples={count}, but the "
                      f"teacher's set has {accepted} accepted samples (of "
                      f"{written.stats['samples']}): lower it, or raise transfer.k or the "
                      "number of prompts")
  if not count:
    return written, {**written.stats, "used": accepted,
                     "prompts_sampled": written.stats["prompts"]}
  kept = dataclasses.replace(written, prompt_index=written.prompt_index[:count],
                             responses=written.responses[:count],
                             lengths=written.lengths[:count])
  return kept, {**written.stats, "used": count,
                "prompts_sampled": int(written.prompt_index[count - 1]) + 1}


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
