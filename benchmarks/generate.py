r"""Tokens per second of kd_jax.generate: with the KV cache, without it, and Hugging Face's.

    python benchmarks/generate.py [--quick] [--tag T]

The models are the arithmetic experiment's teacher and student
(experiments/arithmetic/token_kd.py: GPTs of 0.8M and 0.1M parameters, a
19-token character vocabulary), with random weights: decoding speed does not
depend on the weights. Prompts of 12 tokens, 32 new tokens, greedy, at batch 1
and 64. Three decoders, each timed as the median of repeats after a warm-up:

* ``kd_jax`` — :func:`kd_jax.generate.generate`: one jitted program, a KV cache;
* ``no cache`` — the same model recomputing its full forward pass for every new
  token (one jitted forward per length), the naive decoder;
* ``transformers`` — Hugging Face ``GPT2LMHeadModel.generate`` (greedy, KV cache,
  PyTorch on the same CPU) for a GPT-2 of the same width, depth, heads and
  vocabulary, random weights; needs ``pip install -r benchmarks/requirements.txt``
  and ``transformers`` (benchmark-only dependencies), and is skipped without them.

Target (issue 11): kd_jax ≥ 2× the transformers tokens/s at batch 64.
Writes ``benchmarks/results/generate[-T].json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import common  # noqa: F401  (puts the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kd_jax import models
from kd_jax.config import cli
from kd_jax.llm import generate as generate_lib

PROMPT_LEN, NEW_TOKENS, VOCAB = 12, 32, 19


def _median_seconds(run, repeats: int) -> float:
  run()                                  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _model(kwargs: dict) -> nnx.Module:
  return models.create("gpt", rngs=nnx.Rngs(0), vocab_size=VOCAB,
                       max_len=PROMPT_LEN + NEW_TOKENS, **kwargs)


def kd_jax_decoders(model, prompts):
  graphdef, state = nnx.split(model)
  lengths = np.full(len(prompts), PROMPT_LEN, np.int32)

  def cached():
    return jax.block_until_ready(generate_lib.generate(graphdef, state, prompts, lengths,
                                                       max_new_tokens=NEW_TOKENS))

  forward = jax.jit(lambda state, tokens: nnx.merge(graphdef, state)(tokens)[:, -1])

  def uncached():
    tokens = jnp.asarray(prompts)
    for _ in range(NEW_TOKENS):
      next_token = jnp.argmax(forward(state, tokens), -1).astype(jnp.int32)
      tokens = jnp.concatenate([tokens, next_token[:, None]], axis=1)
    return jax.block_until_ready(tokens)

  return cached, uncached


def transformers_decoder(kwargs: dict, prompts):
  """Hugging Face's greedy generate for a GPT-2 of the same shape, or None when unavailable."""
  if not all(importlib.util.find_spec(m) for m in ("torch", "transformers")):
    return None
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=PROMPT_LEN + NEW_TOKENS,
                                   n_embd=kwargs["dim"], n_layer=kwargs["num_layers"],
                                   n_head=kwargs["num_heads"], bos_token_id=1, eos_token_id=2)
  model = transformers.GPT2LMHeadModel(config).eval()
  inputs = torch.as_tensor(np.asarray(prompts), dtype=torch.long)

  def run():
    with torch.inference_mode():
      # min_new_tokens keeps it from stopping at a random EOS: every decoder makes 32 tokens.
      return model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                            max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=0)

  return run


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats")
  parser.add_argument("--tag", default="")
  args = parser.parse_args(argv)
  repeats = 3 if args.quick else 7
  config = cli.load_config_file(f"{common.ROOT}/experiments/arithmetic/token_kd.py")
  results, rows = {}, []
  for role in ("teacher", "student"):
    kwargs = config[role].kwargs.to_dict()
    model = _model(kwargs)
    for batch in (1, 64):
      prompts = np.random.default_rng(batch).integers(3, VOCAB, (batch, PROMPT_LEN)).astype(np.int32)
      cached, uncached = kd_jax_decoders(model, prompts)
      decoders = {"kd_jax": cached, "no cache": uncached}
      hf = transformers_decoder(kwargs, prompts)
      if hf is not None:
        decoders["transformers"] = hf
      speeds = {name: batch * NEW_TOKENS / _median_seconds(run, repeats)
                for name, run in decoders.items()}
      results[f"{role}_batch{batch}"] = {"params": model.num_params(), "tokens_per_second": speeds}
      for name, speed in speeds.items():
        rows.append((f"{role} ({model.num_params():,} params), batch {batch}: {name}", speed))
      if "transformers" in speeds:
        ratio = speeds["kd_jax"] / speeds["transformers"]
        results[f"{role}_batch{batch}"]["kd_jax_over_transformers"] = ratio
        rows.append(("  kd_jax / transformers", ratio,
                     common.target(ratio, 2.0, at_most=False) if batch == 64 else ""))
  common.print_table(f"generate, tokens/s ({common.device_description()}, greedy, "
                     f"{PROMPT_LEN}-token prompts, {NEW_TOKENS} new tokens)", rows)
  print("wrote", common.write_results("generate", results, args.tag))
  return results


if __name__ == "__main__":
  main()
