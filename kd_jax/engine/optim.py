"""The optimiser of a ``training_config`` (kd_jax/config/schema.py): optax transforms and schedules."""

from __future__ import annotations

import optax


def learning_rate_schedule(t, total_steps: int) -> optax.Schedule:
  if t.lr_schedule == "constant":
    return optax.constant_schedule(t.learning_rate)
  if t.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(t.learning_rate, max(total_steps, 1))
  warmup = int(t.warmup_fraction * total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, max(total_steps, warmup + 1))


def make_optimizer(t, total_steps: int) -> optax.GradientTransformation:
  """The optax optimiser of a ``training_config`` (see kd_jax/config/schema.py)."""
  lr = learning_rate_schedule(t, total_steps)
  if t.optimizer == "adamw":
    opt = optax.adamw(lr, weight_decay=t.weight_decay)
  else:
    base = {"sgd": lambda: optax.sgd(lr),
            "momentum": lambda: optax.sgd(lr, momentum=t.momentum, nesterov=True),
            "adam": lambda: optax.adam(lr)}[t.optimizer]()
    opt = optax.chain(optax.add_decayed_weights(t.weight_decay), base) if t.weight_decay else base
  if t.grad_clip_norm:
    opt = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), opt)
  return opt
