"""``kd_jax.generate``: the public face of :mod:`kd_jax.llm.generate` (re-exports only)."""

from kd_jax.llm.generate import compilations, filter_logits, generate, sample_in_trace  # noqa: F401
