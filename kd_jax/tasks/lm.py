"""Causal language modelling on (prompt, response) pairs, as a task of the engine.

A split lives on the devices as token rows ``BOS prompt response EOS PAD...``
(:class:`TokenData`). A step's inputs are a row's tokens but the last, its
targets the tokens shifted by one, and its loss mask keeps exactly the response
tokens and the EOS that ends them: the prompt and the padding are masked, the
EOS is a target even when the pad id equals the EOS id (the mask is computed
from lengths, never from token values). Losses are means over every unmasked
token of the global batch (:mod:`kd_jax.losses`), so long responses weigh more
than short ones, token for token.

Evaluation (:meth:`LanguageModeling.evaluator`) streams over the held-out split:

* ``exact_match`` (the headline) — greedy generation with the KV cache
  (:mod:`kd_jax.generate`) from each prompt, checked by the task's answer checker;
* ``nll`` (per token) and ``token_accuracy`` — teacher-forced on the gold responses;
* with a reference (teacher) model, ``kl_to_teacher`` (per token, KL(teacher ‖
  model) at T = 1) and ``agreement`` (argmax agreement on the gold positions).

Logits of the whole split never reach the host, only per-batch sums.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import feeding, parallel, step
from kd_jax import generate as generate_lib


@dataclasses.dataclass(frozen=True)
class TokenData:
  """A split on the devices: ``tokens`` int32 ``[N, L]`` and ``loss_mask`` bool ``[N, L-1]``.

  ``loss_mask[i, j]`` says whether target ``tokens[i, j + 1]`` counts (a response
  token or the final EOS). ``teacher_logits`` ``[N, L-1, V]`` holds cached teacher
  outputs aligned with the targets.
  """
  tokens: jax.Array
  loss_mask: jax.Array
  teacher_logits: jax.Array | None = None
  teacher_features: dict | None = None

  @property
  def size(self) -> int:
    return int(self.tokens.shape[0])


jax.tree_util.register_dataclass(
    TokenData, data_fields=["tokens", "loss_mask", "teacher_logits", "teacher_features"],
    meta_fields=[])


def response_mask(prompt_lengths: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
  """``[N, max_len - 1]``: target j (token j + 1) counts iff prompt_length ≤ j + 1 < length."""
  target = np.arange(1, max_len)[None, :]
  return (target >= prompt_lengths[:, None]) & (target < lengths[:, None])


def token_data(tokens, prompt_lengths, lengths, mesh) -> TokenData:
  """A :class:`TokenData` on the devices (replicated) from ``encode_pairs``-style arrays."""
  mask = response_mask(np.asarray(prompt_lengths), np.asarray(lengths), tokens.shape[1])
  return TokenData(*parallel.put_replicated((np.asarray(tokens, np.int32), mask), mesh))


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModeling:
  """The batch and evaluation side of the task.

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
  headline: ClassVar[str] = "exact_match"

  def train_batch(self, data: TokenData, index, mask, rng):
    del rng
    tokens = data.tokens[index]
    return tokens[:, :-1], tokens[:, 1:], data.loss_mask[index] & mask[:, None]

  def eval_inputs(self, data: TokenData, index):
    return data.tokens[index][:, :-1]

  def train_metrics(self, logits, targets, loss_mask) -> dict:
    correct = (jnp.argmax(logits, -1) == targets) & loss_mask
    return {"token_accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(loss_mask), 1)}

  def evaluator(self, graphdef, data: TokenData, batch_size: int, mesh, *,
                reference: tuple | None = None):
    """``evaluate(variables) -> (metrics, None)``; see the module docstring.

    ``reference``: ``(graphdef, variables)`` of a teacher for ``kl_to_teacher`` and
    ``agreement``.
    """
    sums = _token_sums_fn(graphdef, reference[0] if reference else None, mesh)
    prompt_len = int(self.prompt_lengths.max())

    def evaluate(variables):
      totals = np.zeros(5)
      rows = parallel.process_rows(mesh, batch_size)
      for index, valid in feeding.padded_batches(data.size, batch_size):
        batch = parallel.global_batch({"index": index[rows], "valid": valid[rows]}, mesh,
                                      batch_size)
        out = sums(variables, reference[1] if reference else None, data, batch["index"],
                   batch["valid"])
        totals += np.asarray(jax.device_get(out), np.float64)
      tokens, nll, correct, kl, agree = totals
      metrics = {"exact_match": self._exact_match(graphdef, variables, data, prompt_len),
                 "nll": nll / tokens, "token_accuracy": correct / tokens}
      if reference:
        metrics.update(kl_to_teacher=kl / tokens, agreement=agree / tokens)
      return metrics, None

    return evaluate

  def _exact_match(self, graphdef, variables, data: TokenData, prompt_len: int) -> float:
    module = nnx.merge(graphdef, *variables)
    model = getattr(module, "model", module)          # a methods.Student wraps the model
    model_graphdef, model_state = nnx.split(model)
    prompts = np.asarray(data.tokens[:, :prompt_len])
    generated, _ = generate_lib.generate(model_graphdef, model_state, prompts,
                                         self.prompt_lengths, max_new_tokens=self.max_new_tokens,
                                         eos_id=self.tokenizer.eos_id,
                                         pad_id=self.tokenizer.pad_id)
    hits = [self.check(self.tokenizer.decode(row), answer)
            for row, answer in zip(np.asarray(generated), self.answers)]
    return float(np.mean(hits))


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
