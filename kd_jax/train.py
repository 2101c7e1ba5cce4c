"""The training engine's public names, in one namespace.

The engine is split by concept:

* :mod:`kd_jax.step`     — the train state, the pure jitted train and eval steps;
* :mod:`kd_jax.loop`     — :func:`fit`, the loop (resume, evaluation, logging, NaN checks);
* :mod:`kd_jax.feeding`  — index batches, padded to one shape, an epoch at a time;
* :mod:`kd_jax.optim`    — the optax optimiser of a training config;
* :mod:`kd_jax.tasks`    — what batches and evaluations mean (classification, ...).

``from kd_jax import train`` gives the names below, so that experiments,
benchmarks and tests need one import.
"""

from kd_jax.feeding import (BatchFeeder, epoch_order, pad_batch, padded_batches,  # noqa: F401
                            replicated_key, round_up)
from kd_jax.loop import FitResult, NonFiniteLossError, fit, load_trained  # noqa: F401
from kd_jax.optim import learning_rate_schedule, make_optimizer  # noqa: F401
from kd_jax.step import (Teacher, TrainState, TrainStep, forward,  # noqa: F401
                         make_predict, make_train_step, predict_all, split_module)
from kd_jax.tasks.classification import Classification, DeviceData  # noqa: F401
