"""The reasoning testbed's generator and verifier (kd_jax/data/reasoning.py)."""

import itertools
import random

import numpy as np
import pytest

from kd_jax.data import arithmetic, reasoning


def _splits(size=300, seed=0):
  return {s: reasoning.generate_split(s, size, seed=seed) for s in reasoning.SPLITS}


def test_the_splits_are_disjoint_and_each_is_fixed_by_its_prompts_hash():
  splits = _splits()
  prompts = {s: {p.prompt for p in ps} for s, ps in splits.items()}
  for a, b in itertools.combinations(reasoning.SPLITS, 2):
    assert not prompts[a] & prompts[b], (a, b)
  for split, problems in splits.items():
    assert len(prompts[split]) == len(problems) == 300           # distinct within a split
    if split != "ood":
      assert {reasoning.split_of(p.prompt) for p in problems} == {split}
  # Out of distribution: one operand more than any training problem.
  assert {len(p.terms) for p in splits["ood"]} == {5}
  assert {len(p.terms) for s in reasoning.BUCKETS for p in splits[s]} == {4}
  # A split does not change with its size (a prefix) or with the seed of nothing else.
  assert reasoning.generate_split("gold", 100) == splits["gold"][:100]
  assert reasoning.generate_split("gold", 100, seed=1) != splits["gold"][:100]


def test_every_problem_has_a_valid_gold_trace_and_many_have_several():
  problems = reasoning.generate_split("test", 300)
  orders = []
  for p in problems:
    assert p.answer == sum(p.terms) >= 0
    assert reasoning.parse_prompt(p.prompt) == p.terms
    assert reasoning.check_trace(p.prompt, p.response), p
    valid = reasoning.valid_orders(p.terms)
    traces = {reasoning.trace(p.terms, order) for order in valid}
    assert all(reasoning.check_trace(p.prompt, t) for t in traces)
    assert p.response in traces
    orders.append(len(traces))
    # An order that is not valid (a running total below 0) is refused.
    for order in set(itertools.permutations(range(4))) - set(valid):
      if p.terms[order[0]] > 0:
        assert not reasoning.check_trace(p.prompt, reasoning.trace(p.terms, order))
  # 4 operands: up to 4! = 24 orders; sampling k traces per prompt has something to vary.
  assert np.mean([n > 1 for n in orders]) > 0.95 and np.median(orders) >= 6


def test_answer_rows_carry_no_reasoning():
  for p in reasoning.generate_split("answers", 200):
    assert p.response == f"####{p.answer}"
    assert arithmetic.check_answer(p.response, p.answer)
    assert not reasoning.check_trace(p.prompt, p.response)    # an answer alone is no trace
  assert reasoning.answer_only(reasoning.generate_split("gold", 1)[0]).response.count("=") == 0


@pytest.mark.parametrize("response", [
    "", "####96", "garbage", None, b"48+26=74", 12,
    "48+26=74;74-15=59;59+37=96####95",       # wrong final answer
    "48+26=74;74-15=59;59+37=96",             # no answer mark
    "48+26=74;74-15=59####59",                # an operand never used
    "48+26=74;74-15=59;59+37=96;96+26=122####122",   # an operand used twice
    "48+26=75;75-15=60;60+37=97####97",       # false arithmetic
    "48+26=74;70-15=55;55+37=92####92",       # a step that does not continue the last
    "48+25=73;73-15=58;58+37=95####95",       # an operand that is not in the prompt
    "48+26=74;74+15=89;89+37=126####126",     # the wrong sign
    "15+48=63;63+26=89;89+37=126####126",     # a negative operand taken as a first positive
    "48+26=74;74-15=59;59+37=96####96####96",  # a second answer mark: the last step is garbage
    "048+26=74;74-15=59;59+37=96####96",      # a leading zero
])
def test_the_verifier_refuses_garbage_and_never_raises(response):
  assert not reasoning.check_trace("37+48-15+26=", response)


def test_the_verifier_accepts_every_valid_order_of_the_docstring_example():
  prompt, terms = "37+48-15+26=", (37, 48, -15, 26)
  assert reasoning.check_trace(prompt, "48+26=74;74-15=59;59+37=96####96")
  assert len(reasoning.valid_orders(terms)) == 18       # 3 positive firsts × 3! = 18, all >= 0
  for bad_prompt in (None, "", "37+=", "37+48", "+37+48=", "a+b=", 37):
    assert reasoning.check_trace(bad_prompt, "48+26=74####74") is False


def test_random_text_never_passes_and_never_raises():
  rng = random.Random(0)
  chars = arithmetic.CHARS
  problems = reasoning.generate_split("test", 50)
  for _ in range(2000):
    text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
    assert not reasoning.check_trace(rng.choice(problems).prompt, text)


def test_bad_testbeds_and_splits_name_the_field():
  with pytest.raises(ValueError, match="terms must be >= 2"):
    reasoning.Testbed(terms=1)
  with pytest.raises(ValueError, match="minus must be in"):
    reasoning.Testbed(minus=1.5)
  with pytest.raises(ValueError, match="unknown split 'train'; valid: test, gold, answers, pool, ood"):
    reasoning.generate_split("train", 3)
