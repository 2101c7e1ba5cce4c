"""``kd_jax.divergences``: the public face of :mod:`kd_jax.objectives.divergences` (re-exports only)."""

from kd_jax.objectives.divergences import (NAMES, PROBABILITY_DIVERGENCES,  # noqa: F401
                                           Divergence, cosine, get, js, kl, mse, reverse_kl,
                                           skew_kl, skew_reverse_kl, tvd)
