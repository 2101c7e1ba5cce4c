"""The optimiser of a ``training_config`` (kd_jax/config/schema.py): optax transforms and schedules."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(t, total_steps: int) -> optax.Schedule:
  """``t.lr_schedule`` over ``total_steps``; a phase whose method sets ``schedule_cycles``
  = n > 1 (progressive distillation's rounds) restarts it every ``total_steps`` / n steps."""
  cycles = int(t.get("schedule_cycles") or 1)
  if cycles > 1:
    if total_steps % cycles:
      raise ValueError(f"schedule_cycles={cycles} must divide the phase's {total_steps} steps")
    length = total_steps // cycles
    return optax.join_schedules([_one_schedule(t, length)] * cycles,
                                [length * i for i in range(1, cycles)])
  return _one_schedule(t, total_steps)


def _one_schedule(t, total_steps: int) -> optax.Schedule:
  if t.lr_schedule == "constant":
    return optax.constant_schedule(t.learning_rate)
  if t.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(t.learning_rate, max(total_steps, 1))
  warmup = int(t.warmup_fraction * total_steps)
  return optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, warmup, max(total_steps, warmup + 1))


def make_optimizer(t, total_steps: int) -> optax.GradientTransformation:
  """The optax optimiser of a ``training_config`` (see kd_jax/config/schema.py).

  A method's phase may add ``param_groups`` to it (``{submodule: {field: value}}``, e.g.
  an adversarial student's discriminator with its own learning rate): the parameters
  under each named top-level submodule then get an optimiser of their own, ``t`` with
  those fields replaced (``optax.multi_transform``), the rest ``t``'s.
  """
  groups = dict(t.get("param_groups") or {})
  if not groups:
    return _single_optimizer(t, total_steps)
  transforms = {"default": _single_optimizer(t, total_steps)}
  for name, fields in groups.items():
    group = t.copy_and_resolve_references()
    with group.unlocked():
      del group["param_groups"]
      group.update(dict(fields))
    transforms[name] = _single_optimizer(group, total_steps)
  return optax.multi_transform(transforms, lambda params: param_labels(params, tuple(groups)))


def param_labels(params, groups: tuple[str, ...]):
  """The ``multi_transform`` label of every leaf: its top-level submodule when that is one
  of ``groups``, else "default"."""
  def label(path, _):
    first = path[0]
    name = str(getattr(first, "key", getattr(first, "name", first)))
    return name if name in groups else "default"
  return jax.tree_util.tree_map_with_path(label, params)


def _single_optimizer(t, total_steps: int) -> optax.GradientTransformation:
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
