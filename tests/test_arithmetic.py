"""The arithmetic reasoning task: gold chains, disjoint splits, tokenizer, answer checker."""

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from kd_jax.data import arithmetic as ar


def _evaluate_left_to_right(expression: str) -> int:
  """Independent evaluator: numbers and + - * applied left to right."""
  import re
  parts = re.findall(r"\d+|[+\-*]", expression)
  value = int(parts[0])
  for op, operand in zip(parts[1::2], parts[2::2]):
    value = {"+": value + int(operand), "-": value - int(operand),
             "*": value * int(operand)}[op]
  return value


@pytest.mark.parametrize("difficulty", [ar.Difficulty(), ar.Difficulty(steps=5, digits=3),
                                        ar.Difficulty(steps=4, digits=1, ops="+-*")])
def test_gold_chains_are_correct_step_by_step(difficulty):
  for p in ar.generate_split("train", 200, seed=3, difficulty=difficulty):
    assert p.prompt.endswith("=")
    expression = p.prompt[:-1]
    assert p.answer == _evaluate_left_to_right(expression)
    chain, answer = p.response.split(ar.ANSWER_MARK)
    assert int(answer) == p.answer
    steps = chain.split(";")
    assert len(steps) == difficulty.steps
    running = None
    for step in steps:
      lhs, rhs = step.split("=")
      if running is not None:
        assert lhs.startswith(str(running))      # each step starts from the last result
      assert _evaluate_left_to_right(lhs) == int(rhs)
      running = int(rhs)
    assert running == p.answer
    assert ar.check_answer(p.response, p.answer)
    assert "--" not in p.response and "=-" not in p.response      # no negative results


def test_splits_are_disjoint_deterministic_and_distinct():
  train = ar.generate_split("train", 3000, seed=0)
  test = ar.generate_split("test", 300, seed=0)
  prompts = lambda ps: [p.prompt for p in ps]
  assert not set(prompts(train)) & set(prompts(test))
  assert len(set(prompts(train))) == 3000 and len(set(prompts(test))) == 300
  assert prompts(ar.generate_split("train", 3000, seed=0)) == prompts(train)
  assert prompts(ar.generate_split("train", 100, seed=1)) != prompts(train[:100])
  # Another seed draws other problems, still never one of the test split.
  other = ar.generate_split("train", 3000, seed=7)
  assert not set(prompts(other)) & set(prompts(test))


def test_too_many_problems_for_the_difficulty_is_a_clear_error():
  with pytest.raises(ValueError, match="distinct train problems"):
    ar.generate_split("train", 500, difficulty=ar.Difficulty(steps=1, digits=1, ops="+"))
  with pytest.raises(ValueError, match="valid: train, test"):
    ar.generate_split("dev", 5)


@pytest.mark.parametrize("text, answer", [
    ("1+2=3####3", 3), ("####-12", -12), ("x####5 ", 5), ("####1####2", 2),
    ("no mark", None), ("####", None), ("####1.5", None), ("####--1", None), ("####12a", None),
    ("", None), ("#### 7", 7), ("####" + "9" * 40, None),
])
def test_extract_answer(text, answer):
  assert ar.extract_answer(text) == answer


@hypothesis.given(st.text())
def test_the_checker_never_raises(text):
  assert ar.check_answer(text, 3) in (True, False)
  assert ar.extract_answer(text) is None or isinstance(ar.extract_answer(text), int)


def test_tokenizer_round_trip_and_special_ids():
  tok = ar.CharTokenizer()
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 19)
  text = "48+25=73;73-13=60####60"
  ids = tok.encode(text)
  assert min(ids) >= 3 and tok.decode(ids) == text
  assert tok.decode([1] + ids + [2, 5, 6]) == text          # BOS dropped, stops at EOS
  with pytest.raises(ValueError, match="'x' is not in the vocabulary"):
    tok.encode("1x2")


def test_encode_pairs_layout():
  tok = ar.CharTokenizer()
  problems = [ar.Problem("1+2=", "1+2=3####3", 3), ar.Problem("10-4=", "10-4=6####6", 6)]
  tokens, prompt_lengths, lengths = ar.encode_pairs(problems, tok, max_len=20)
  assert prompt_lengths.tolist() == [5, 6] and lengths.tolist() == [16, 18]
  assert tokens[0, 0] == ar.BOS and tokens[0, 15] == ar.EOS and np.all(tokens[0, 16:] == ar.PAD)
  assert tok.decode(tokens[1, 1:prompt_lengths[1]]) == "10-4="
  assert tok.decode(tokens[1, prompt_lengths[1]:]) == "10-4=6####6"
  with pytest.raises(ValueError, match="needs 18 tokens but max_len is 17"):
    ar.encode_pairs(problems, tok, max_len=17)
