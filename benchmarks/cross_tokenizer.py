r"""The cross-tokenizer distillation terms, forward + backward, at the text table's shapes.

    python benchmarks/cross_tokenizer.py [--quick] [--exact 0.5] [--tag T]

``uld`` (every aligned position, by sequence order) and ``aligned_kd`` (the matched KL at
exact positions, ULD at the other aligned ones), both with ``uld.top_k`` = 256 as in
experiments/text/cross_tokenizer.py, as ``jax.value_and_grad`` of the mean term with respect
to the student's logits, jitted: a batch of 32 rows × 127 positions, an 8,192-token teacher,
a 2,048-token BPE or a byte-level (259) student. The logits are random (the cost does not
depend on them); which positions are aligned is drawn at the fraction the table logged for
each student (``aligned_fraction``: 81% and 30% by bytes, 97% and 76% by order), and
``--exact`` of the aligned positions are exact (the next token the same string on both
sides). ``uld_cached`` is ``uld`` with the teacher's sorted side computed beforehand, as a
run computes it once (``teacher_cache='auto'``). Reports the median seconds of repeats; writes
``benchmarks/results/cross_tokenizer[-T].json``.
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.objectives import cross_tokenizer as ct
from kd_jax.objectives.masked import masked_mean

BATCH, POSITIONS, TEACHER_VOCAB, TOP_K = 32, 127, 8192, 256
# Student vocabulary → the aligned fraction the table logged, by bytes and by order.
STUDENTS = {2048: (0.81, 0.97), 259: (0.30, 0.76)}


def _logits(student_vocab: int, seed: int = 0):
  """Random student and teacher logits and an injective map: three quarters of the
  student's tokens have a teacher twin."""
  rng = np.random.default_rng(seed)
  shape = (BATCH, POSITIONS)
  student = jnp.asarray(rng.normal(size=(*shape, student_vocab)), jnp.float32)
  teacher = jnp.asarray(rng.normal(size=(*shape, TEACHER_VOCAB)), jnp.float32)
  vocab_map = np.full(TEACHER_VOCAB, -1, np.int32)
  shared = rng.permutation(student_vocab)[: student_vocab * 3 // 4]
  vocab_map[rng.choice(TEACHER_VOCAB, len(shared), replace=False)] = shared
  return student, teacher, jnp.asarray(vocab_map)


def _positions(aligned_fraction: float, exact: float, seed: int = 0):
  """Aligned positions at that fraction, and ``exact`` of them exact."""
  rng = np.random.default_rng(seed)
  aligned = rng.random((BATCH, POSITIONS)) < aligned_fraction
  return jnp.asarray(aligned), jnp.asarray(aligned & (rng.random(aligned.shape) < exact))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="3 repeats instead of 7")
  parser.add_argument("--exact", type=float, default=0.5,
                      help="the fraction of aligned positions that are exact")
  parser.add_argument("--tag", default="")
  args = parser.parse_args(argv)
  repeats = 3 if args.quick else 7
  rows, results = [], {}
  for student_vocab, (by_bytes, by_order) in STUDENTS.items():
    s, t, vocab_map = _logits(student_vocab)
    aligned, exact = _positions(by_bytes, args.exact)
    order_aligned, _ = _positions(by_order, args.exact)
    # uld's teacher side as the table's runs read it with teacher_cache='auto': computed
    # once per run (ct.sorted_teacher), so a step pays for the student's side alone.
    sorted_t = ct.sorted_teacher(t, order_aligned, temperature=1.0, width=TOP_K)
    # Every array is an argument (not a constant the compiler would fold for minutes).
    terms = {
        "uld": (lambda x, t, aligned: masked_mean(ct.uld_terms(x, t, top_k=TOP_K), aligned),
                (t, order_aligned)),
        "uld_cached": (lambda x, teacher: masked_mean(ct.uld_terms_from_sorted(x, teacher),
                                                      teacher.aligned), (sorted_t,)),
        "aligned_kd": (lambda x, t, vocab_map, exact, aligned: masked_mean(
            ct.aligned_kd_terms(x, t, vocab_map, exact, top_k=TOP_K, aligned=aligned),
            aligned), (t, vocab_map, exact, aligned)),
    }
    for name, (term, arrays) in terms.items():
      seconds = common.median_seconds(jax.jit(jax.value_and_grad(term)), s, *arrays,
                                      repeats=repeats)
      results[f"{name}/{student_vocab}"] = seconds
      rows.append((f"{name}, {student_vocab}-token student", seconds, "s (forward + backward)"))
  common.print_table(f"Cross-tokenizer terms, {BATCH}×{POSITIONS} positions, "
                     f"{TEACHER_VOCAB}-token teacher, top {TOP_K}", rows)
  path = common.write_results("cross_tokenizer", {
      "seconds": results, "exact_fraction_of_aligned": args.exact,
      "shape": {"batch": BATCH, "positions": POSITIONS, "teacher_vocab": TEACHER_VOCAB,
                "top_k": TOP_K}}, args.tag)
  print(f"\nwrote {path}")
  return results


if __name__ == "__main__":
  main()
