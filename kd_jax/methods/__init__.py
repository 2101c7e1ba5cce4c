"""Distillation methods: a registry from name to objective, and the features a method matches.

Every method (:data:`REGISTRY`) builds its loss from the same two terms:

    loss = logit_term + feature_weight · feature_term

* ``logit_term`` — ``kd_loss(..., divergence, temperature(step), alpha(step))``
  for every method except ``none`` (hard-label CE only) and ``dkd``
  (CE + min(1, step / dkd.warmup_steps) · DKD, as in Zhao et al. 2022).
  With ``alpha=1`` it is plain cross-entropy, which is what the feature
  methods' experiment modules use by default (FitNets, AT, RKD, SP and PKT
  were all published as CE + feature term).
* ``feature_term`` — the method's feature or relational loss, summed over its
  (student layer → teacher layer) pairs.

The language-model methods beyond token-level ``kd`` replace the logit term too:
``gkd`` (JSD(β) on gold or student-sampled batches), ``dpo`` (preference pairs against
the frozen SFT start), and the policy-gradient students ``grpo`` and ``minillm``, whose
batches are the student's own samples (:mod:`kd_jax.rollouts`) scored by the verifier
and the live teacher (:mod:`kd_jax.rl_losses`).

The sentence-encoder methods (``distilbert``, ``minilm``) replace the logit term:
their "logits" are sentence embeddings ``[B, D]`` and their features a transformer's
hidden states and self-attention (see the registry's comments).

FitNets regresses the student's features onto the teacher's through a learned
adapter (a linear map on the channel axis, i.e. a 1×1 convolution for maps);
the adapters are part of the student's trainable state (:class:`Student`).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from kd_jax import models
from kd_jax.objectives import attention_losses
from kd_jax.objectives import divergences
from kd_jax.objectives import features, fused_linear, losses
from kd_jax.objectives import rl_losses
from kd_jax.objectives import schedules
from kd_jax.objectives import topk
from kd_jax.core.errors import ConfigError

# The feature term of each feature method: fn(student_feature, teacher_feature) -> scalar.
_FEATURE_LOSSES = {
    "fitnets": features.hint_loss,
    "at": features.attention_transfer_loss,
    "rkd": features.rkd_loss,
    "sp": features.similarity_preserving_loss,
    "pkt": features.pkt_loss,
}
# Methods whose feature term compares spatial maps [B, H, W, C] rather than vectors.
_SPATIAL_METHODS = ("at",)


def feature_pairs(config, student_features: dict, teacher_features: dict) -> dict[str, str]:
  """The (student layer → teacher layer) pairs a method matches, validated.

  ``config.feature_layers`` wins when set. Otherwise FitNets, RKD, SP and PKT
  match the penultimate ``embedding`` vectors (defined for every model), and AT
  matches every spatial map name the two models share.

  Args:
    config: the experiment config.
    student_features, teacher_features: ``{name: shape}`` from
      :func:`kd_jax.models.feature_shapes`.

  Raises:
    ValueError: naming ``feature_layers`` and the valid names, when a layer does
      not exist or the shapes cannot be compared by the method.
  """
  method = config.method
  if REGISTRY[method].feature_loss is None:
    return {}
  pairs = dict(config.feature_layers)
  default_pairs = REGISTRY[method].default_pairs
  if not pairs and default_pairs is not None:
    pairs = default_pairs(student_features, teacher_features)
  if not pairs:
    if method in _SPATIAL_METHODS:
      shared = [n for n in student_features if n in teacher_features and n != "embedding"
                and student_features[n][1:3] == teacher_features[n][1:3]]
      if not shared:
        raise ConfigError(
            "feature_layers", f"method={method!r} needs spatial feature maps of equal height and width in "
            f"student and teacher; student {config.student.model} has "
            f"{_describe(student_features)}, teacher {config.teacher.model} has "
            f"{_describe(teacher_features)}. Set feature_layers.")
      pairs = {n: n for n in shared}
    else:
      pairs = {"embedding": "embedding"}
  for s_name, t_name in pairs.items():
    if s_name not in student_features:
      raise ConfigError("feature_layers", f"feature_layers: student layer {s_name!r} does not "
                        f"exist; valid: {', '.join(student_features)}")
    if t_name not in teacher_features:
      raise ConfigError("feature_layers", f"feature_layers: teacher layer {t_name!r} does not "
                        f"exist; valid: {', '.join(teacher_features)}")
    s_shape, t_shape = student_features[s_name], teacher_features[t_name]
    if method in ("fitnets", "at") and s_shape[1:-1] != t_shape[1:-1]:
      raise ConfigError(
          "feature_layers", f"feature_layers: {method} needs equal spatial shapes; student {s_name} "
          f"{s_shape[1:-1]} vs teacher {t_name} {t_shape[1:-1]}")
    if method == "at" and len(s_shape) != 4:
      raise ConfigError("feature_layers",
                        f"feature_layers: at needs NHWC maps; student {s_name} has shape {s_shape}")
    if REGISTRY[method].check_pair is not None:
      REGISTRY[method].check_pair(config, s_name, s_shape, t_name, t_shape)
  return pairs


def _equal_widths(config, s_name, s_shape, t_name, t_shape) -> None:
  if s_shape[-1] != t_shape[-1]:
    raise ConfigError("feature_layers", f"feature_layers: {config.method} compares hidden states "
                      f"of equal width; student {s_name} is {s_shape[-1]} wide, teacher "
                      f"{t_name} {t_shape[-1]} (use method='minilm' across widths)")


def _relation_heads_divide(config, s_name, s_shape, t_name, t_shape) -> None:
  if not (s_name.startswith("qkv_") and t_name.startswith("qkv_")):
    raise ConfigError("feature_layers", f"feature_layers: minilm compares self-attention "
                      f"layers (qkv_<i>); got {s_name!r} → {t_name!r}")
  heads = config.encoder.relation_heads
  if s_shape[-1] % (3 * heads) or t_shape[-1] % (3 * heads):      # q|k|v concatenated
    raise ConfigError("encoder.relation_heads", f"encoder.relation_heads={heads} must divide "
                      f"both widths: student {s_name} {s_shape[-1] // 3}, teacher {t_name} "
                      f"{t_shape[-1] // 3}")


def _layers(features: dict, kind: str) -> list[int]:
  """The layer indices i of the features named ``<kind>_<i>``, in order."""
  return sorted(int(m.group(1)) for n in features if (m := re.fullmatch(rf"{kind}_(\d+)", n)))


def _uniform_hidden_pairs(student_features: dict, teacher_features: dict) -> dict[str, str]:
  """DistilBERT's layer map: student layer j ends where teacher layer ⌈(j+1)·L_t/L_s⌉ − 1
  ends (3 of 6: 0→1, 1→3, 2→5), the student's last layer on the teacher's last."""
  s_layers, t_layers = _layers(student_features, "hidden"), _layers(teacher_features, "hidden")
  last = lambda j: -(-(j + 1) * len(t_layers) // len(s_layers)) - 1   # ⌈(j+1)·L_t/L_s⌉ − 1
  return {f"hidden_{j}": f"hidden_{t_layers[last(j)]}" for j in s_layers}


def _last_attention_pair(student_features: dict, teacher_features: dict) -> dict[str, str]:
  """MiniLM: the last self-attention layer of each model."""
  s_layers, t_layers = _layers(student_features, "qkv"), _layers(teacher_features, "qkv")
  return {f"qkv_{s_layers[-1]}": f"qkv_{t_layers[-1]}"} if s_layers and t_layers else {}


def _describe(shapes: dict) -> str:
  return ", ".join(f"{n}{tuple(s[1:])}" for n, s in shapes.items())


class Student(nnx.Module):
  """The trainable side of a run: the student model plus FitNets adapters.

  ``__call__`` returns ``(logits, features)`` with ``features`` keyed by the
  student layer names of ``pairs``, adapted to the teacher's width for FitNets.
  """

  def __init__(self, model: nnx.Module, pairs: dict[str, str], adapter_widths: dict[str, tuple],
               *, rngs: nnx.Rngs):
    self.model = model
    self.pairs = dict(pairs)
    # FitNets' regressor: a linear map on the channel axis (1×1 conv for NHWC maps).
    self.adapters = nnx.Dict({
        name: nnx.Linear(s_width, t_width, rngs=rngs)
        for name, (s_width, t_width) in adapter_widths.items()})

  def __call__(self, x, *, train: bool = False):
    if not self.pairs:
      return self.model(x, train=train), {}
    logits, features = self.model(x, train=train, return_features=True)
    selected = {}
    for name in self.pairs:
      f = features[name]
      if name in self.adapters:
        f = self.adapters[name](f.astype(jnp.float32))
      selected[name] = f
    return logits, selected


def student_train_config(config):
  """``config.train`` with the method's overrides for the distilled student's phase."""
  overrides = REGISTRY[config.method].train_overrides
  if overrides is None:
    return config.train
  train_config = config.train.copy_and_resolve_references()
  with train_config.unlocked():
    train_config.update(overrides(config))
  return train_config


def trainable_student(config, student_model: nnx.Module, teacher_model: nnx.Module):
  """``(module, pairs)``: what a run of ``config`` trains and checkpoints, and its layer pairs.

  ``module`` is ``student_model`` itself for a method without a teacher, else a
  :class:`Student` with the method's pairs and FitNets adapters. The pairs are
  validated on shapes alone (:func:`kd_jax.models.feature_shapes`), before anything
  compiles; ``teacher_model`` may be abstract (``nnx.eval_shape``).
  """
  if not REGISTRY[config.method].uses_teacher:
    return student_model, {}
  s_shapes = t_shapes = {}
  if REGISTRY[config.method].feature_loss is not None:
    s_shapes, t_shapes = models.feature_shapes(student_model), models.feature_shapes(teacher_model)
  pairs = feature_pairs(config, s_shapes, t_shapes)
  widths = adapter_widths(config, pairs, s_shapes, t_shapes)
  return Student(student_model, pairs, widths, rngs=nnx.Rngs(config.seed + 1)), pairs


def adapter_widths(config, pairs, student_features, teacher_features) -> dict[str, tuple[int, int]]:
  """FitNets adapters: ``{student layer: (student width, teacher width)}``."""
  if config.method != "fitnets":
    return {}
  return {s: (student_features[s][-1], teacher_features[t][-1]) for s, t in pairs.items()}


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
  topk_mode: str = "tail"     # how a cached top-k teacher is compared (kd_jax/topk.py)
  loss_chunk_size: int = 0    # > 0: kd through the fused-linear loss in chunks of this


def _hard_labels(settings, step, s_logits, t_logits, labels, mask):
  """``none``: cross-entropy on the labels; the teacher is not used."""
  ce = losses.cross_entropy(s_logits, labels, mask)
  return ce, {}


def _hinton(settings, step, s_logits, t_logits, labels, mask):
  """``kd`` (and the logit term of the feature methods): α·CE + (1−α)·T²·D (Hinton et al. 2015).

  kd_loss's value with its two terms logged apart ("ce", "distill"): both are
  means over the same mask, so their weighted sum is kd_loss's. A term whose
  static weight is 0 is neither computed nor logged.
  """
  t, a = settings.temperature(step), settings.alpha(step)
  metrics = {"temperature": t, "alpha": a}
  if isinstance(s_logits, tuple):     # (hidden, head) pairs: loss_chunk_size > 0
    return _fused_hinton(settings, t, a, s_logits, t_logits, labels, mask), metrics
  static_alpha = a if isinstance(a, float) else None   # None: scheduled, both terms
  loss = 0.0
  if static_alpha != 0:
    metrics["ce"] = losses.cross_entropy(s_logits, labels, mask)
    loss = a * metrics["ce"]
  if static_alpha != 1:
    if isinstance(t_logits, topk.TopKLogits):      # the teacher's cached top-k (topk.k > 0)
      metrics["distill"] = topk.topk_kd_loss(s_logits, t_logits, mode=settings.topk_mode,
                                             divergence=settings.divergence, temperature=t,
                                             mask=mask,
                                             divergence_params=settings.divergence_params)
    else:
      metrics["distill"] = losses.kd_loss(s_logits, t_logits, None,
                                          divergence=settings.divergence, temperature=t,
                                          alpha=0.0, mask=mask,
                                          divergence_params=settings.divergence_params)
    loss = loss + (1.0 - a) * metrics["distill"]
  return loss, metrics


def _fused_hinton(settings, t, a, student, teacher, labels, mask):
  """The ``kd`` loss through the output heads, ``loss_chunk_size`` rows at a time
  (:func:`kd_jax.fused_linear.fused_linear_kd_loss`); its two terms are not logged apart
  (that would make the logits twice)."""
  (h_s, w_s), (h_t, w_t) = student, teacher
  return fused_linear.fused_linear_kd_loss(
      h_s.reshape(-1, h_s.shape[-1]), w_s, h_t.reshape(-1, h_t.shape[-1]), w_t,
      labels.reshape(-1), divergence=settings.divergence, temperature=t, alpha=a,
      mask=mask.reshape(-1), chunk_size=settings.loss_chunk_size,
      divergence_params=settings.divergence_params)


def _decoupled(settings, step, s_logits, t_logits, labels, mask):
  """``dkd``: CE + min(1, step / dkd.warmup_steps) · DKD (Zhao et al. 2022)."""
  dkd, t = settings.dkd, settings.temperature(step)
  ce = losses.cross_entropy(s_logits, labels, mask)
  ramp = jnp.minimum(1.0, step / dkd.warmup_steps) if dkd.warmup_steps else 1.0
  distill = losses.dkd_loss(s_logits, t_logits, labels, alpha=dkd.alpha, beta=dkd.beta,
                            temperature=t, mask=mask)
  return ce + ramp * distill, {"temperature": t, "ce": ce, "dkd": distill}


def _sentence_cosine(settings, step, s_embeddings, t_embeddings, labels, mask):
  """``distilbert``'s output term: 1 − cos between the student's and the teacher's sentence
  embeddings ``[B, D]`` (DistilBERT's cosine embedding loss), mean over the real rows
  (``mask`` ``[B, T]``: a row with any real token)."""
  del settings, step, labels
  rows = jnp.any(mask, axis=-1) if mask.ndim > 1 else mask
  loss = features.hidden_state_loss(s_embeddings[:, None], t_embeddings[:, None], mask=rows)
  return loss, {"embedding_cosine_distance": loss}


def _no_output_term(settings, step, s_outputs, t_outputs, labels, mask):
  """``minilm``: only the self-attention relations are distilled (its output may be of
  another width than the teacher's)."""
  del settings, step, s_outputs, t_outputs, labels, mask
  return 0.0, {}


def _direct_preference(settings, step, s_logits, t_logits, labels, mask):
  """``dpo``: DPO on a batch of pairs (:class:`kd_jax.preferences.PreferencePairs`: rows
  chosen then rejected, ``labels`` = (targets, the reference's sequence log-probabilities))
  with β = ``dpo.beta``; no teacher in the step (it ranked or wrote the pairs)."""
  del step, t_logits
  targets, reference = labels
  logps = rl_losses.sequence_log_probs(rl_losses.token_log_probs(s_logits, targets), mask)
  half = logps.shape[0] // 2
  loss, metrics = rl_losses.dpo_loss(logps[:half], logps[half:], reference[:half],
                                     reference[half:], beta=settings.dpo.beta,
                                     mask=jnp.any(mask[:half], axis=-1))
  return loss, metrics


def _group_relative_policy_gradient(settings, step, s_logits, t_logits, targets, mask):
  """``grpo``: the clipped policy gradient with GRPO's group-relative advantages and a k3 KL
  penalty (``rl.kl_coef``) to the frozen starting student (Shao et al. 2024), on a batch of
  :class:`kd_jax.rollouts.Rollouts` (``rl.k`` samples per prompt). Reward per answer:
  ``rl.verifier_weight`` × the verifier's verdict + ``rl.teacher_weight`` × the teacher's
  reward (``rl.teacher_reward``: the mean token log-ratio log p_T − log q_S, MiniLLM's,
  or the mean log-likelihood log p_T). One update per batch of samples, so π_old = π: the
  ratio is 1, the clipping never acts (``clip_fraction`` stays 0) and the gradient is
  REINFORCE's with group baselines. The loss is one mean over every sampled token of the
  batch (the library's per-token convention, as DAPO's token-level loss; GRPO's paper
  averages per answer first, so there a long answer weighs as much as a short one)."""
  del step
  rl = settings.rl
  log_probs = rl_losses.token_log_probs(s_logits, targets.tokens)
  teacher = rl_losses.teacher_rewards(
      rl_losses.token_log_probs(t_logits, targets.tokens), mask,
      log_probs if rl.teacher_reward == "log_ratio" else None)
  rewards = rl.verifier_weight * targets.verified + rl.teacher_weight * teacher
  advantages = rl_losses.group_advantages(rewards.reshape(-1, rl.k)).reshape(-1)
  loss, metrics = rl_losses.policy_gradient_loss(log_probs, log_probs, targets.reference,
                                                 advantages, mask, kl_coef=rl.kl_coef)
  metrics.update(reward=_mean_over_answers(rewards, mask),
                 teacher_reward=_mean_over_answers(teacher, mask))
  return loss, metrics


def _reverse_kl_policy_gradient(settings, step, s_logits, t_logits, targets, mask):
  """``minillm``: MiniLLM's reverse-KL policy gradient with its single-step regularisation
  (:func:`kd_jax.rl_losses.minillm_loss`, Gu et al. 2024) on :class:`kd_jax.rollouts.Rollouts`
  batches, sampled from the student or, with ``rl.teacher_mix`` = α > 0, from
  α·teacher + (1 − α)·student; plus ``rl.kl_coef`` × the k3 KL to the starting student."""
  del step
  rl = settings.rl
  log_probs = rl_losses.token_log_probs(s_logits, targets.tokens)
  teacher_log_probs = rl_losses.token_log_probs(t_logits, targets.tokens)
  loss, metrics = rl_losses.minillm_loss(
      log_probs, teacher_log_probs, divergences.reverse_kl(s_logits, t_logits),
      targets.reference, mask, mix=rl.teacher_mix, kl_coef=rl.kl_coef)
  # GRPO's teacher reward (the per-answer mean log-ratio), for curves comparable with it.
  metrics["teacher_reward"] = _mean_over_answers(
      rl_losses.teacher_rewards(teacher_log_probs, mask, log_probs), mask)
  return loss, metrics


def _mean_over_answers(values, mask):
  """The mean of per-answer ``values`` ``[B]`` over the batch's real rows (any masked token)."""
  real = jnp.any(mask, axis=-1)
  return jnp.sum(jnp.where(real, values, 0.0)) / jnp.maximum(jnp.sum(real), 1)


def _rl_overrides(config) -> dict:
  """A policy-gradient phase's step holds ``train.batch_size`` rows: batch_size / k prompts
  with k samples each (the same rows per step as every other method); its peak learning
  rate is ``rl.learning_rate``."""
  return {"learning_rate": config.rl.learning_rate,
          "batch_size": config.train.batch_size // config.rl.k}


def _generalized_jsd(settings, step, s_logits, t_logits, labels, mask):
  """``gkd``: T²·JSD(β) between teacher and student on every batch, gold or student-sampled
  (Agarwal et al. 2024, "On-Policy Distillation of Language Models"); no CE term. β
  follows TRL: 0 gives KL(teacher ‖ student), 1 KL(student ‖ teacher). Which batches
  the student samples is the task's (``gkd.fraction``, kd_jax/tasks/lm.py)."""
  t = settings.temperature(step)
  distill = losses.kd_loss(s_logits, t_logits, None, divergence="js", temperature=t, alpha=0.0,
                           mask=mask, divergence_params={"beta": settings.gkd.beta})
  return distill, {"temperature": t, "distill": distill}


@dataclasses.dataclass(frozen=True)
class Method:
  """A distillation method: its logit term, and its feature term (None: none)."""
  logit_term: Callable        # (settings, step, s_logits, t_logits, labels, mask) -> (loss, metrics)
  feature_loss: Callable | None = None   # (student feature, teacher feature, mask) -> scalar
  uses_teacher: bool = True
  # config -> keyword arguments of feature_loss (e.g. relation heads); None: none.
  feature_options: Callable | None = None
  # (student features, teacher features) -> default pairs, when the method has its own.
  default_pairs: Callable | None = None
  # (config, student name, shape, teacher name, shape) -> None, raising ConfigError for a
  # pair the method cannot compare.
  check_pair: Callable | None = None
  # config -> train-block fields the distilled student's phase overrides (the baseline it
  # may start from keeps config.train), e.g. DPO's small learning rate; None: none.
  train_overrides: Callable | None = None


# name -> method. A new method is an entry here (and, if it matches features, a pairing
# rule in feature_pairs); the engine and the configs pick it up from this registry.
REGISTRY: dict[str, Method] = {
    "none": Method(_hard_labels, uses_teacher=False),
    "kd": Method(_hinton),
    "dkd": Method(_decoupled),
    "gkd": Method(_generalized_jsd),
    "dpo": Method(_direct_preference, uses_teacher=False,
                  train_overrides=lambda c: {"learning_rate": c.dpo.learning_rate}),
    # Policy-gradient students (kd_jax/rollouts.py): the teacher scores the student's samples.
    "grpo": Method(_group_relative_policy_gradient, train_overrides=_rl_overrides),
    "minillm": Method(_reverse_kl_policy_gradient, train_overrides=_rl_overrides),
    **{name: Method(_hinton, feature_loss) for name, feature_loss in _FEATURE_LOSSES.items()},
    # Sentence encoders (kd_jax/tasks/embedding.py): DistilBERT (Sanh et al. 2019) matches
    # the sentence embeddings and the hidden states (distance: config.divergence, cosine or
    # mse); MiniLM (Wang et al. 2020, 2021) the last layer's attention and value relations.
    "distilbert": Method(_sentence_cosine, features.hidden_state_loss,
                         feature_options=lambda c: {"distance": c.divergence},
                         default_pairs=_uniform_hidden_pairs, check_pair=_equal_widths),
    "minilm": Method(_no_output_term, attention_losses.self_attention_loss,
                     feature_options=lambda c: {"num_heads": c.encoder.relation_heads},
                     default_pairs=_last_attention_pair, check_pair=_relation_heads_divide),
}
# Methods of sentence encoders only.
EMBEDDING_METHODS = ("distilbert", "minilm")
# Policy-gradient students of language models (kd_jax/rollouts.py), configured by the rl block.
RL_METHODS = ("grpo", "minillm")


def make_objective(config, pairs: dict[str, str] | None = None) -> Callable:
  """Builds ``objective(step, student_out, teacher_out, labels, mask) -> (loss, metrics)``.

  ``loss = logit_term + feature_weight · feature_term`` for ``config.method``'s
  entry of :data:`REGISTRY`. ``pairs`` are the resolved (student layer → teacher
  layer) pairs of :func:`feature_pairs`; features are keyed by student layer on
  the student side and by teacher layer on the teacher side.

  ``student_out`` / ``teacher_out`` are ``(logits, features)`` pairs; the teacher's
  is ``None`` for ``method='none'``. Temperature and α follow their schedules
  as functions of the traced ``step``.
  """
  method = REGISTRY[config.method]
  # A constant schedule reaches the losses as a Python number, so that α = 1 (the
  # feature methods' default) skips the divergence instead of computing 0 · D,
  # which is NaN wherever D is infinite (see losses.kd_loss).
  settings = Settings(
      temperature=schedules.make(config.temperature, field="temperature", positive=True,
                                 constant_as_number=True),
      alpha=schedules.make(config.alpha, field="alpha", unit_interval=True,
                           constant_as_number=True),
      divergence=config.divergence, divergence_params=dict(config.divergence_params),
      dkd=config.dkd, gkd=config.get("gkd"), dpo=config.get("dpo"), rl=config.get("rl"),
      topk_mode=(config.get("topk") or {}).get("mode", "tail"),
      loss_chunk_size=int(config.get("loss_chunk_size", 0)))
  pairs = dict(pairs or {})
  feature_loss = method.feature_loss
  if feature_loss is not None and method.feature_options is not None:
    feature_loss = functools.partial(feature_loss, **method.feature_options(config))

  def objective(step, student_out, teacher_out, labels, mask):
    s_logits, s_features = student_out
    t_logits, t_features = teacher_out if method.uses_teacher else (None, {})
    loss, metrics = method.logit_term(settings, step, s_logits, t_logits, labels, mask)
    if method.feature_loss is not None:
      feature_term = sum(_masked_feature_loss(feature_loss, s_features[s],
                                              t_features[t_name], mask)
                         for s, t_name in pairs.items())
      metrics["feature_loss"] = feature_term
      loss = loss + config.feature_weight * feature_term
    metrics["loss"] = loss
    return loss, metrics

  # The step then gives (hidden, head) pairs instead of logits (kd_jax.step.forward).
  objective.head_inputs = config.method == "kd" and settings.loss_chunk_size > 0
  return objective


def _masked_feature_loss(fn, student_feature, teacher_feature, mask):
  student_feature = student_feature.astype(jnp.float32)
  teacher_feature = jax.lax.stop_gradient(teacher_feature.astype(jnp.float32))
  return fn(student_feature, teacher_feature, mask=mask)
