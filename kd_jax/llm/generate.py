"""Batched sampling from a :class:`kd_jax.models.gpt.GPT` with a KV cache, jitted.

    graphdef, state = nnx.split(model)
    tokens, lengths = generate(graphdef, state, prompts, prompt_lengths, max_new_tokens=32,
                               rng=jax.random.key(0), temperature=0.7, top_p=0.9, eos_id=2)

``prompts`` ``[B, P]`` int32 are right-padded: entries at or past
``prompt_lengths[i]`` are ignored, so prompts of different lengths share one
batch. The prompt runs once through the model, writing every layer's keys and
values into a cache of ``P + max_new_tokens`` slots; each new token then costs one
position's compute, written at ``prompt_lengths[i] + t`` for row i. Shapes are
fixed, so the whole loop is one XLA program, compiled once per (model, batch,
prompt length, ``max_new_tokens``, sampling settings).

Sampling: ``temperature=0`` is greedy (argmax); otherwise logits / temperature,
restricted to the ``top_k`` most likely tokens (0: all) and to the smallest set
whose probability reaches ``top_p`` (1: all), then drawn with ``rng``. The
sampling temperature is its own setting, never the distillation loss's.

Returns ``(tokens [B, max_new_tokens] int32, lengths [B] int32)``: ``lengths[i]``
counts row i's tokens up to and including its first ``eos_id`` (or all
``max_new_tokens``); the tokens after it are ``pad_id``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax.core import tracing


def filter_logits(logits, *, top_k: int = 0, top_p: float = 1.0):
  """``logits`` ``[B, V]`` with the tokens outside top-k / the top-p nucleus set to -inf.

  The nucleus keeps, in order of decreasing probability, every token whose
  preceding tokens' probabilities sum to less than ``top_p`` (so the most likely
  token is always kept).
  """
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = before < top_p
    keep = jnp.zeros_like(keep_sorted).at[
        jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
    logits = jnp.where(keep, logits, -jnp.inf)
  return logits


def _sample(logits, rng, *, temperature: float, top_k: int, top_p: float):
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _mixture_logits(logits, mix_logits, weight):
  """Log-probabilities of ``weight · softmax(mix_logits) + (1 − weight) · softmax(logits)``."""
  return jnp.logaddexp(jnp.log(weight) + jax.nn.log_softmax(mix_logits.astype(jnp.float32)),
                       jnp.log1p(-weight) + jax.nn.log_softmax(logits.astype(jnp.float32)))


@functools.partial(jax.jit, static_argnames=(
    "graphdef", "max_new_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id",
    "mix_graphdef", "mix_weight"))
@tracing.count_traces
def _generate(graphdef, state, prompts, prompt_lengths, rng, *, max_new_tokens, temperature,
              top_k, top_p, eos_id, pad_id, mix_graphdef=None, mix_state=None, mix_weight=0.0):
  # With a mixing model (MiniLLM's teacher-mixed sampling) both models decode side by
  # side, each with its own cache, and tokens are drawn from the mixture of their
  # distributions.
  models = [nnx.merge(graphdef, state)]
  if mix_graphdef is not None:
    models.append(nnx.merge(mix_graphdef, mix_state))
  batch, prompt_len = prompts.shape
  positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
  caches, lasts = [], []
  for model in models:
    logits, cache = model.decode(prompts, positions,
                                 model.init_cache(batch, prompt_len + max_new_tokens))
    caches.append(cache)
    lasts.append(logits[jnp.arange(batch), prompt_lengths - 1])

  def step(carry, t):
    caches, lasts, done, rng = carry
    rng, key = jax.random.split(rng)
    last = lasts[0] if len(models) == 1 else _mixture_logits(lasts[0], lasts[1], mix_weight)
    token = _sample(last, key, temperature=temperature, top_k=top_k, top_p=top_p)
    token = jnp.where(done, pad_id, token)
    emitted = ~done
    if eos_id is not None:
      done = done | (token == eos_id)
    new_caches, new_lasts = [], []
    for model, cache in zip(models, caches):
      logits, cache = model.decode(token[:, None], (prompt_lengths + t)[:, None], cache)
      new_caches.append(cache)
      new_lasts.append(logits[:, 0])
    return (new_caches, new_lasts, done, rng), (token, emitted)

  done = jnp.zeros((batch,), bool)
  _, (tokens, emitted) = jax.lax.scan(step, (caches, lasts, done, rng),
                                      jnp.arange(max_new_tokens, dtype=jnp.int32))
  return tokens.T, jnp.sum(emitted, axis=0).astype(jnp.int32)


def generate(graphdef, state, prompts, prompt_lengths, *, max_new_tokens: int, rng=None,
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             eos_id: int | None = None, pad_id: int = 0):
  """Samples ``max_new_tokens`` after each prompt; see the module docstring.

  Args:
    graphdef, state: ``nnx.split(model)`` of a GPT.
    prompts: int32 ``[B, P]``, right-padded.
    prompt_lengths: int32 ``[B]``, each in [1, P].
    max_new_tokens: tokens to generate; ``P + max_new_tokens`` ≤ the model's ``max_len``.
    rng: a JAX key; required when ``temperature > 0``.
    temperature: 0 for greedy decoding.
    top_k: keep the k most likely tokens (0: all).
    top_p: nucleus sampling threshold in (0, 1] (1: all).
    eos_id: stops a row after this token (None: never).
    pad_id: fills a row after its EOS.

  Returns:
    ``(tokens [B, max_new_tokens] int32, lengths [B] int32)``.

  Raises:
    ValueError: invalid sampling settings or a too long sequence.
  """
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(...)")
  if top_k < 0 or not 0 < top_p <= 1:
    raise ValueError(f"top_k must be >= 0 and top_p in (0, 1], got {top_k} and {top_p}")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  rng = jax.random.key(0) if rng is None else rng
  return _generate(graphdef, state, jnp.asarray(prompts, jnp.int32),
                   jnp.asarray(prompt_lengths, jnp.int32), rng,
                   max_new_tokens=max_new_tokens, temperature=float(temperature),
                   top_k=int(top_k), top_p=float(top_p), eos_id=eos_id, pad_id=pad_id)


def sample_in_trace(graphdef, state, prompts, prompt_lengths, rng, *, max_new_tokens: int,
                    temperature: float, eos_id: int | None, pad_id: int, top_k: int = 0,
                    top_p: float = 1.0, mix: tuple | None = None):
  """:func:`generate` for callers already inside a jitted function (traced arguments, no
  checks): on-policy distillation samples from the student inside the train step.

  ``mix`` = ``(graphdef, state, α)`` of a second model (the teacher, sharing the
  vocabulary) draws every token from α·p_mix + (1 − α)·p_model instead (MiniLLM's
  teacher-mixed sampling), the temperature and filters applied to the mixture's
  log-probabilities; α in (0, 1)."""
  mixing = {} if mix is None else dict(mix_graphdef=mix[0], mix_state=mix[1],
                                       mix_weight=float(mix[2]))
  return _generate(graphdef, state, prompts, prompt_lengths, rng, max_new_tokens=max_new_tokens,
                   temperature=float(temperature), top_k=top_k, top_p=top_p, eos_id=eos_id,
                   pad_id=pad_id, **mixing)


def compilations() -> int:
  """How many programs :func:`generate` has compiled in this process (one per shape and
  static argument: its traces, :mod:`kd_jax.core.tracing`)."""
  return tracing.traces(_generate)
