"""The experiment config (layer 1): the schema experiment modules build on.

``kd_jax.config.base_config()`` and the block helpers (:mod:`kd_jax.config.schema`);
record comparison for workdirs and caches (:mod:`kd_jax.config.records`); command-line
flag helpers (:mod:`kd_jax.config.cli`). Validation asks the task and method plug-ins, so
it lives above them (:mod:`kd_jax.run.validation`).
"""

from kd_jax.config.schema import *  # noqa: F401,F403
