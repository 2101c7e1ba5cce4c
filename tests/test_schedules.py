"""Tests for kd_jax.objectives.schedules: closed-form values, warm-up, jit, validation."""

import math

import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from kd_jax.objectives import schedules


def values(fn, steps):
  return [float(fn(step)) for step in steps]


def test_number_is_constant():
  fn = schedules.make(4.0)
  assert values(fn, [0, 7, 10**6]) == [4.0, 4.0, 4.0]
  assert fn(3).dtype == jnp.float32 and fn(3).shape == ()


def test_constant_ignores_end_and_steps():
  # A sweep over `init` must not trip over the base config's end / steps.
  spec = {"schedule": "constant", "init": 2.0, "end": 9.0, "steps": 5}
  assert values(schedules.make(spec), [0, 5, 50]) == [2.0, 2.0, 2.0]


def test_linear_closed_form():
  fn = schedules.make({"schedule": "linear", "init": 1.0, "end": 4.0, "steps": 100})
  np.testing.assert_allclose(values(fn, [0, 25, 50, 100, 150]),
                             [1.0, 1.75, 2.5, 4.0, 4.0], rtol=1e-6)


@pytest.mark.parametrize("init, end", [(4.0, 1.0), (0.0, 1.0), (1.0, 8.0)])
def test_cosine_closed_form(init, end):
  steps = 10
  fn = schedules.make({"schedule": "cosine", "init": init, "end": end,
                       "steps": steps}, field="alpha")
  for t in [0, 2, 5, 7, 10, 25]:
    expected = end + (init - end) * 0.5 * (1 + math.cos(math.pi * min(t, steps)
                                                        / steps))
    np.testing.assert_allclose(float(fn(t)), expected, rtol=1e-6, atol=1e-7)


def test_cosine_midpoint_is_the_average():
  fn = schedules.make({"schedule": "cosine", "init": 0.9, "end": 0.1, "steps": 10},
                      field="alpha", unit_interval=True)
  np.testing.assert_allclose(float(fn(5)), 0.5, rtol=1e-6)


def test_exponential_closed_form_and_clamp():
  # 8 -> 1 over 3 steps halves every step; afterwards it stays at `end`.
  down = schedules.make({"schedule": "exponential", "init": 8.0, "end": 1.0,
                         "steps": 3})
  np.testing.assert_allclose(values(down, [0, 1, 2, 3, 6]), [8, 4, 2, 1, 1],
                             rtol=1e-6)
  up = schedules.make({"schedule": "exponential", "init": 1.0, "end": 8.0,
                       "steps": 3})
  np.testing.assert_allclose(values(up, [0, 1, 2, 3, 30]), [1, 2, 4, 8, 8],
                             rtol=1e-6)


def test_warmup_then_schedule():
  spec = {"schedule": "linear", "init": 1.0, "end": 3.0, "steps": 20,
          "warmup_steps": 10, "warmup_init": 0.5}
  fn = schedules.make(spec, positive=True)
  # Ramp 0.5 -> 1 over 10 steps, then 1 -> 3 over the next 20, then hold.
  np.testing.assert_allclose(values(fn, [0, 5, 10, 20, 30, 100]),
                             [0.5, 0.75, 1.0, 2.0, 3.0, 3.0], rtol=1e-6)


def test_warmup_defaults_to_zero():
  fn = schedules.make({"schedule": "constant", "init": 0.6, "warmup_steps": 4},
                      field="alpha", unit_interval=True)
  np.testing.assert_allclose(values(fn, [0, 1, 2, 4, 9]),
                             [0.0, 0.15, 0.3, 0.6, 0.6], rtol=1e-6)


def test_configdict_and_none_entries():
  spec = ml_collections.ConfigDict(
      {"schedule": "linear", "init": 2.0, "end": 0.0, "steps": 4,
       "warmup_steps": None})
  fn = schedules.make(spec, field="alpha")
  np.testing.assert_allclose(values(fn, [0, 1, 4]), [2.0, 1.5, 0.0], rtol=1e-6)


def test_jit_with_traced_step():
  fn = schedules.make({"schedule": "cosine", "init": 4.0, "end": 1.0, "steps": 8,
                       "warmup_steps": 2, "warmup_init": 2.0})
  jitted = jax.jit(fn)
  for step in [0, 1, 2, 6, 10, 40]:
    out = jitted(jnp.int32(step))
    assert out.dtype == jnp.float32
    if step < 2:
      expected = 2.0 + step
    else:
      t = min(step - 2, 8)
      expected = 1.0 + 3.0 * 0.5 * (1 + math.cos(math.pi * t / 8))
    np.testing.assert_allclose(float(out), expected, rtol=1e-6)
  # Also inside a traced loop, as in a scanned training step.
  total = jax.lax.fori_loop(0, 3, lambda i, acc: acc + fn(i), jnp.float32(0))
  np.testing.assert_allclose(float(total), 2.0 + 3.0 + 4.0, rtol=1e-6)


@pytest.mark.parametrize("spec, kwargs, message", [
    ({"schedule": "foo", "init": 1.0}, {},
     "temperature.schedule: unknown schedule 'foo'; "
     "valid: constant, cosine, exponential, linear"),
    ({"init": 1.0}, {}, "temperature.schedule is required"),
    ({"schedule": "constant"}, {}, "temperature.init is required"),
    ({"schedule": "constant", "init": 0}, dict(positive=True),
     "temperature.init must be > 0, got 0"),
    # A bare number is named as written: `alpha`, not `alpha.init`.
    (0.0, dict(positive=True), "temperature must be > 0, got 0.0"),
    ({"schedule": "linear", "init": 4.0, "end": -1.0, "steps": 3},
     dict(positive=True), "temperature.end must be > 0, got -1.0"),
    ({"schedule": "linear", "init": 0.5, "end": 1.5, "steps": 3},
     dict(field="alpha", unit_interval=True), "alpha.end must be in [0, 1], got 1.5"),
    (1.2, dict(field="alpha", unit_interval=True),
     "alpha must be in [0, 1], got 1.2"),
    ({"schedule": "linear", "init": 1.0, "tau": 3}, {},
     "temperature: unknown key(s) 'tau'; valid: end, init, schedule, steps, "
     "warmup_init, warmup_steps"),
    ({"schedule": "cosine", "init": 1.0, "end": 2.0}, {},
     "temperature.steps is required for a 'cosine' schedule"),
    ({"schedule": "linear", "init": 1.0, "steps": 0}, {},
     "temperature.steps must be a positive integer, got 0"),
    ({"schedule": "linear", "init": 1.0, "steps": 2.5}, {},
     "temperature.steps must be a positive integer, got 2.5"),
    ({"schedule": "constant", "init": 1.0, "warmup_steps": -1}, {},
     "temperature.warmup_steps must be a non-negative integer, got -1"),
    ({"schedule": "constant", "init": 4.0, "warmup_steps": 5}, dict(positive=True),
     "temperature.warmup_init must be > 0, got 0.0"),
    ({"schedule": "constant", "init": 0.5, "warmup_steps": 5, "warmup_init": 2.0},
     dict(field="alpha", unit_interval=True),
     "alpha.warmup_init must be in [0, 1], got 2.0"),
    ({"schedule": "exponential", "init": 0.0, "end": 0.5, "steps": 3},
     dict(field="alpha"), "alpha.init must be > 0 for an exponential schedule"),
    ({"schedule": "constant", "init": "4"}, {},
     "temperature.init must be a finite number, got '4'"),
    ({"schedule": "constant", "init": float("nan")}, {},
     "temperature.init must be a finite number, got nan"),
    ({"schedule": "constant", "init": True}, {},
     "temperature.init must be a finite number, got True"),
    ("cosine", {}, "temperature must be a number or a mapping"),
])
def test_validation_errors_name_the_field(spec, kwargs, message):
  kwargs = dict(kwargs)
  field = kwargs.pop("field", "temperature")
  for call in (schedules.validate, schedules.make):
    with pytest.raises(ValueError) as error:
      call(spec, field=field, **kwargs)
    assert message in str(error.value)
    assert str(error.value).startswith(field)


def test_validate_accepts_valid_specs():
  for spec in (4.0, 1, {"schedule": "constant", "init": 4.0},
               ml_collections.ConfigDict({"schedule": "exponential", "init": 4.0,
                                          "end": 1.0, "steps": 100})):
    assert schedules.validate(spec, field="temperature", positive=True) is None


_finite = st.floats(0.0, 1.0)


@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(kind=st.sampled_from(["linear", "cosine"]), init=_finite,
                  end=_finite, steps=st.integers(1, 50),
                  step=st.integers(0, 100))
def test_values_stay_between_endpoints(kind, init, end, steps, step):
  # Why range checks on the endpoints suffice for unit-interval fields.
  fn = schedules.make({"schedule": kind, "init": init, "end": end,
                       "steps": steps}, field="alpha", unit_interval=True)
  value = float(fn(step))
  assert min(init, end) - 1e-6 <= value <= max(init, end) + 1e-6
