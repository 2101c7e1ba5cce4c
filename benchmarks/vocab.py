r"""Large-vocabulary KD: the fused-linear loss against the naive one, forward + backward.

    python benchmarks/vocab.py [--quick] [--chunk_size 1024] [--liger]

``losses.fused_linear_kd_loss`` (chunks of ``--chunk_size`` rows, gradients made in
the forward pass) against ``losses.kd_loss(h_s @ W_s, h_t @ W_t, ...)`` (the naive
loss, which holds the [tokens, vocab] logits), both as ``jax.value_and_grad`` with
respect to the student's hidden states and head, jitted. For each (tokens, vocab):

* memory: the compiled function's temporaries (``memory_analysis()``, no run
  needed, so every size is reported) and, on a GPU, ``peak_bytes_in_use`` after
  running it;
* time: median of repeats, when the naive loss's temporaries fit in the host's
  memory budget (``--max_naive_gib``; the fused loss is always timed).

Sizes: tokens 1k–16k × vocab 32k and 128k, hidden sizes 64 (student) and 128
(teacher) on CPU. Targets (DESIGN §5.4 / issue 13), on CPU: at 8k tokens × 32k vocab
the fused loss's memory ≤ 0.2× the naive loss's and its time ≤ 1.2×.
``--liger`` times the Liger-Kernel shape instead (tokens 8192, H_s 2048, H_t 4096,
V 128256, bf16; meant for a GPU: targets ≤ 35 ms and ≤ 3 GiB).
Writes ``benchmarks/results/vocab[-<tag>].json``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

import common

from kd_jax import losses


def _functions(chunk_size: int):
  fused = lambda hs, ws, ht, wt, y: losses.fused_linear_kd_loss(hs, ws, ht, wt, y,
                                                               chunk_size=chunk_size)
  naive = lambda hs, ws, ht, wt, y: losses.kd_loss(hs @ ws, ht @ wt, y)
  return {name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
          for name, fn in (("fused", fused), ("naive", naive))}


def _arguments(tokens, vocab, h_s, h_t, dtype, abstract=False):
  shapes = [(tokens, h_s), (h_s, vocab), (tokens, h_t), (h_t, vocab)]
  if abstract:
    return [jax.ShapeDtypeStruct(s, dtype) for s in shapes] + [
        jax.ShapeDtypeStruct((tokens,), jnp.int32)]
  keys = jax.random.split(jax.random.key(0), 5)
  arrays = [jax.random.normal(k, s, dtype) * (1.0 if i % 2 == 0 else 0.05)
            for i, (k, s) in enumerate(zip(keys, shapes))]
  return arrays + [jax.random.randint(keys[4], (tokens,), 0, vocab)]


def _peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def measure(tokens, vocab, h_s, h_t, dtype, chunk_size, repeats, max_naive_bytes) -> dict:
  functions = _functions(chunk_size)
  abstract = _arguments(tokens, vocab, h_s, h_t, dtype, abstract=True)
  row = {"tokens": tokens, "vocab": vocab, "hidden": [h_s, h_t], "chunk_size": chunk_size}
  for name, fn in functions.items():
    row[f"{name}_temp_bytes"] = fn.lower(*abstract).compile().memory_analysis().temp_size_in_bytes
  row["memory_ratio"] = row["fused_temp_bytes"] / row["naive_temp_bytes"]
  args = _arguments(tokens, vocab, h_s, h_t, dtype)
  for name, fn in functions.items():
    if name == "naive" and row["naive_temp_bytes"] > max_naive_bytes:
      row["naive_seconds"] = None            # would not fit: memory reported, not timed
      continue
    row[f"{name}_seconds"] = common.median_seconds(fn, *args, repeats=repeats)
    row[f"{name}_peak_bytes"] = _peak_bytes()
  row["time_ratio"] = (row["fused_seconds"] / row["naive_seconds"]
                       if row.get("naive_seconds") else None)
  return row


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="a few small sizes, fewer repeats")
  parser.add_argument("--chunk_size", type=int, default=1024)
  parser.add_argument("--liger", action="store_true", help="the Liger-Kernel shape only")
  parser.add_argument("--max_naive_gib", type=float, default=12.0,
                      help="time the naive loss only when its temporaries fit in this")
  parser.add_argument("--tag", default="")
  args = parser.parse_args(argv)
  repeats = 2 if args.quick else 3
  if args.liger:
    sizes, (h_s, h_t), dtype = [(8192, 128256)], (2048, 4096), jnp.bfloat16
  else:
    tokens = (1024, 4096) if args.quick else (1024, 4096, 8192, 16384)
    sizes = [(n, v) for v in (32768, 131072) for n in tokens]
    (h_s, h_t), dtype = (64, 128), jnp.float32
  rows = [measure(n, v, h_s, h_t, dtype, args.chunk_size, repeats,
                  args.max_naive_gib * 2**30) for n, v in sizes]
  title = (f"fused-linear vs naive KD loss, forward + backward ({common.device_description()}, "
           f"H_s {h_s}, H_t {h_t}, {jnp.dtype(dtype).name}, chunk {args.chunk_size})")
  table = []
  for r in rows:
    label = f"{r['tokens']} tokens × {r['vocab']} vocab"
    target_row = (r["tokens"], r["vocab"]) == (8192, 32768)
    table.append((f"{label}: memory fused/naive", r["memory_ratio"],
                  common.target(r["memory_ratio"], 0.2) if target_row else
                  f"{r['fused_temp_bytes'] / 2**20:.0f} / {r['naive_temp_bytes'] / 2**20:.0f} MiB"))
    table.append((f"{label}: time fused/naive",
                  r["time_ratio"] if r["time_ratio"] is not None else "naive not run",
                  common.target(r["time_ratio"], 1.2) if target_row else
                  f"{r['fused_seconds'] * 1e3:.0f} ms fused"))
  common.print_table(title, table)
  results = {"rows": rows, "dtype": jnp.dtype(dtype).name, "repeats": repeats}
  print("wrote", common.write_results("vocab", results, args.tag or ("liger" if args.liger else "")))
  return results


if __name__ == "__main__":
  main()
