"""The training engine (layer 3): one step builder, one loop, one checkpoint and resume path.

* :mod:`kd_jax.engine.step`          — the train state, the pure jitted train and eval steps;
* :mod:`kd_jax.engine.loop`          — :func:`fit` (resume, evaluation, logging, NaN checks);
* :mod:`kd_jax.engine.feeding`       — index batches, padded to one shape, an epoch at a time;
* :mod:`kd_jax.engine.optim`         — the optax optimiser of a training config;
* :mod:`kd_jax.engine.checkpoint`    — orbax ``CheckpointManager`` wiring;
* :mod:`kd_jax.engine.run_log`       — ``metrics.jsonl`` and TensorBoard events;
* :mod:`kd_jax.engine.teacher_cache` — the teacher's outputs computed once per dataset.

The engine knows nothing of images or tokens: what a batch and an evaluation mean is a
task's (:mod:`kd_jax.tasks`). ``from kd_jax import engine`` gives the names below.
"""

from kd_jax.engine.feeding import (BatchFeeder, epoch_order, pad_batch,  # noqa: F401
                                   padded_batches, replicated_key, round_up)
from kd_jax.engine.loop import FitResult, NonFiniteLossError, fit, load_trained  # noqa: F401
from kd_jax.engine.optim import learning_rate_schedule, make_optimizer  # noqa: F401
from kd_jax.engine.step import (Teacher, TrainState, TrainStep, forward, logs_at,  # noqa: F401
                                make_predict, make_train_step, predict_all, split_module)
