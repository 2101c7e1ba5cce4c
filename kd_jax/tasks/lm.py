"""Causal language modelling on (prompt, response) pairs, as a task of the engine.

A split lives on the devices as token rows ``BOS prompt response EOS PAD...``
(:class:`TokenData`). A step's inputs are a row's tokens but the last, its
targets the tokens shifted by one, and its loss mask keeps exactly the response
tokens and the EOS that ends them: the prompt and the padding are masked, the
EOS is a target even when the pad id equals the EOS id (the mask is computed
from lengths, never from token values). Losses are means over every unmasked
token of the global batch (:mod:`kd_jax.losses`), so long responses weigh more
than short ones, token for token.

Two tasks: :class:`NextTokens` (text: every token is a target; evaluated by the
teacher-forced ``nll`` per token, the headline, and ``perplexity``) and
:class:`LanguageModeling` (prompt → response pairs with a checkable answer).
Evaluation of the latter (:meth:`LanguageModeling.evaluator`) streams over the
held-out split:

* ``exact_match`` (the headline) — greedy generation with the KV cache
  (:mod:`kd_jax.generate`) from each prompt, checked by the task's answer checker;
* ``nll`` (per token) and ``token_accuracy`` — teacher-forced on the gold responses;
* with a reference (teacher) model, ``kl_to_teacher`` (per token, KL(teacher ‖
  model) at T = 1) and ``agreement`` (argmax agreement on the gold positions).

Logits of the whole split never reach the host, only per-batch sums.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from kd_jax import models
from kd_jax.config import checks
from kd_jax.objectives.masked import masked_mean
from kd_jax.engine import feeding
from kd_jax.core import parallel
from kd_jax.engine import step
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.core.errors import ConfigError
from kd_jax.llm import generate as generate_lib


@device_split
class TokenData(DeviceSplit):
  """A split on the devices: ``tokens`` int32 ``[N, L]`` and ``loss_mask`` bool ``[N, L-1]``.

  ``loss_mask[i, j]`` says whether target ``tokens[i, j + 1]`` counts (a response
  token or the final EOS). ``teacher_logits`` ``[N, L-1, V]`` holds cached teacher
  outputs aligned with the targets.
  """
  tokens: jax.Array
  loss_mask: jax.Array


def response_mask(prompt_lengths: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
  """``[N, max_len - 1]``: target j (token j + 1) counts iff prompt_length ≤ j + 1 < length."""
  target = np.arange(1, max_len)[None, :]
  return (target >= prompt_lengths[:, None]) & (target < lengths[:, None])


def token_data(tokens, prompt_lengths, lengths, mesh) -> TokenData:
  """A :class:`TokenData` on the devices (replicated) from ``encode_pairs``-style arrays."""
  mask = response_mask(np.asarray(prompt_lengths), np.asarray(lengths), tokens.shape[1])
  return TokenData(*parallel.put_replicated((np.asarray(tokens, np.int32), mask), mesh))


def packed_mask(tokens, lengths) -> np.ndarray:
  """:func:`response_mask` of packed text rows: every real token after a row's first is a
  target (no prompt)."""
  return response_mask(np.ones(len(tokens), np.int32), np.asarray(lengths), tokens.shape[1])


def packed_token_data(tokens, lengths, mesh) -> TokenData:
  """A :class:`TokenData` of packed text rows (:func:`packed_mask`) on the devices."""
  return TokenData(*parallel.put_replicated((np.asarray(tokens, np.int32),
                                             packed_mask(tokens, lengths)), mesh))


@dataclasses.dataclass(frozen=True)
class PromptSet:
  """A language task's training prompts (arithmetic: the gold training problems; the
  reasoning testbed: the unlabelled pool), for the teacher's transfer set and the methods
  that make their own training data from them (DPO's pairs, policy-gradient rollouts:
  :mod:`kd_jax.methods`).

  Attributes:
    tokens, prompt_lengths, lengths: the prompts' rows ``[N, max_len]`` int32 and
      their prompt and row lengths ``[N]`` (``encode_pairs`` layout).
    max_len: tokens per row.
    answers: the prompts' answers ``[N]`` (for the verifier).
    decode: token ids -> text.
    check_answer: ``(text, answer) -> bool`` on the host (the verifier).
    verify: ``(tokens [B, T], answers [B]) -> bool [B]``: the verifier inside a jitted step.
    eos_id, pad_id: the tokenizer's.
    teacher_samples: ``(teacher_module, teacher_identity, cache_dir) -> TransferSet``: the
      teacher's verified samples of the prompts, as the ``transfer`` block says
      (:func:`kd_jax.llm.transfer.build`).
  """
  tokens: np.ndarray
  prompt_lengths: np.ndarray
  lengths: np.ndarray
  max_len: int
  answers: np.ndarray
  decode: Callable
  check_answer: Callable
  verify: Callable
  eos_id: int
  pad_id: int
  teacher_samples: Callable

  @property
  def prompts(self) -> np.ndarray:
    """``[N, P]``: the rows cut at the longest prompt (what generation starts from)."""
    return self.tokens[:, :int(self.prompt_lengths.max())]


@dataclasses.dataclass(frozen=True, eq=False)
class NextTokens:
  """Next-token prediction on token rows, evaluated teacher-forced (text corpora).

  Every real token of a row is a target (the rows' ``loss_mask``); the evaluation
  is :meth:`token_metrics` with ``perplexity`` = exp(nll); the headline is ``nll``
  per token (lower is better).
  """
  headline: ClassVar[str] = "nll"
  higher_is_better: ClassVar[bool] = False
  rows_per_example: ClassVar[int] = 1     # token rows a training example puts in a batch

  @property
  def augments(self) -> bool:
    """Whether training inputs change from step to step (then teacher outputs cannot be cached)."""
    return False

  def input_identity(self) -> dict:
    return {"inputs": "tokens[:, :-1]"}

  def train_batch(self, data: TokenData, index, mask, rng, policy=None, teacher=None):
    """The rows' inputs, targets and loss mask (``rng`` and ``policy`` are unused)."""
    del rng, policy, teacher
    tokens = data.tokens[index]
    return tokens[:, :-1], tokens[:, 1:], data.loss_mask[index] & mask[:, None], {}

  def eval_inputs(self, data: TokenData, index):
    return data.tokens[index][:, :-1]

  def train_metrics(self, logits, targets, loss_mask) -> dict:
    correct = jnp.argmax(logits, -1) == targets
    return {"token_accuracy": masked_mean(correct.astype(jnp.float32), loss_mask)}

  def evaluator(self, graphdef, data: TokenData, batch_size: int, mesh, *,
                reference: tuple | None = None):
    """``evaluate(variables) -> (metrics, None)``: :meth:`token_metrics` and ``perplexity``."""
    token_metrics = self.token_metrics(graphdef, data, batch_size, mesh, reference=reference)

    def evaluate(variables):
      metrics = token_metrics(variables)
      return {**metrics, "perplexity": float(np.exp(metrics["nll"]))}, None

    return evaluate

  def token_metrics(self, graphdef, data: TokenData, batch_size: int, mesh, *,
                    reference: tuple | None = None):
    """``metrics(variables) -> dict``: teacher-forced ``nll`` and ``token_accuracy`` on the
    targets of the loss mask, streamed in batches; with ``reference`` (a teacher's
    ``(graphdef, variables)``), also ``kl_to_teacher`` and ``agreement`` per token."""
    sums = _token_sums_fn(graphdef, reference[0] if reference else None, mesh)

    def metrics(variables):
      totals = np.zeros(5)
      rows = parallel.process_rows(mesh, batch_size)
      for index, valid in feeding.padded_batches(data.size, batch_size):
        batch = parallel.global_batch({"index": index[rows], "valid": valid[rows]}, mesh,
                                      batch_size)
        out = sums(variables, reference[1] if reference else None, data, batch["index"],
                   batch["valid"])
        totals += np.asarray(jax.device_get(out), np.float64)
      tokens, nll, correct, kl, agree = totals
      result = {"nll": nll / tokens, "token_accuracy": correct / tokens}
      if reference:
        result.update(kl_to_teacher=kl / tokens, agreement=agree / tokens)
      return result

    return metrics


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModeling(NextTokens):
  """Prompt → response pairs with a checkable answer: trained on the responses, evaluated
  by greedy exact match (the headline) and the teacher-forced token metrics.

  Args:
    tokenizer: has ``decode(ids) -> str``, ``pad_id`` and ``eos_id``.
    prompt_lengths: host int32 ``[N]`` of the evaluation split (BOS + prompt).
    answers: host ``[N]`` gold answers of the evaluation split.
    check: ``check(text, answer) -> bool``, the task's answer checker.
    max_new_tokens: generation budget for exact match (the longest gold response
      with its EOS, plus slack).
  """
  tokenizer: object
  prompt_lengths: np.ndarray
  answers: np.ndarray
  check: Callable[[str, object], bool]
  max_new_tokens: int
  on_policy: float = 0.0            # λ: the fraction of training batches the student samples
  policy_temperature: float = 1.0   # the student's sampling temperature for those batches
  headline: ClassVar[str] = "exact_match"
  higher_is_better: ClassVar[bool] = True

  @property
  def augments(self) -> bool:
    return self.on_policy > 0

  def trained_as(self, task_class, **fields):
    """This task's problems and evaluation as ``task_class`` (a subclass that makes other
    training batches: DPO's pairs, policy-gradient rollouts), with its own ``fields``."""
    return task_class(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                      **fields)

  def train_batch(self, data: TokenData, index, mask, rng, policy=None, teacher=None):
    """The gold rows; with ``on_policy`` = λ > 0, a fraction λ of the batches instead holds
    the student's own answers to the same prompts (GKD, Agarwal et al. 2024), sampled
    inside the step with fixed shapes (``metrics["on_policy"]`` says which)."""
    *gold, metrics = super().train_batch(data, index, mask, rng)
    if not self.on_policy:
      return (*gold, metrics)
    tokens, gold_mask = data.tokens[index], data.loss_mask[index]
    choose, sample = jax.random.split(rng)
    use = jax.random.uniform(choose) < self.on_policy
    batch = jax.lax.cond(use, lambda: self._student_rows(tokens, gold_mask, mask, sample, policy),
                         lambda: tuple(gold))
    return (*batch, {"on_policy": use.astype(jnp.float32)})

  def _student_rows(self, tokens, gold_mask, mask, rng, policy):
    """``(inputs, targets, loss_mask)`` of rows ``prompt + the student's sampled answer``."""
    rows, loss_mask, _ = self.sample_rows(tokens, gold_mask, mask, rng, policy)
    return rows[:, :-1], rows[:, 1:], loss_mask

  def sample_rows(self, tokens, gold_mask, mask, rng, policy, *, mix=None):
    """Inside the step: rows ``prompt + a sampled answer`` from the gold rows ``tokens``.

    The student of ``policy`` (``(graphdef, params, model_state)``, not differentiated)
    answers each row's prompt at ``policy_temperature``; ``mix`` (``(graphdef, state, α)``)
    mixes a second model into the sampling (:func:`kd_jax.generate.sample_in_trace`).

    Returns:
      ``(rows [B, L], loss_mask [B, L-1], answers [B, max_new_tokens])``: the loss mask
      covers the answer and its EOS (and ``mask``'s rows only); ``answers`` are the
      sampled tokens alone as the row holds them (pad after EOS and past the row's
      end), for a verifier.
    """
    model_graphdef, model_state = policy_model(policy)
    prompt_lengths = jnp.argmax(gold_mask, axis=1).astype(jnp.int32) + 1   # first target + 1
    # The whole row is the prompt buffer: generate ignores what lies past prompt_lengths.
    generated, lengths = generate_lib.sample_in_trace(
        model_graphdef, model_state, tokens, prompt_lengths, rng,
        max_new_tokens=self.max_new_tokens, temperature=self.policy_temperature,
        eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id, mix=mix)
    offset = jnp.arange(tokens.shape[1])[None, :] - prompt_lengths[:, None]
    answer = jnp.take_along_axis(generated, jnp.clip(offset, 0, self.max_new_tokens - 1), axis=1)
    rows = jnp.where(offset < 0, tokens,
                     jnp.where(offset < lengths[:, None], answer, self.tokenizer.pad_id))
    target = jnp.arange(1, tokens.shape[1])[None, :]
    loss_mask = ((target >= prompt_lengths[:, None])
                 & (target < prompt_lengths[:, None] + lengths[:, None]) & mask[:, None])
    # The answer as the row holds it: tokens cut off by the row's end are gone for the
    # verifier too (it must not reward what the loss never sees).
    fits = jnp.arange(self.max_new_tokens)[None, :] < tokens.shape[1] - prompt_lengths[:, None]
    return rows, loss_mask, jnp.where(fits, generated, self.tokenizer.pad_id)

  def evaluator(self, graphdef, data: TokenData, batch_size: int, mesh, *,
                reference: tuple | None = None):
    """``evaluate(variables) -> (metrics, None)``: :meth:`token_metrics` and greedy exact match.

    ``reference``: ``(graphdef, variables)`` of a teacher for ``kl_to_teacher`` and
    ``agreement``.
    """
    if data.size != len(self.answers):
      raise ValueError(f"the task holds the answers of {len(self.answers)} problems but the "
                       f"split to evaluate has {data.size}")
    token_metrics = self.token_metrics(graphdef, data, batch_size, mesh, reference=reference)

    def evaluate(variables):
      exact = self.exact_match(nnx.merge(graphdef, *variables), data)
      return {"exact_match": exact, **token_metrics(variables)}, None

    return evaluate

  def exact_match(self, module, data: TokenData) -> float:
    """The fraction of ``data``'s problems whose greedy answer is right."""
    tokens, _ = self.generate(module, data, int(self.prompt_lengths.max()))
    return float(np.mean(self.correct(tokens)))

  def generate(self, module, data: TokenData, prompt_len: int, **sampling):
    """``(tokens, lengths)`` generated from every prompt of ``data`` (host arrays).

    Runs on this process's devices, the whole split as one batch (one compilation
    per split and sampling setting). ``sampling``: ``generate``'s
    rng/temperature/top_k/top_p.
    """
    model = getattr(module, "model", module)          # a methods.Student wraps the model
    graphdef, state = nnx.split(model)
    prompts = np.asarray(data.tokens[:, :prompt_len])
    return jax.device_get(generate_lib.generate(
        graphdef, state, prompts, self.prompt_lengths, max_new_tokens=self.max_new_tokens,
        eos_id=self.tokenizer.eos_id, pad_id=self.tokenizer.pad_id, **sampling))

  def correct(self, tokens) -> np.ndarray:
    """Whether each generated row's answer is right (bool ``[N]``)."""
    return np.array([self.check(self.tokenizer.decode(row), answer)
                     for row, answer in zip(np.asarray(tokens), self.answers)])


def policy_model(policy) -> tuple:
  """``(graphdef, state)`` of the language model of a step's ``policy`` ``(graphdef, params,
  model_state)`` (a :class:`~kd_jax.methods.Student`'s ``model``), parameters as constants."""
  graphdef, params, model_state = policy
  module = nnx.merge(graphdef, jax.lax.stop_gradient(params), model_state)
  return nnx.split(getattr(module, "model", module))


def _token_sums_fn(graphdef, reference_graphdef, mesh):
  """Compiles per-batch sums: [tokens, Σ nll, Σ correct, Σ KL(ref ‖ model), Σ agreement]."""

  def sums(variables, reference_variables, data, index, valid):
    tokens = data.tokens[index]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    mask = data.loss_mask[index] & valid[:, None]
    (logits, _), _ = step.forward(graphdef, *variables, inputs, train=False)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    safe_targets = jnp.where(mask, targets, 0)
    nll = -jnp.take_along_axis(log_q, safe_targets[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(log_q, -1) == targets
    kl = agree = jnp.zeros_like(nll)
    if reference_graphdef is not None:
      (ref_logits, _), _ = step.forward(reference_graphdef, *reference_variables, inputs,
                                        train=False)
      log_p = jax.nn.log_softmax(ref_logits.astype(jnp.float32), axis=-1)
      kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
      agree = jnp.argmax(log_p, -1) == jnp.argmax(log_q, -1)
    masked_sum = lambda x: jnp.sum(jnp.where(mask, x, 0.0))
    return jnp.stack([jnp.sum(mask).astype(jnp.float32), masked_sum(nll), masked_sum(correct),
                      masked_sum(kl), masked_sum(agree)])

  replicated = parallel.replicated(mesh)
  return jax.jit(sums, in_shardings=(None, None, replicated, parallel.batch_sharding(mesh),
                                     parallel.batch_sharding(mesh)),
                 out_shardings=replicated)


def pass_at_k(num_samples: int, num_correct, k: int) -> float:
  """The unbiased pass@k of Chen et al. 2021, averaged over problems.

  pass@k = 1 − C(n − c, k) / C(n, k) per problem, with n samples of which c are
  correct (k ≤ n).
  """
  c = np.asarray(num_correct)
  if k > num_samples:
    raise ValueError(f"pass@{k} needs at least {k} samples, got {num_samples}")
  fail = np.ones(c.shape)
  for i in range(k):   # C(n−c, k) / C(n, k) = Π_{i<k} (n − c − i) / (n − i)
    fail *= np.clip(num_samples - c - i, 0, None) / (num_samples - i)
  return float(np.mean(1.0 - fail))


def generation_report(task: LanguageModeling, module, data: TokenData, sampling) -> dict:
  """``generation_tokens_per_second`` (greedy, whole split, after compiling) and
  ``pass_at_k`` (``sampling.num_samples`` answers per prompt at the sampling settings)."""
  prompt_len = int(task.prompt_lengths.max())
  task.generate(module, data, prompt_len)                  # compiles
  start = time.perf_counter()
  _, lengths = task.generate(module, data, prompt_len)
  speed = float(np.sum(lengths)) / (time.perf_counter() - start)
  correct = np.zeros(data.size)
  for i in range(sampling.num_samples):
    tokens, _ = task.generate(module, data, prompt_len, rng=jax.random.key(i),
                              temperature=sampling.temperature, top_k=sampling.top_k,
                              top_p=sampling.top_p)
    correct += task.correct(tokens)
  return {"generation_tokens_per_second": speed,
          "pass_at_k": {str(k): pass_at_k(sampling.num_samples, correct, k)
                        for k in sampling.pass_at_k}}


def output_vocabularies(config, tokens: int, *, teacher_rows: int | None = None,
                        roles: tuple[str, ...] = ("teacher", "student")) -> dict[str, int | None]:
  """Each side's ``output_vocab`` (:class:`kd_jax.models.gpt.GPT`) for a tokenizer of
  ``tokens`` ids, shared by teacher and student (DESIGN §9).

  A side's rows are its ``kwargs.vocab_size`` (``teacher_rows`` for a checkpoint teacher),
  else ``tokens``. Rows past ``tokens`` are never produced by the tokenizer (a checkpoint's
  padding, as Qwen2.5's 151,936 rows for 151,665 tokens): their logits are masked out on
  that side (``output_vocab=tokens``), so both sides' logits have ``tokens`` columns,
  which is said in one line.

  Args:
    roles: the sides that read this tokenizer (``("teacher",)`` when the student has
      another: its rows are then not compared with these ids).

  Returns:
    ``{role: tokens}`` for a side with extra rows, ``{role: None}`` for one without.

  Raises:
    ConfigError: a side with fewer rows than the tokenizer has ids, naming the sizes.
  """
  given = {"teacher": teacher_rows or config.teacher.kwargs.get("vocab_size"),
           "student": config.student.kwargs.get("vocab_size")}
  rows = {role: given[role] or tokens for role in roles}
  sizes = ", ".join(f"the {role} {size}" for role, size in rows.items())
  for role, size in rows.items():
    if size < tokens:
      field = ("teacher.checkpoint" if role == "teacher" and teacher_rows
               else f"{role}.kwargs.vocab_size")
      raise ConfigError(field, f"{field}: the {role} has {size} vocabulary rows ({sizes}) but "
                        f"the tokenizer produces {tokens} ids: every id needs a row")
  if any(size > tokens for size in rows.values()):
    logging.info("a tokenizer of %d ids and vocabulary rows of %s: the rows past %d are never "
                 "produced, their logits are masked to -inf", tokens, sizes, tokens)
  return {"teacher": None, "student": None,
          **{role: tokens if size > tokens else None for role, size in rows.items()}}


def check_models(config) -> None:
  """The teacher and student must be sequence models (:data:`kd_jax.models.SEQUENCE_MODELS`)."""
  for role in ("teacher", "student"):
    checks.choice(f"{role}.model", config[role].model, models.SEQUENCE_MODELS)


def check_transfer_block(config, setting: str) -> None:
  """The ``transfer`` block that ``setting`` (e.g. ``student_data='transfer'``) needs: how
  the teacher samples its answers (:func:`kd_jax.config.transfer_config`)."""
  t = config.get("transfer")
  if t is None:
    raise ConfigError("transfer", f"{setting} needs a transfer block "
                      "(kd_jax.config.transfer_config())")
  checks.ints_at_least("transfer", t, ("k",), 1)
  checks.ints_at_least("transfer", t, ("max_examples",))
  s = t.sampling
  if s.temperature <= 0 or s.top_k < 0 or not 0 < s.top_p <= 1:
    raise ConfigError("transfer.sampling", "transfer.sampling.temperature must be > 0 (k "
                      "samples must differ), top_k >= 0 and top_p in (0, 1]; got "
                      f"{s.to_dict()}")


def check_sampling_block(config) -> None:
  """The ``sampling`` block of pass@k (:func:`kd_jax.config.sampling_config`)."""
  sampling = config.get("sampling")
  if sampling is None:
    raise ConfigError("sampling", "a language-model config needs a sampling block "
                      "(kd_jax.config.sampling_config())")
  if sampling.temperature < 0 or sampling.top_k < 0 or not 0 < sampling.top_p <= 1:
    raise ConfigError("sampling", "sampling.temperature must be >= 0, sampling.top_k >= 0 and "
                      f"sampling.top_p in (0, 1]; got {sampling.to_dict()}")
  checks.ints_at_least("sampling", sampling, ("num_samples",), 1)
  bad = [k for k in sampling.pass_at_k
         if not isinstance(k, int) or not 1 <= k <= sampling.num_samples]
  if bad:
    raise ConfigError("sampling.pass_at_k", f"sampling.pass_at_k values must be ints in [1, "
                      f"sampling.num_samples={sampling.num_samples}], got "
                      f"{list(sampling.pass_at_k)}")

