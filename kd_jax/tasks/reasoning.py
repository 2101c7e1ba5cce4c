"""The reasoning testbed (kd_jax/data/reasoning.py) as a language-modelling task family.

The distillation story of DeepSeek-R1 in miniature: a student whose own data are problems
with final answers only (``answers``), a teacher that learnt to reason from a small set
of step-by-step solutions (``gold``), and a pool of unlabelled prompts (``pool``) that the
teacher answers with verified traces for sequence-level KD (``student_data="transfer"``;
the verifier computes each prompt's answer, DeepSeek-R1's rule-based check). What the
students train on (``student_data``):

* ``"answers"`` — the original data (``sft-answers``);
* ``"gold"`` — the teacher's small set of worked solutions (``sft-gold``);
* ``"transfer"`` — the teacher's verified traces for the pool (``seqkd``).

The baseline (the from-scratch student, and the start of every ``student_init="baseline"``
row) trains on ``dataset.baseline_data``: ``"answers"`` or ``"gold"`` (a base that can
already write worked solutions, as DeepSeek-R1's pretrained base could).

The teacher trains on the gold solutions only, so its cache key ignores the students'
fields (:data:`STUDENT_ONLY_FIELDS`). Every model is evaluated by greedy exact match
on the held-out problems and, with ``dataset.ood_examples`` > 0, on problems with one
operand more than any in training (``ood_exact_match["terms+1"]``).
"""

from __future__ import annotations

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.data import arithmetic as ar
from kd_jax.data import reasoning as rs
from kd_jax.tasks import verified
from kd_jax.tasks.base import Prepared

NAME = "reasoning"
DATASETS = ("reasoning",)
KIND = "reasoning"
LANGUAGE = True
STUDENT_INITS = ("scratch", "baseline", "seqkd")
STUDENT_DATA = ("answers", "gold", "transfer")
# Dataset fields only the students' data depend on: the teacher's cache key leaves them out.
STUDENT_ONLY_FIELDS = ("answers_examples", "pool_examples", "baseline_data")
BASELINE_DATA = ("answers", "gold")


def check(config) -> None:
  """The reasoning task's fields; raises ``ConfigError`` naming the field."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("answers_examples", "gold_examples", "pool_examples",
                                      "test_examples", "digits"), 1)
  checks.ints_at_least("dataset", d, ("terms",), 2)
  checks.ints_at_least("dataset", d, ("seed", "ood_examples"))
  checks.ints_at_least("dataset", d, ("max_len",), 8)
  checks.in_unit_interval("dataset.minus", d.minus)
  checks.choice("dataset.baseline_data", d.get("baseline_data", "answers"), BASELINE_DATA)
  verified.check(config, STUDENT_DATA)


def prepare(config, mesh, dtype) -> Prepared:
  """The testbed's splits as a :func:`kd_jax.tasks.verified.prepare` task.

  Raises:
    ConfigError: ``dataset.max_len`` is too short for a training problem, or what
      :func:`kd_jax.tasks.verified.prepare` raises.
  """
  d = config.dataset
  testbed = rs.Testbed(terms=d.terms, digits=d.digits, minus=d.minus)
  tokenizer = ar.CharTokenizer()
  split = lambda name, size: rs.generate_split(name, size, seed=d.seed, testbed=testbed)
  try:
    gold = verified.Rows.encode(split("gold", d.gold_examples), tokenizer, d.max_len)
    answers = verified.Rows.encode(split("answers", d.answers_examples), tokenizer, d.max_len)
    # The pool's rows hold their prompts and (for the verifier) answers, never a trace.
    pool = verified.Rows.encode(rs.generate_split("pool", d.pool_examples, seed=d.seed,
                                                  testbed=testbed, traces=False),
                                tokenizer, d.max_len)
    test = verified.Rows.encode(split("test", d.test_examples), tokenizer, d.max_len)
  except ValueError as e:
    raise ConfigError("dataset.max_len", f"dataset.max_len: {e}") from None
  ood = {}
  if d.ood_examples:
    problems = split("ood", d.ood_examples)
    ood["terms+1"] = verified.Rows.encode(problems, tokenizer, ar.row_length(problems))
  own = {"answers": answers, "gold": gold}
  return verified.prepare(
      config, mesh, dtype, tokenizer=tokenizer, teacher_train=gold,
      student_train=own.get(config.get("student_data"), answers), test=test,
      ood=ood, prompts=pool, check_answer=ar.check_answer, extract_answer=ar.extract_answer,
      max_len=d.max_len, baseline_train=own[d.get("baseline_data", "answers")])
