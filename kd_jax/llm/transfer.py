"""Teacher-written transfer sets with rejection sampling (the DeepSeek-R1 distillation recipe).

The teacher answers every prompt of a pool ``k`` times at a sampling temperature
(:mod:`kd_jax.generate`); a verifier keeps the correct answers:

* with labels (``label_free=False``) — ``check(text, answer)`` against the
  prompt's known answer (the gold training prompts, or unlabelled prompts from the
  same generator, whose ground truth the generator still knows);
* without labels (``label_free=True``) — majority vote: the answers
  (``extract(text)``) of a prompt's k samples vote, and the samples that give the
  most common answer are kept (none when no sample gives an answer).

The result (:class:`TransferSet`) holds the accepted responses and what the
generation did: the acceptance rate, the number of distinct accepted traces per
prompt and the generation tokens/s.

Generation proceeds in chunks of prompts (one compiled program: the last chunk is
padded), each written to ``directory/<key>/chunk_<i>.npz`` as soon as it is done,
so an interrupted build resumes without regenerating finished chunks. ``<key>``
hashes everything the samples depend on: the caller's ``identity`` (the teacher),
the prompts, ``k``, the sampling settings, the generation budget, the verifier mode
and the seed. A finished set is simply read back.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from kd_jax.llm import generate as generate_lib
from kd_jax.core import files
from kd_jax.core import identity as identity_lib

CHUNK_FILE = "chunk_{:05d}.npz"


@dataclasses.dataclass(frozen=True)
class TransferSet:
  """The accepted samples and the generation's statistics.

  Attributes:
    prompt_index: int32 ``[M]``, the prompt each accepted response answers.
    responses: int32 ``[M, max_new_tokens]``, the generated tokens (pad after EOS).
    lengths: int32 ``[M]``, each response's length up to and including its EOS.
    stats: ``prompts``, ``samples_per_prompt``, ``samples``, ``accepted``,
      ``acceptance_rate``, ``prompts_with_an_accepted_sample``,
      ``distinct_accepted_per_prompt`` (mean over prompts), ``generated_tokens``,
      ``generation_seconds``, ``generation_tokens_per_second``.
  """
  prompt_index: np.ndarray
  responses: np.ndarray
  lengths: np.ndarray
  stats: dict


def transfer_key(identity: dict, prompts: np.ndarray, prompt_lengths: np.ndarray, **settings) -> str:
  """The cache key of a transfer set: the teacher's identity, the prompts and the settings."""
  valid = [row[:n].tolist() for row, n in zip(np.asarray(prompts), np.asarray(prompt_lengths))]
  return identity_lib.digest({"identity": identity, "prompts": valid, **settings})


def build(model, prompts: np.ndarray, prompt_lengths: np.ndarray, *, k: int, sampling,
          max_new_tokens: int, decode: Callable[[np.ndarray], str], eos_id: int, pad_id: int,
          directory: str, identity: dict, answers=None, check: Callable | None = None,
          extract: Callable | None = None, label_free: bool = False, chunk_size: int = 256,
          seed: int = 0) -> TransferSet:
  """Generates (or reads back) the transfer set of ``model`` (the teacher) on ``prompts``.

  Args:
    model: the teacher, a GPT (``nnx.split``-able, with ``decode`` and ``init_cache``).
    prompts: int32 ``[N, P]``, right-padded; ``prompt_lengths`` int32 ``[N]``.
    k: samples per prompt.
    sampling: has ``temperature``, ``top_k``, ``top_p`` (kd_jax.config.sampling_config).
    max_new_tokens: the generation budget per sample.
    decode: token ids → text.
    eos_id, pad_id: the tokenizer's.
    directory: where the cache of transfer sets lives (one subdirectory per key).
    identity: JSON-able description of the teacher (e.g. its cache key and a
      fingerprint of its variables).
    answers, check: the known answers ``[N]`` and ``check(text, answer) -> bool``
      (needed unless ``label_free``).
    extract: ``extract(text) -> answer or None`` (needed when ``label_free``).
    label_free: keep the majority answer's samples instead of the verified ones.
    chunk_size: prompts per generation call (and per resumable chunk).
    seed: the sampling keys' seed.

  Raises:
    ValueError: missing verifier pieces, or ``k`` < 1.
  """
  if label_free and extract is None:
    raise ValueError("label_free=True needs extract(text) -> answer")
  if not label_free and (answers is None or check is None):
    raise ValueError("verifying against labels needs answers and check(text, answer)")
  samples = sample(model, prompts, prompt_lengths, k=k, sampling=sampling,
                   max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=pad_id,
                   directory=directory, identity=identity, chunk_size=chunk_size, seed=seed,
                   verifier={"label_free": label_free,
                             "answers": None if answers is None else [str(a) for a in answers]})
  texts = [[decode(row) for row in sample_rows] for sample_rows in samples.tokens]
  accepted = (_majority(texts, extract) if label_free
              else np.array([[check(t, a) for t, a in zip(sample_rows, answers)]
                             for sample_rows in texts]))
  return _assemble(samples.tokens, samples.lengths, accepted, samples.seconds)


@dataclasses.dataclass(frozen=True)
class Samples:
  """Every sample of a model on a pool of prompts: ``tokens`` int32 ``[k, N, T]`` (pad
  after EOS), ``lengths`` int32 ``[k, N]`` (up to and including the EOS), and the
  generation's wall time in ``seconds``."""
  tokens: np.ndarray
  lengths: np.ndarray
  seconds: float


def sample(model, prompts: np.ndarray, prompt_lengths: np.ndarray, *, k: int, sampling,
           max_new_tokens: int, eos_id: int, pad_id: int, directory: str, identity: dict,
           chunk_size: int = 256, seed: int = 0, verifier: dict | None = None) -> Samples:
  """``k`` samples of ``model`` for every prompt, generated in resumable chunks (or read
  back): the sampling half of :func:`build`, also what preference pairs rank.

  ``verifier`` is recorded in the cache key (samples kept for different verdicts never
  share a directory); the samples themselves do not depend on it.

  Raises:
    ValueError: ``k`` < 1.
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  prompts, prompt_lengths = np.asarray(prompts, np.int32), np.asarray(prompt_lengths, np.int32)
  settings = dict(k=k, temperature=float(sampling.temperature), top_k=int(sampling.top_k),
                  top_p=float(sampling.top_p), max_new_tokens=max_new_tokens, seed=seed,
                  **(verifier or {}))
  key = transfer_key(identity, prompts, prompt_lengths, **settings)
  path = os.path.join(directory, key)
  os.makedirs(path, exist_ok=True)
  graphdef, state = nnx.split(model)
  chunks = []
  for index, start in enumerate(range(0, len(prompts), chunk_size)):
    chunk_path = os.path.join(path, CHUNK_FILE.format(index))
    if not os.path.exists(chunk_path):
      _generate_chunk(chunk_path, graphdef, state, prompts, prompt_lengths, start, chunk_size,
                      k=k, sampling=sampling, max_new_tokens=max_new_tokens, eos_id=eos_id,
                      pad_id=pad_id, key=jax.random.fold_in(jax.random.key(seed), index))
    with np.load(chunk_path) as f:
      chunks.append({name: f[name] for name in f.files})
  with open(os.path.join(path, "settings.json"), "w") as f:
    json.dump({"identity": identity, **settings, "key": key}, f, indent=1, default=str)
  return Samples(np.concatenate([c["tokens"] for c in chunks], axis=1),
                 np.concatenate([c["lengths"] for c in chunks], axis=1),
                 float(sum(float(c["seconds"]) for c in chunks)))


def _generate_chunk(chunk_path, graphdef, state, prompts, prompt_lengths, start, chunk_size, *,
                    k, sampling, max_new_tokens, eos_id, pad_id, key):
  """Generates k samples for one chunk (padded to chunk_size: one compilation) and saves them."""
  rows = np.arange(start, min(start + chunk_size, len(prompts)))
  padded = np.concatenate([rows, np.full(chunk_size - len(rows), rows[0])])
  tokens, lengths = [], []
  began = time.perf_counter()
  for i in range(k):
    out_tokens, out_lengths = jax.device_get(generate_lib.generate(
        graphdef, state, prompts[padded], prompt_lengths[padded], max_new_tokens=max_new_tokens,
        rng=jax.random.fold_in(key, i), temperature=float(sampling.temperature),
        top_k=int(sampling.top_k), top_p=float(sampling.top_p), eos_id=eos_id, pad_id=pad_id))
    tokens.append(out_tokens[:len(rows)])
    lengths.append(out_lengths[:len(rows)])
  seconds = time.perf_counter() - began
  with files.atomic_open(chunk_path, "wb") as f:   # a chunk is either complete or absent
    np.savez(f, tokens=np.stack(tokens), lengths=np.stack(lengths), seconds=seconds)


def _majority(texts: list[list[str]], extract: Callable) -> np.ndarray:
  """``accepted [k, N]``: the samples whose answer is their prompt's most common one."""
  k, n = len(texts), len(texts[0])
  answers = [[extract(texts[i][j]) for i in range(k)] for j in range(n)]
  accepted = np.zeros((k, n), bool)
  for j, given in enumerate(answers):
    votes = collections.Counter(a for a in given if a is not None)
    if votes:
      winner = votes.most_common(1)[0][0]
      accepted[:, j] = [a == winner for a in given]
  return accepted


def _assemble(tokens, lengths, accepted, seconds) -> TransferSet:
  k, n = accepted.shape
  sample, prompt = np.nonzero(accepted)
  distinct = [len({tokens[i, j, :lengths[i, j]].tobytes() for i in range(k) if accepted[i, j]})
              for j in range(n)]
  generated = int(lengths.sum())
  stats = {"prompts": n, "samples_per_prompt": k, "samples": k * n,
           "accepted": int(accepted.sum()), "acceptance_rate": float(accepted.mean()),
           "prompts_with_an_accepted_sample": int(np.sum(np.any(accepted, axis=0))),
           "distinct_accepted_per_prompt": float(np.mean(distinct)),
           "generated_tokens": generated, "generation_seconds": seconds,
           "generation_tokens_per_second": generated / seconds if seconds else None}
  order = np.lexsort((sample, prompt))          # by prompt, then sample
  return TransferSet(prompt.astype(np.int32)[order],
                     tokens[sample, prompt].astype(np.int32)[order],
                     lengths[sample, prompt].astype(np.int32)[order], stats)


def chunk_files(directory: str) -> list[str]:
  """The finished chunk files under a transfer-set cache directory (all keys)."""
  return sorted(glob.glob(os.path.join(directory, "*", "chunk_*.npz")))


def response_rows(responses, response_lengths, prompt_index, prompts, prompt_lengths, max_len):
  """Token rows ``prompt + response`` (``prompts[prompt_index[i]]`` then ``responses[i]``
  cut at ``max_len``), their prompt lengths and lengths (``encode_pairs`` layout)."""
  out = np.zeros((len(prompt_index), max_len), np.int32)
  lengths = np.zeros(len(prompt_index), np.int32)
  for i, (p, response, n) in enumerate(zip(prompt_index, responses, response_lengths)):
    row = np.concatenate([prompts[p, :prompt_lengths[p]], response[:n]])[:max_len]
    out[i, :len(row)], lengths[i] = row, len(row)
  return out, prompt_lengths[prompt_index].astype(np.int32), lengths
