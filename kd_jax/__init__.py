"""kd_jax: knowledge distillation in JAX/Flax NNX.

Objectives (``divergences``, ``losses``, ``schedules``) are pure functions that
import nothing heavy; the training stack (``train``, ``experiment``, ``main``,
``sweep``) is imported on demand.
"""

__version__ = "0.1.0"
