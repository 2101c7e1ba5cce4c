"""kd_jax.core.tracing: a jitted function's programs counted by its traces."""

import jax
import jax.numpy as jnp
from jax._src import config as jax_config
from jax._src import pjit

from kd_jax.core import tracing


def test_traces_count_new_signatures_not_calls():
  @jax.jit
  @tracing.count_traces
  def scale(x, *, by):
    return by * x

  scale(jnp.ones(3), by=2.0)
  scale(jnp.zeros(3), by=3.0)          # same shapes and dtypes (by is traced): no new program
  assert tracing.traces(scale) == 1
  scale(jnp.ones(4), by=2.0)           # a new shape: a second program
  assert tracing.traces(scale) == 2


def test_traces_keep_static_argnames_working():
  counted = jax.jit(tracing.count_traces(lambda x, n: x * n), static_argnames=("n",))
  assert float(counted(jnp.float32(2.0), n=3)) == 6.0
  counted(jnp.float32(1.0), n=3)
  counted(jnp.float32(1.0), n=4)       # a new static value: retraced
  assert tracing.traces(counted) == 2


def test_a_full_dispatch_cache_hides_compilations_from_jit_but_not_from_traces():
  # jit's C++ dispatch cache of one entry (jax's private knob), filled by another function:
  # the step's entry is not kept, so jit's own count reads 0 although it compiled once.
  with jax_config.jax_jit_cpp_cache_obj(pjit.make_jit_cpp_cache(1)):
    other = jax.jit(lambda x: x + 1)
    step = jax.jit(tracing.count_traces(lambda x: 2 * x))
  other(jnp.ones(2))
  for _ in range(3):
    step(jnp.ones(3))
    other(jnp.ones(2))
  assert step._cache_size() == 0      # pylint: disable=protected-access
  assert tracing.traces(step) == 1
