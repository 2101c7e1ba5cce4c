"""A verifiable reasoning task: multi-step arithmetic with step-by-step gold chains.

A problem is a left-to-right chain of additions and subtractions (and, with
``ops="+-*"``, multiplications by a one-digit number) whose intermediate results
never go below 0 (a subtraction that would is drawn as an addition); the gold
solution works it
out one step at a time and ends in a checkable final answer, GSM8K-style::

    prompt:   48+25-13+7=
    response: 48+25=73;73-13=60;60+7=67####67

Everything is text over a small character vocabulary (:class:`CharTokenizer`,
with PAD, BOS and EOS). ``generate_split`` draws problems from a seeded
generator; a problem's split is decided by a hash of its prompt, so the train and
test problem sets are disjoint by construction and stay so for any seed and
size. :func:`check_answer` reads the number after the last ``####`` and never
raises on garbage (a model's output can be anything).

Difficulty knobs (:class:`Difficulty`): the number of operations ``steps``, the
operand ``digits`` and the operators ``ops``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np

ANSWER_MARK = "####"
PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+-*=;#"
SPLITS = ("train", "test")
TEST_FRACTION = 0.1          # of all possible problems, by prompt hash


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """``steps`` operations on ``digits``-digit operands (the first may be 1 digit longer)."""
  steps: int = 3
  digits: int = 2
  ops: str = "+-"

  def __post_init__(self):
    if self.steps < 1 or self.digits < 1:
      raise ValueError(f"steps and digits must be >= 1, got {self.steps} and {self.digits}")
    if not self.ops or set(self.ops) - set("+-*"):
      raise ValueError(f"ops must be a non-empty subset of '+-*', got {self.ops!r}")


@dataclasses.dataclass(frozen=True)
class Problem:
  prompt: str        # "48+25-13+7="
  response: str      # "48+25=73;73-13=60;60+7=67####67"
  answer: int


class CharTokenizer:
  """Characters to ids: 0 = PAD, 1 = BOS, 2 = EOS, then one id per character of ``CHARS``."""

  pad_id, bos_id, eos_id = PAD, BOS, EOS

  def __init__(self, chars: str = CHARS):
    self.chars = chars
    self._ids = {c: i + 3 for i, c in enumerate(chars)}
    self.vocab_size = len(chars) + 3

  def encode(self, text: str) -> list[int]:
    """Ids of ``text``; a character outside the vocabulary raises ValueError naming it."""
    try:
      return [self._ids[c] for c in text]
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} is not in the vocabulary {self.chars!r}") from None

  def decode(self, ids) -> str:
    """Text of ``ids``, stopping at the first EOS; PAD and BOS are dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == EOS:
        break
      if i >= 3 and i - 3 < len(self.chars):
        out.append(self.chars[i - 3])
    return "".join(out)


def _split_of(prompt: str) -> str:
  digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
  return "test" if digest % 1000 < TEST_FRACTION * 1000 else "train"


def _operand(rng: np.random.Generator, digits: int) -> int:
  return int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10 ** digits))


def make_problem(rng: np.random.Generator, difficulty: Difficulty) -> Problem:
  """One random problem and its worked chain (left-to-right evaluation)."""
  value = _operand(rng, difficulty.digits)
  prompt, steps = str(value), []
  for _ in range(difficulty.steps):
    op = difficulty.ops[int(rng.integers(len(difficulty.ops)))]
    operand = int(rng.integers(2, 10)) if op == "*" else _operand(rng, difficulty.digits)
    if op == "-" and operand > value:
      op = "+"           # every intermediate result stays >= 0
    new = value + operand if op == "+" else value - operand if op == "-" else value * operand
    steps.append(f"{value}{op}{operand}={new}")
    prompt += f"{op}{operand}"
    value = new
  return Problem(prompt + "=", ";".join(steps) + f"{ANSWER_MARK}{value}", value)


def generate_split(split: str, size: int, *, seed: int = 0,
                   difficulty: Difficulty = Difficulty()) -> list[Problem]:
  """``size`` distinct problems of ``split``, drawn by a generator seeded with ``seed``.

  Raises:
    ValueError: unknown split, or fewer than ``size`` distinct problems exist at
      this difficulty (the message says how many were found).
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
  rng = np.random.default_rng([seed, SPLITS.index(split)])
  problems, seen, tries = [], set(), 0
  while len(problems) < size:
    tries += 1
    if tries > 50 * size + 1000:
      raise ValueError(f"only {len(problems)} distinct {split} problems found at {difficulty}; "
                       f"asked for {size}: raise steps or digits")
    problem = make_problem(rng, difficulty)
    if problem.prompt in seen or _split_of(problem.prompt) != split:
      continue
    seen.add(problem.prompt)
    problems.append(problem)
  return problems


_ANSWER = re.compile(r"^\s*(-?\d{1,30})\s*$")


def extract_answer(text: str) -> int | None:
  """The integer after the last ``####`` in ``text``, or None (never raises)."""
  if not isinstance(text, str) or ANSWER_MARK not in text:
    return None
  match = _ANSWER.match(text.rsplit(ANSWER_MARK, 1)[1])
  return int(match.group(1)) if match else None


def check_answer(text: str, answer: int) -> bool:
  """Whether ``text`` ends in ``####<answer>`` (exactly that integer)."""
  return extract_answer(text) == answer


def encode_pairs(problems: list[Problem], tokenizer: CharTokenizer, max_len: int):
  """Token arrays for causal-LM training on (prompt, response) pairs.

  Each row is ``BOS prompt response EOS`` right-padded with PAD to ``max_len``.

  Returns:
    ``tokens`` int32 ``[N, max_len]``, ``prompt_lengths`` int32 ``[N]`` (BOS and the
    prompt) and ``lengths`` int32 ``[N]`` (up to and including EOS).

  Raises:
    ValueError: a problem longer than ``max_len``, naming the length needed.
  """
  tokens = np.full((len(problems), max_len), PAD, np.int32)
  prompt_lengths = np.zeros(len(problems), np.int32)
  lengths = np.zeros(len(problems), np.int32)
  for i, p in enumerate(problems):
    prompt = [BOS] + tokenizer.encode(p.prompt)
    row = prompt + tokenizer.encode(p.response) + [EOS]
    if len(row) > max_len:
      raise ValueError(f"a problem needs {len(row)} tokens but max_len is {max_len}: "
                       f"{p.prompt}{p.response}")
    tokens[i, :len(row)] = row
    prompt_lengths[i], lengths[i] = len(prompt), len(row)
  return tokens, prompt_lengths, lengths


def harder(difficulty: Difficulty) -> dict[str, Difficulty]:
  """The out-of-distribution variants of ``difficulty``: one more step, one more digit."""
  return {"steps+1": dataclasses.replace(difficulty, steps=difficulty.steps + 1),
          "digits+1": dataclasses.replace(difficulty, digits=difficulty.digits + 1)}


def row_length(problems: list[Problem]) -> int:
  """Tokens of the longest ``BOS prompt response EOS`` row of ``problems`` (one per character)."""
  return max(len(p.prompt) + len(p.response) for p in problems) + 2
