r"""Transfer-set generation against the bare decoder: what kd_jax.llm.transfer adds to sampling.

    python benchmarks/transfer_set.py [--quick] [--tag T]

The reasoning testbed's teacher (experiments/reasoning/sft.py: a 4-layer, 128-wide GPT,
random weights: decoding speed does not depend on them) answers the first N pool prompts
k = 4 times at temperature 0.7, 43 new tokens each (the task's generation budget):

* ``bare decoder`` — :func:`kd_jax.llm.generate.generate` on the same chunks of 256
  prompts, k calls per chunk, results fetched to the host, nothing else;
* ``transfer set`` — :func:`kd_jax.llm.transfer.build` end to end into an empty cache
  directory: the same generation, each chunk saved (resumable), the texts decoded and
  every sample checked by the verifier, the accepted samples assembled.

Both are timed after a warm-up that compiles each at the chunk's shape, alternately, three
times (the fastest of each counts); tokens are generated positions
(N·k·43, EOS or not: the shapes are fixed). Target (issue 23): transfer set ≥ 0.9× the
bare decoder's tokens/s. Writes ``benchmarks/results/transfer_set[-T].json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401  (puts the repository on sys.path)
import jax
import numpy as np
from flax import nnx

from kd_jax import config as config_lib
from kd_jax import models
from kd_jax.config import cli
from kd_jax.data import arithmetic as ar
from kd_jax.data import reasoning as rs
from kd_jax.llm import generate as generate_lib
from kd_jax.llm import transfer

K, NEW_TOKENS, CHUNK, REPEATS = 4, 43, 256, 3


def _prompts(count: int):
  """The first ``count`` pool prompts as BOS + prompt rows ``[N, P]`` and their lengths."""
  tokenizer = ar.CharTokenizer()
  problems = rs.generate_split("pool", count, seed=0, testbed=rs.Testbed(), traces=False)
  encoded = [[tokenizer.bos_id, *tokenizer.encode(p.prompt)] for p in problems]
  width = max(map(len, encoded))
  rows = np.array([row + [tokenizer.pad_id] * (width - len(row)) for row in encoded], np.int32)
  return rows, np.array([len(row) for row in encoded], np.int32), problems, tokenizer


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="1,024 prompts instead of 4,096")
  parser.add_argument("--tag", default="")
  args = parser.parse_args(argv)
  count = 1024 if args.quick else 4096
  config = cli.load_config_file(f"{common.ROOT}/experiments/reasoning/sft.py")
  prompts, lengths, problems, tokenizer = _prompts(count)
  model = models.create("gpt", rngs=nnx.Rngs(0), vocab_size=tokenizer.vocab_size,
                        max_len=prompts.shape[1] + NEW_TOKENS, **config.teacher.kwargs.to_dict())
  graphdef, state = nnx.split(model)
  sampling = config_lib.transfer_config(k=K, temperature=0.7).sampling

  def bare(n=count):
    for start in range(0, n, CHUNK):
      for i in range(K):
        jax.device_get(generate_lib.generate(
            graphdef, state, prompts[start:start + CHUNK], lengths[start:start + CHUNK],
            max_new_tokens=NEW_TOKENS, rng=jax.random.fold_in(jax.random.key(0), i),
            temperature=float(sampling.temperature), top_k=int(sampling.top_k),
            top_p=float(sampling.top_p), eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id))

  def transfer_set(directory, n=count):
    return transfer.build(model, prompts[:n], lengths[:n], k=K, sampling=sampling,
                          max_new_tokens=NEW_TOKENS, decode=tokenizer.decode,
                          eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, directory=directory,
                          identity={"benchmark": "random teacher"},
                          answers=[p.answer for p in problems[:n]], check=ar.check_answer,
                          chunk_size=CHUNK)

  # Both compile at the chunk's shape before any timing, then alternate REPEATS times (the
  # fastest of each counts): neither pays a compilation or the other's cache warm-up.
  bare(CHUNK)
  with tempfile.TemporaryDirectory() as warm:
    transfer_set(warm, CHUNK)
  bare_seconds = transfer_seconds = float("inf")
  for _ in range(REPEATS):
    began = time.perf_counter()
    bare()
    bare_seconds = min(bare_seconds, time.perf_counter() - began)
    with tempfile.TemporaryDirectory() as directory:
      began = time.perf_counter()
      written = transfer_set(directory)
      transfer_seconds = min(transfer_seconds, time.perf_counter() - began)
  tokens = count * K * NEW_TOKENS
  speeds = {"bare decoder": tokens / bare_seconds, "transfer set": tokens / transfer_seconds}
  ratio = speeds["transfer set"] / speeds["bare decoder"]
  results = {"prompts": count, "k": K, "new_tokens": NEW_TOKENS, "chunk": CHUNK,
             "params": model.num_params(), "tokens_per_second": speeds,
             "transfer_over_bare": ratio, "accepted": written.stats["accepted"]}
  common.print_table(f"transfer-set generation, tokens/s ({common.device_description()}, "
                     f"{count} prompts × k = {K}, {NEW_TOKENS} new tokens, temperature 0.7)",
                     [*speeds.items(), ("  transfer set / bare decoder", ratio,
                                        common.target(ratio, 0.9, at_most=False))])
  print("wrote", common.write_results("transfer_set", results, args.tag))
  return results


if __name__ == "__main__":
  main()
