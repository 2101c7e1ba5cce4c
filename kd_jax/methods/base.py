"""What every method family shares: the :class:`Method` record its module registers, the
:class:`Settings` its terms read, and the checks several families make.

A method family (DESIGN §7) is one module of :mod:`kd_jax.methods` that defines
``METHODS = {name: Method(...)}``; :mod:`kd_jax.methods` (the registry) collects them.
A :class:`Method` owns its objective (the logit term and an optional feature term) and its
hooks; nothing in ``config/``, ``engine/`` or ``run/`` names a method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from kd_jax import config as config_lib
from kd_jax.core.errors import ConfigError
from kd_jax.llm import compute
from kd_jax.objectives.masked import masked_mean

# Task families whose problems are prompts to answer, with a verifier: the methods that
# sample answers (on-policy distillation, preference pairs, policy gradients) need them.
PROMPT_TASKS = ("arithmetic", "reasoning")


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method: its objective, the task families it accepts, and its hooks.

  Attributes:
    logit_term: ``(settings, step, s_logits, t_logits, labels, mask) -> (loss, metrics)``.
    tasks: the task families (:data:`kd_jax.tasks.FAMILIES` names) it runs on.
    feature_loss: ``(student feature, teacher feature, mask) -> scalar``; None: no
      feature term.
    uses_teacher: whether the step runs (or reads the cached outputs of) the teacher; or
      ``config -> bool`` when the method's settings decide (:meth:`runs_teacher`).
    feature_options: ``config -> keyword arguments of feature_loss`` (e.g. relation heads).
    default_pairs: ``(student features, teacher features) -> pairs`` when the method
      has its own default pairing.
    check_pair: ``(config, student name, shape, teacher name, shape) -> None``, raising
      ``ConfigError`` for a pair the method cannot compare.
    adapters: whether the student learns a linear map from each paired feature onto the
      teacher's width (FitNets' regressor).
    head_inputs: ``config -> bool``: the step gives ``(hidden, head)`` pairs instead of
      logits (the fused-linear kd loss).
    check: ``config -> None``: the method's own checks (its block), raising
      ``ConfigError`` naming the field; run before anything compiles.
    train_overrides: ``config -> dict`` of train-block fields the distilled student's phase
      overrides (the baseline it may start from keeps ``config.train``).
    training_task: ``(config, prepared) -> task``: the task the distilled student trains
      on, when it is not the run's (its own batches: on-policy samples, DPO pairs, GRPO
      rollouts); None: the run's task.
    student_data: ``(config, prepared, student_module, teacher_module, teacher_identity,
      cache_dir) -> (data, report)``: the distilled student's training data made after it
      was initialised (DPO's pairs from its samples; a policy-gradient student's prompts
      with itself as the reference); ``report`` (a dict) is added to ``results.json``.
    student_module: ``(config, student_model) -> module``: what the run trains and
      checkpoints when it is a wrapper with state of its own (progressive distillation's
      round teacher); its ``model`` attribute is the student. None: the model itself (or
      the feature methods' :class:`~kd_jax.methods.student.Student`).
    step_flops: ``(config, shapes) -> {"student": FLOPs, "teacher": FLOPs}`` of one step of a
      language-model phase (:class:`kd_jax.llm.compute.Shapes`); None:
      :func:`kd_jax.llm.compute.supervised_step`.
    cross_tokenizer: whether the method works when teacher and student have different
      tokenizers (DESIGN §9); a method that runs the teacher without it is refused then.
    distillation_head: whether it trains a ViT student's distillation token and head
      (DeiT); a student with one is refused by the other methods, whose test-time average
      would mix in an untrained head.
    teacher_outputs: ``(config, teacher, data, task, mesh) -> data``: the teacher's
      outputs computed once, in the method's own form (``data.teacher_logits`` set), or
      ``data`` unchanged (the teacher runs in the steps); used instead of
      :mod:`kd_jax.engine.teacher_cache` by methods whose task cannot use that cache's
      layout (ULD's sorted probabilities across tokenizers). None: that cache.
  """
  logit_term: Callable
  tasks: tuple[str, ...]
  feature_loss: Callable | None = None
  uses_teacher: bool | Callable = True
  feature_options: Callable | None = None
  default_pairs: Callable | None = None
  check_pair: Callable | None = None
  adapters: bool = False
  head_inputs: Callable | None = None
  check: Callable | None = None
  train_overrides: Callable | None = None
  training_task: Callable | None = None
  student_data: Callable | None = None
  step_flops: Callable | None = None
  student_module: Callable | None = None
  cross_tokenizer: bool = False
  distillation_head: bool = False
  teacher_outputs: Callable | None = None

  def runs_teacher(self, config) -> bool:
    """Whether a run of ``config`` gives this method the teacher's outputs in its steps."""
    return self.uses_teacher(config) if callable(self.uses_teacher) else self.uses_teacher

  def flops_per_step(self, config, shapes: compute.Shapes) -> dict[str, int]:
    """The counted FLOPs of one training step (student's and teacher's)."""
    if self.step_flops is None:
      return compute.supervised_step(shapes)
    return self.step_flops(config, shapes)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a method's terms read from the config, resolved once (schedules built)."""
  temperature: Callable       # step -> T (a Python float for a constant schedule)
  alpha: Callable             # step -> α (likewise)
  divergence: str
  divergence_params: dict
  dkd: Any
  gkd: Any = None             # the gkd block of a language-model config
  dpo: Any = None             # the dpo block (rank-based distillation)
  rl: Any = None              # the rl block (policy-gradient distillation)
  distillm2: Any = None       # the distillm2 block (contrastive distillation)
  consistency: Any = None     # the consistency block (diffusion consistency distillation)
  adversarial: Any = None     # the adversarial block (adversarial diffusion distillation)
  uld: Any = None             # the uld block (the cross-tokenizer methods' ULD term)
  topk_mode: str = "tail"     # how a cached top-k teacher is compared (kd_jax/objectives/topk.py)
  loss_chunk_size: int = 0    # > 0: kd through the fused-linear loss in chunks of this


def require_sft_start(config) -> None:
  """A method that improves the trained baseline (SFT) student, its reference."""
  method = config.method
  if config.get("student_init") not in config_lib.WARM_STARTS or not config.baseline:
    raise ConfigError("student_init", f"method={method!r} starts from a trained SFT student "
                      "(its reference): set baseline=True and student_init to one of "
                      f"{', '.join(config_lib.WARM_STARTS)}")
  if config.get("student_data") == "transfer":
    # The baseline trains on the task's own data; the teacher's transfer set would go unused.
    raise ConfigError("student_data", f"method={method!r} trains on its own samples, from the "
                      "baseline trained on the task's own data: student_data='transfer' has no "
                      "effect here (leave the task's default)")


def require_block(config, name: str, helper: str):
  """``config[name]``, the method's block, or a ConfigError naming the helper that makes it."""
  block = config.get(name)
  if block is None:
    # "an rl block": rl is read letter by letter ("ar-el"), so it takes "an".
    article = "an" if name[0] in "aeiou" or name == "rl" else "a"
    raise ConfigError(name, f"method={config.method!r} needs {article} {name} block "
                      f"(kd_jax.config.{helper}())")
  return block


def mean_over_answers(values, mask):
  """The mean of per-answer ``values`` ``[B]`` over the batch's real rows (any masked token)."""
  return masked_mean(values, jnp.any(mask, axis=-1))
