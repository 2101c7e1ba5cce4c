"""The reasoning testbed's problems: signed sums that can be worked out in many valid orders.

A problem is a sum of ``terms`` signed operands, shown in a random order; its answer is
the total (never negative)::

    prompt:     37+48-15+26=
    answer:     ####96                                  (an "answers" row: no reasoning)
    a trace:    48+26=74;74-15=59;59+37=96####96        (one of several valid orders)

A *trace* folds the operands into a running total one step at a time, in any order
whose running totals stay >= 0 (the first operand taken must be a positive one).
Problems with several such orders give a teacher that samples k traces per prompt
something to vary; :func:`valid_orders` lists them all and :func:`check_trace` checks
any text against the prompt (each step a true equation continuing the last one, every
operand used once with its sign, the final number the answer). Neither raises on
garbage: a model's output can be anything.

The splits of DESIGN's distillation story (:data:`SPLITS`):

* ``answers`` — the student's own *original data*: problems with final answers only;
* ``gold`` — a small set of step-by-step solutions, from which the teacher learns to
  reason (one random valid order each);
* ``pool`` — unlabelled prompts for the teacher to write traces for (the seed
  knowledge of the distillation survey);
* ``test`` — held-out problems, and ``ood``: problems with one operand more than any
  in training.

A problem's split is fixed by a hash of its prompt (disjoint bucket ranges), so the
splits are disjoint by construction, whatever their sizes and seeds, and a split's
problems do not change when another split's size does. Everything is text over
:class:`kd_jax.data.arithmetic.CharTokenizer`'s vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import re

import numpy as np

from kd_jax.data.arithmetic import ANSWER_MARK, extract_answer

# The splits of the same distribution and the share of all prompts each is drawn from
# (hash buckets out of 1000); "ood" has one more operand, so no prompt of it is in another.
BUCKETS = {"test": (0, 100), "gold": (100, 200), "answers": (200, 400), "pool": (400, 1000)}
SPLITS = (*BUCKETS, "ood")


@dataclasses.dataclass(frozen=True)
class Testbed:
  """``terms`` signed operands of ``digits`` digits; each after the first is subtracted
  with probability ``minus`` (when the total stays >= 0)."""
  terms: int = 4
  digits: int = 2
  minus: float = 0.4

  def __post_init__(self):
    if self.terms < 2 or self.digits < 1:
      raise ValueError(f"terms must be >= 2 and digits >= 1, got {self.terms} and "
                       f"{self.digits}")
    if not 0 <= self.minus <= 1:
      raise ValueError(f"minus must be in [0, 1], got {self.minus}")


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str                   # "37+48-15+26="
  terms: tuple[int, ...]        # signed operands in prompt order: (37, 48, -15, 26)
  answer: int
  response: str                 # "####96" for an answers row, else a trace


def _bucket(prompt: str) -> int:
  return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 1000


def split_of(prompt: str) -> str:
  """The same-distribution split a prompt belongs to (by its hash)."""
  bucket = _bucket(prompt)
  return next(name for name, (lo, hi) in BUCKETS.items() if lo <= bucket < hi)


def _prompt(terms) -> str:
  text = str(terms[0])
  for t in terms[1:]:
    text += f"{'-' if t < 0 else '+'}{abs(t)}"
  return text + "="


def draw_terms(rng: np.random.Generator, testbed: Testbed) -> tuple[int, ...]:
  """Signed operands whose prompt-order running total stays >= 0 (so an order exists)."""
  low = 10 ** (testbed.digits - 1) if testbed.digits > 1 else 1
  values = rng.integers(low, 10 ** testbed.digits, testbed.terms)
  terms, total = [int(values[0])], int(values[0])
  for v in map(int, values[1:]):
    negative = rng.random() < testbed.minus and total - v >= 0
    terms.append(-v if negative else v)
    total += terms[-1]
  return tuple(terms)


def valid_orders(terms) -> list[tuple[int, ...]]:
  """Every order of the operand positions whose running totals stay >= 0 (first positive)."""
  orders = []
  for order in itertools.permutations(range(len(terms))):
    total, ok = 0, terms[order[0]] > 0
    for i in order:
      total += terms[i]
      ok = ok and total >= 0
    if ok:
      orders.append(order)
  return orders


def trace(terms, order) -> str:
  """The worked solution that takes the operands in ``order`` (positions into ``terms``)."""
  total, steps = terms[order[0]], []
  for i in order[1:]:
    new = total + terms[i]
    steps.append(f"{total}{'-' if terms[i] < 0 else '+'}{abs(terms[i])}={new}")
    total = new
  return ";".join(steps) + f"{ANSWER_MARK}{total}"


def generate_split(split: str, size: int, *, seed: int = 0, testbed: Testbed = Testbed(),
                   traces: bool | None = None) -> list[Problem]:
  """``size`` distinct problems of ``split``, drawn by a generator seeded with ``seed``.

  ``traces`` (default: only for ``gold``, ``test`` and ``ood``) gives each problem a
  random valid trace as its response; otherwise the response is the answer alone.

  Raises:
    ValueError: unknown split or bad size.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
  if size < 0:
    raise ValueError(f"size must be >= 0, got {size}")
  if traces is None:
    traces = split in ("gold", "test", "ood")
  if split == "ood":
    testbed = dataclasses.replace(testbed, terms=testbed.terms + 1)
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  problems, seen, tries = [], set(), 0
  while len(problems) < size:
    tries += 1
    if tries > 100 * size + 1000:
      raise ValueError(f"only {len(problems)} distinct {split} problems at {testbed}; asked "
                       f"for {size}: raise terms or digits")
    terms = draw_terms(rng, testbed)
    prompt = _prompt(terms)
    if prompt in seen or (split != "ood" and split_of(prompt) != split):
      continue
    seen.add(prompt)
    answer = sum(terms)
    if traces:
      orders = valid_orders(terms)
      response = trace(terms, orders[int(rng.integers(len(orders)))])
    else:
      response = f"{ANSWER_MARK}{answer}"
    problems.append(Problem(prompt, terms, answer, response))
  return problems


_NUMBER = r"(0|[1-9]\d{0,29})"        # no leading zeros: one way to write each number
_STEP = re.compile(rf"^{_NUMBER}([+-]){_NUMBER}={_NUMBER}$")
_TERM = re.compile(r"([+-]?)(\d+)")


def parse_prompt(prompt: str) -> tuple[int, ...] | None:
  """The signed operands of a prompt (``"37+48-15+26="``), or None for anything else."""
  if not isinstance(prompt, str) or not re.fullmatch(r"\d+([+-]\d+)+=", prompt):
    return None
  return tuple(-int(n) if sign == "-" else int(n) for sign, n in _TERM.findall(prompt[:-1]))


def check_trace(prompt: str, response: str) -> bool:
  """Whether ``response`` is a valid worked solution of ``prompt`` with the right answer.

  Each step ``a±b=c`` must be true, start from the previous step's result (the first
  from an unused positive operand), use an unused operand with its sign, and keep the
  total >= 0; every operand is used once; the number after ``####`` is the total.
  Never raises.
  """
  terms = parse_prompt(prompt)
  if terms is None or not isinstance(response, str) or ANSWER_MARK not in response:
    return False
  body, _, _ = response.rpartition(ANSWER_MARK)
  unused = list(terms)
  total = None
  for step in body.split(";"):
    match = _STEP.match(step)
    if not match:
      return False
    left, sign, right, result = match.groups()
    left, right, result = int(left), int(right), int(result)
    if total is None:
      if left not in unused:
        return False
      unused.remove(left)
    elif left != total:
      return False
    operand = -right if sign == "-" else right
    if operand not in unused or left + operand != result or result < 0:
      return False
    unused.remove(operand)
    total = result
  return not unused and extract_answer(response) == total == sum(terms)


def answer_only(problem: Problem) -> Problem:
  """The problem as an answers row: the same prompt, the answer with no reasoning."""
  return dataclasses.replace(problem, response=f"{ANSWER_MARK}{problem.answer}")
