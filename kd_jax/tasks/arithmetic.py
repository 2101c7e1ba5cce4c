"""The arithmetic reasoning experiment (kd_jax/data/arithmetic.py) as a language-modelling task.

:func:`prepare` wires the generated problems into :class:`kd_jax.tasks.lm.LanguageModeling`:
the gold training chains, the held-out split for evaluation, the teacher-written
transfer set for sequence-level KD (``student_data="transfer"``), the student's
own samples for on-policy distillation (``method="gkd"``) and, with
``dataset.ood_examples`` > 0, two out-of-distribution test splits (one more step,
one more digit: :func:`kd_jax.data.arithmetic.harder`) on which every model's
final report gives ``ood_exact_match``, the test of whether a student learnt the
procedure or the training distribution.
"""

from __future__ import annotations

from kd_jax.config import checks
from kd_jax.core.errors import ConfigError
from kd_jax.data import arithmetic as ar
from kd_jax.tasks import verified
from kd_jax.tasks.base import Prepared
# Their home is kd_jax.tasks.verified; kept here for the import paths that name them.
from kd_jax.tasks.verified import answers_correct, transfer_rows  # noqa: F401

NAME = "arithmetic"
DATASETS = ("arithmetic",)
KIND = "reasoning"
LANGUAGE = True
STUDENT_INITS = ("scratch", "baseline", "seqkd")
# What a student trains on: the gold responses, or the teacher's verified answers to the
# gold prompts (sequence-level KD, kd_jax/llm/transfer.py).
STUDENT_DATA = ("gold", "transfer")


def check(config) -> None:
  """The arithmetic task's fields (dataset block, models, student_data, transfer and
  sampling blocks); raises ``ConfigError`` naming the field."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples", "steps", "digits"), 1)
  checks.ints_at_least("dataset", d, ("seed",))
  if "ood_examples" in d:
    checks.ints_at_least("dataset", d, ("ood_examples",))
  checks.ints_at_least("dataset", d, ("max_len",), 8)
  if not d.ops or set(d.ops) - set("+-*"):
    raise ConfigError("dataset.ops", f"dataset.ops must be a non-empty subset of '+-*', "
                      f"got {d.ops!r}")
  verified.check(config, STUDENT_DATA)


def _ood(d, difficulty, tokenizer) -> dict[str, verified.Rows]:
  """``{"steps+1": rows, "digits+1": rows}`` of ``dataset.ood_examples`` problems each."""
  if not d.get("ood_examples", 0):
    return {}
  splits = {}
  for name, harder in ar.harder(difficulty).items():
    problems = ar.generate_split("test", d.ood_examples, seed=d.seed, difficulty=harder)
    splits[name] = verified.Rows.encode(problems, tokenizer, ar.row_length(problems))
  return splits


def prepare(config, mesh, dtype) -> Prepared:
  """The arithmetic experiment's data, task and reports (:func:`kd_jax.tasks.verified.prepare`):
  teacher and students train on the gold chains, and the transfer set answers their prompts.

  Raises:
    ConfigError: ``dataset.max_len`` is too short for a problem, or what
      :func:`kd_jax.tasks.verified.prepare` raises.
  """
  d = config.dataset
  difficulty = ar.Difficulty(steps=d.steps, digits=d.digits, ops=d.ops)
  tokenizer = ar.CharTokenizer()
  train_problems = ar.generate_split("train", d.train_examples, seed=d.seed,
                                     difficulty=difficulty)
  test_problems = ar.generate_split("test", d.test_examples, seed=d.seed, difficulty=difficulty)
  try:
    train = verified.Rows.encode(train_problems, tokenizer, d.max_len)
    test = verified.Rows.encode(test_problems, tokenizer, d.max_len)
  except ValueError as e:
    raise ConfigError("dataset.max_len", f"dataset.max_len: {e}") from None
  return verified.prepare(config, mesh, dtype, tokenizer=tokenizer, teacher_train=train,
                          student_train=train, test=test, ood=_ood(d, difficulty, tokenizer),
                          prompts=train, check_answer=ar.check_answer,
                          extract_answer=ar.extract_answer, max_len=d.max_len)
