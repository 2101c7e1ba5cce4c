"""How many programs a jitted function has built: a count of its traces.

``jax.jit`` traces its Python function once per new input signature (shapes, dtypes,
static arguments), and each trace is lowered and compiled to a program of its own; calls
that match an earlier signature run that program without running the Python body. So the
number of times the body ran is the number of programs built — what "the train step
compiled once" means.

Why not ``jitted._cache_size()`` (a private method): it counts the entries of jit's C++
dispatch cache, which is shared by every jitted function of the process and holds 8,192
entries; once it is full a new function's entries are not kept, and ``_cache_size()``
reads 0 for a function that compiled and runs normally (through jit's Python path). A
long process with many jitted functions (the test suite run serially, a notebook) gets
there; a trace count does not depend on it.

>>> import jax, jax.numpy as jnp
>>> @jax.jit
... @count_traces
... def double(x):
...   return 2 * x
>>> _ = double(jnp.ones(3)); _ = double(jnp.zeros(3)); _ = double(jnp.ones(4))
>>> traces(double)
2
"""

from __future__ import annotations

import functools
from typing import Callable


def count_traces(fn: Callable) -> Callable:
  """``fn`` (to be jitted) counting the times it is traced in ``traced.traces``; the
  signature is kept (``functools.wraps``), so ``static_argnames`` still resolve."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    traced.traces += 1     # Python runs the body only while jax traces it
    return fn(*args, **kwargs)
  traced.traces = 0
  return traced


def traces(jitted: Callable) -> int:
  """The trace count of a ``jax.jit`` of a :func:`count_traces` function (``jax.jit``
  wraps its function with ``functools.wraps``, so it is ``jitted.__wrapped__``)."""
  return jitted.__wrapped__.traces
