"""kd_jax: knowledge distillation in JAX/Flax NNX.

A layered package (docs/architecture.md): ``core`` → ``objectives``, ``config``, ``models``,
``data`` → ``llm`` → ``engine`` → ``tasks``, ``reporting`` → ``methods`` → ``run`` → the
command lines (``main``, ``sweep``, ``export``, ``llm_table``, ``topk_fidelity``). The pure
objectives keep their short paths (``kd_jax.divergences``, ``kd_jax.losses``); nothing heavy
is imported with the package itself.
"""

__version__ = "0.1.0"

# The code is fingerprinted as it is imported (DESIGN §5.6): every cache key and results.json
# name the source this process loaded, even if a file is edited while it runs.
from kd_jax.core import fingerprint as _fingerprint  # noqa: E402,F401
