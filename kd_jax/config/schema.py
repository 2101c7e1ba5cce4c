"""The experiment config: defaults shared by every experiment module, and validation.

Experiment modules (``experiments/<group>/<name>.py``) start from
:func:`base_config` and override what they study. :func:`validate` checks
every field in plain Python — before any model is built or any function is
compiled — and raises ``ValueError`` naming the field and the valid choices.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import types
from typing import Any

import ml_collections

from kd_jax import methods, models
from kd_jax.objectives import divergences
from kd_jax.objectives import schedules
from kd_jax.objectives import topk
from kd_jax.data import NAMES as IMAGE_DATASETS
from kd_jax.tasks.arithmetic import DATASETS as REASONING_DATASETS
from kd_jax.tasks.embedding import DATASETS as SENTENCE_DATASETS
from kd_jax.tasks.text import DATASETS as TEXT_DATASETS
from kd_jax.core.errors import ConfigError

# Methods of language models only (on-policy distillation samples from the student).
LANGUAGE_ONLY_METHODS = ("gkd", "dpo", *methods.RL_METHODS)
RL_METHODS = methods.RL_METHODS
# The teacher's reward of a GRPO answer (kd_jax/rl_losses.py: teacher_rewards).
RL_TEACHER_REWARDS = ("log_ratio", "log_likelihood")
METHODS = tuple(m for m in methods.REGISTRY
                if m not in LANGUAGE_ONLY_METHODS + methods.EMBEDDING_METHODS)
# Language models: fine-tuning on the gold text (none) and token-level KD so far.
LANGUAGE_METHODS = ("none", "kd", "gkd", "dpo", "grpo", "minillm")
# How DPO's preference pairs are made (kd_jax/preferences.py).
PREFERENCE_PAIRS = ("ranked", "teacher")
TEXT_METHODS = ("none", "kd")       # no prompts to answer: no on-policy sampling
LANGUAGE_DATASETS = (*REASONING_DATASETS, *TEXT_DATASETS)
# What a language-model student trains on: the gold responses, or the teacher's
# verified answers to the gold prompts (sequence-level KD, kd_jax/transfer.py).
STUDENT_DATA = ("gold", "transfer")
# "teacher_layers": a sentence encoder's student starts as the teacher's embeddings and
# layers encoder.init_layers (DistilBERT's initialisation).
STUDENT_INITS = ("scratch", "baseline", "teacher_layers")
DATASETS = (*IMAGE_DATASETS, *LANGUAGE_DATASETS, *SENTENCE_DATASETS)
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
PRECISIONS = ("fp32", "bf16")
# "shared": as disk, in a directory every run shares (kd_jax/teacher_cache.py).
TEACHER_CACHES = ("auto", "none", "memory", "disk", "shared")


def training_config(epochs: float = 5, batch_size: int = 128, optimizer: str = "adamw",
                    learning_rate: float = 1e-3, lr_schedule: str = "cosine",
                    weight_decay: float = 1e-4) -> ml_collections.ConfigDict:
  """Optimisation settings, shared by the teacher's and the student's training."""
  return ml_collections.ConfigDict(dict(
      epochs=float(epochs),           # fractional epochs allowed (smoke runs)
      batch_size=batch_size,
      eval_batch_size=1000,
      eval_every_steps=0,             # evaluate every N steps (and at the end); 0 = each epoch
      optimizer=optimizer,
      learning_rate=learning_rate,    # peak learning rate
      lr_schedule=lr_schedule,
      warmup_fraction=0.05,           # of all steps, for warmup_cosine
      momentum=0.9,                   # sgd with momentum / nesterov
      weight_decay=weight_decay,
      grad_clip_norm=0.0,             # 0 disables clipping
  ))


def base_config() -> ml_collections.ConfigDict:
  """Every field kd_jax reads, with defaults. Experiment modules override these."""
  c = ml_collections.ConfigDict()
  c.experiment = "unnamed"
  c.dataset = ml_collections.ConfigDict(dict(
      name="fashion_mnist",
      train_examples=0,   # 0 = the whole training split; >0 takes the first N (smoke runs)
      test_examples=0,    # 0 = the whole test split
      crop_padding=0,     # random crop after zero-padding by this many pixels (0 = off)
      flip=False,         # random horizontal flip
      # Classes left out of the student's transfer set (baseline and distilled
      # student; the teacher sees them): Hinton et al. 2015 §3's "omitted class".
      omit_classes=(),
  ))
  c.teacher = ml_collections.ConfigDict(dict(
      model="cnn",
      kwargs=ml_collections.ConfigDict(),
      checkpoint="",      # a directory with a saved teacher to load instead of training
      seed=0,
      train=training_config(),
  ))
  c.student = ml_collections.ConfigDict(dict(model="mlp", kwargs=ml_collections.ConfigDict()))
  c.method = "kd"
  c.divergence = "kl"
  c.divergence_params = ml_collections.ConfigDict()  # e.g. {"beta": 0.5} for js
  c.temperature = ml_collections.ConfigDict(dict(schedule="constant", init=4.0))
  c.alpha = 0.5           # weight of the hard-label CE; a number or a schedule dict
  c.dkd = ml_collections.ConfigDict(dict(alpha=1.0, beta=8.0, warmup_steps=0))
  c.feature_weight = 1.0  # weight of the feature/relational term (fitnets, at, rkd, sp, pkt)
  # student layer -> teacher layer; empty = the method's default pairing (see methods.py).
  c.feature_layers = ml_collections.ConfigDict()
  c.seed = 0
  c.train = training_config()
  # The students' budget in optimiser steps when > 0 (instead of train.epochs): equal
  # budgets for students whose training sets differ in size (a teacher-written set).
  c.train.steps = 0
  c.baseline = True       # also train the student from scratch with the same budget
  # A language-model teacher's outputs cached as their top k logits per token (0: full
  # logits), compared with the student as `mode` says (kd_jax/topk.py: renormalize, tail).
  c.topk = ml_collections.ConfigDict(dict(k=0, mode="tail"))
  # > 0: a language model's kd loss through the output heads in chunks of this many tokens
  # (losses.fused_linear_kd_loss: the [tokens, vocab] logits are never made); 0: naive.
  c.loss_chunk_size = 0
  # "baseline": the student starts from the trained baseline (the same seed's student
  # trained without a teacher, e.g. SFT before on-policy distillation) instead of scratch.
  c.student_init = "scratch"
  c.teacher_cache = "auto"  # auto = memory when the student sees fixed (un-augmented) views
  # True: under augmentation the teacher sees the un-augmented image while the student sees
  # its augmented view, so the teacher's outputs can be cached (see kd_jax/teacher_cache.py).
  # Cheaper, but gives up consistent teaching (Beyer et al. 2022): the targets no longer
  # match the student's view, which costs accuracy in long augmented runs.
  c.teacher_fixed_views = False
  c.precision = "fp32"
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=2))  # 0 = each epoch
  c.log_every_steps = 50
  return c


def load_sibling(path: str, name: str) -> types.ModuleType:
  """The experiment module ``name``.py next to ``path``, loaded by its file path.

  ``--config=`` loads an experiment module by path, so ``import experiments...``
  inside it works only from the repository root; modules that build on another
  (e.g. every Fashion-MNIST method on ``kd.py``) use this instead::

      kd = config.load_sibling(__file__, "kd")
  """
  file = os.path.join(os.path.dirname(os.path.abspath(path)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"kd_jax_experiment_{name}", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def arithmetic_dataset(*, train_examples: int = 8000, test_examples: int = 500, steps: int = 3,
                       digits: int = 2, ops: str = "+-", seed: int = 0, max_len: int = 64,
                       ood_examples: int = 0) -> ml_collections.ConfigDict:
  """The arithmetic reasoning task's data (kd_jax/data/arithmetic.py) as a ``dataset`` block.

  ``ood_examples`` > 0 adds two harder held-out splits of that size (one more step,
  one more digit) on which the final reports give ``ood_exact_match``.
  """
  return ml_collections.ConfigDict(dict(
      name="arithmetic", train_examples=train_examples, test_examples=test_examples,
      steps=steps, digits=digits, ops=ops,
      seed=seed,          # the problem generator's seed (the split of a problem is its hash)
      max_len=max_len,    # tokens per (prompt, response) row
      ood_examples=ood_examples))


def text_dataset(*, name: str = "fortunes", vocab_size: int = 8192, max_len: int = 128,
                 train_examples: int = 0, test_examples: int = 0) -> ml_collections.ConfigDict:
  """A text corpus (kd_jax/data/text.py) as a ``dataset`` block: a BPE tokenizer of
  ``vocab_size`` trained on its training documents, packed rows of ``max_len`` tokens;
  ``train_examples`` / ``test_examples`` > 0 keep the first rows (smoke runs)."""
  return ml_collections.ConfigDict(dict(name=name, vocab_size=vocab_size, max_len=max_len,
                                        train_examples=train_examples,
                                        test_examples=test_examples))


def sentence_dataset(*, max_len: int = 48, bible_verses: int = 0, train_examples: int = 0,
                     test_examples: int = 0, probe_examples: int = 4000
                     ) -> ml_collections.ConfigDict:
  """English sentences labelled by fortune collection (kd_jax/data/sentences.py) as a
  ``dataset`` block, for sentence encoders: fortunes (and ``bible_verses`` KJV verses in
  the training split) tokenised by the teacher's WordPiece and truncated at ``max_len``
  tokens; ``train_examples`` / ``test_examples`` > 0 keep the first sentences (smoke
  runs); the linear probe and kNN train on the first ``probe_examples`` labelled
  training sentences (0: all)."""
  return ml_collections.ConfigDict(dict(
      name="fortune_sentences", max_len=max_len, bible_verses=bible_verses,
      train_examples=train_examples, test_examples=test_examples,
      probe_examples=probe_examples))


def encoder_config(*, relation_heads: int = 12, init_layers=(0, 2, 4)) -> ml_collections.ConfigDict:
  """Sentence-encoder distillation settings: MiniLM's relation heads (they divide both
  models' widths) and the teacher layers a ``student_init="teacher_layers"`` student copies."""
  return ml_collections.ConfigDict(dict(relation_heads=relation_heads,
                                        init_layers=tuple(init_layers)))


def sampling_config(*, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
                    num_samples: int = 4, pass_at_k=(1, 4)) -> ml_collections.ConfigDict:
  """How language-model answers are sampled for pass@k (greedy decoding gives exact match).

  Its own temperature: ``temperature`` of the config is the distillation loss's.
  """
  return ml_collections.ConfigDict(dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                        num_samples=num_samples, pass_at_k=tuple(pass_at_k)))


def gkd_config(*, fraction: float = 0.5, beta: float = 0.5,
               temperature: float = 1.0) -> ml_collections.ConfigDict:
  """On-policy distillation (``method="gkd"``): a fraction λ of the batches is sampled by the
  student at ``temperature``; every batch is scored with T²·JSD(β) against the teacher."""
  return ml_collections.ConfigDict(dict(fraction=fraction, beta=beta, temperature=temperature))


def dpo_config(*, beta: float = 0.1, pairs: str = "ranked", k: int = 4, temperature: float = 1.0,
               teacher_weight: float = 0.1, learning_rate: float = 1e-4
               ) -> ml_collections.ConfigDict:
  """Rank-based distillation (``method="dpo"``, from the trained baseline): the starting
  student samples ``k`` answers per training prompt at ``temperature``; ``pairs`` =
  ``"ranked"`` ranks them by verifier + ``teacher_weight`` × the teacher's mean token
  log-likelihood (best chosen, worst rejected), ``"teacher"`` pairs a verified teacher
  answer (chosen, the ``transfer`` block's sampling) with the student's (rejected). DPO's
  ``beta`` scales the log-ratio margin; ``learning_rate`` is the DPO phase's peak rate (the
  SFT start trains with ``train.learning_rate``)."""
  return ml_collections.ConfigDict(dict(beta=beta, pairs=pairs, k=k, temperature=temperature,
                                        teacher_weight=teacher_weight,
                                        learning_rate=learning_rate))


def rl_config(*, k: int = 4, verifier_weight: float = 1.0, teacher_weight: float = 0.1,
              teacher_reward: str = "log_ratio", kl_coef: float = 0.04, teacher_mix: float = 0.0,
              learning_rate: float = 1e-4) -> ml_collections.ConfigDict:
  """Policy-gradient distillation (``method="grpo"`` or ``"minillm"``, from the trained
  baseline, which is also the frozen reference of the KL penalty ``kl_coef``).

  Every step samples ``k`` answers (temperature 1) to each of ``train.batch_size / k``
  prompts. GRPO's reward of an answer is ``verifier_weight`` × the verifier's verdict +
  ``teacher_weight`` × the teacher's ``teacher_reward`` (``"log_ratio"``: the mean token
  log p_T − log q_S, MiniLLM's reverse-KL reward; ``"log_likelihood"``: the mean log p_T);
  MiniLLM's reward is the token log-ratio alone, and ``teacher_mix`` = α > 0 samples from
  α·teacher + (1 − α)·student (its teacher-mixed sampling; GRPO samples from the
  student). ``learning_rate`` is the phase's peak rate (the SFT start keeps
  ``train.learning_rate``)."""
  return ml_collections.ConfigDict(dict(
      k=k, verifier_weight=verifier_weight, teacher_weight=teacher_weight,
      teacher_reward=teacher_reward, kl_coef=kl_coef, teacher_mix=teacher_mix,
      learning_rate=learning_rate))


# The blocks of one method, absent from other configs, and their defaults (a finished run
# without the block is the same run as one with it at these defaults: kd_jax/workdir.py).
METHOD_BLOCKS = {"gkd": gkd_config, "dpo": dpo_config, "rl": rl_config}


def transfer_config(*, k: int = 4, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
                    label_free: bool = False) -> ml_collections.ConfigDict:
  """How the teacher writes a transfer set (kd_jax/transfer.py) for ``student_data="transfer"``.

  ``k`` samples per gold training prompt at the sampling settings; the verified
  ones are kept (``label_free``: the samples agreeing with the majority answer).
  """
  return ml_collections.ConfigDict(dict(
      k=k, label_free=label_free,
      sampling=dict(temperature=temperature, top_k=top_k, top_p=top_p)))


def with_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` with another ``method`` (the teacher and baseline train with 'none')."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.method = method
  return copy


def resolve_field(config: ml_collections.ConfigDict, key: str) -> tuple[Any, type]:
  """The current value of the dotted field ``key`` and its type.

  Raises:
    ConfigError: no such field, naming the first unknown part, the valid
      fields at that level and the closest match.
  """
  node, path = config, []
  for name in key.split("."):
    where = ".".join(path) or "the top level"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ConfigError(key, f"{where} is a {type(node).__name__}, not a group of fields, "
                        f"so it has no field {name!r}.")
    if name not in node:
      close = difflib.get_close_matches(name, list(node.keys()), n=1)
      hint = f" Did you mean {close[0]!r}?" if close else ""
      raise ConfigError(key, f"no field {name!r} at {where}.{hint} Valid fields there: "
                        f"{', '.join(sorted(node.keys())) or '(none)'}.")
    parent, node = node, node[name]
    path.append(name)
  return node, parent.get_type(name)


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(field, f"{field}: unknown value {value!r}; valid choices: "
                      f"{', '.join(map(str, choices))}")


def _positive(field: str, value, *, integer: bool = False) -> None:
  kind = int if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
    raise ConfigError(field, f"{field} must be a positive {'int' if integer else 'number'}, "
                      f"got {value!r}")


def _validate_training(prefix: str, t) -> None:
  _positive(f"{prefix}.epochs", t.epochs)
  _positive(f"{prefix}.batch_size", t.batch_size, integer=True)
  _positive(f"{prefix}.eval_batch_size", t.eval_batch_size, integer=True)
  _choice(f"{prefix}.optimizer", t.optimizer, OPTIMIZERS)
  _positive(f"{prefix}.learning_rate", t.learning_rate)
  _choice(f"{prefix}.lr_schedule", t.lr_schedule, LR_SCHEDULES)
  if not 0 <= t.warmup_fraction < 1:
    raise ConfigError(f"{prefix}.warmup_fraction",
                      f"{prefix}.warmup_fraction must be in [0, 1), got {t.warmup_fraction}")
  for field in ("weight_decay", "grad_clip_norm"):
    if t[field] < 0:
      raise ConfigError(f"{prefix}.{field}", f"{prefix}.{field} must be >= 0, got {t[field]}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field; raises ``ConfigError`` (a ``ValueError``) naming the field and choices.

  Pure Python (no tracing or compilation). Checks that need the models' shapes —
  feature layer names — are in :func:`kd_jax.methods.feature_pairs`, which uses
  ``jax.eval_shape`` only.
  """
  _choice("dataset.name", config.dataset.name, DATASETS)
  if config.dataset.name in LANGUAGE_DATASETS:
    _validate_language_task(config)
  elif config.dataset.name in SENTENCE_DATASETS:
    _validate_sentence_task(config)
  else:
    _validate_image_task(config)
  _validate_training("teacher.train", config.teacher.train)
  _validate_training("train", config.train)
  _nonnegative_ints("train", config.train, ("steps",))
  for field in ("teacher.train", "train"):
    _nonnegative_ints(field, config[field], ("eval_every_steps",))
  _choice("divergence", config.divergence, divergences.NAMES)
  _choice("student_init", config.get("student_init", "scratch"), STUDENT_INITS)
  if (config.get("student_init") == "teacher_layers"
      and config.dataset.name not in SENTENCE_DATASETS):
    raise ConfigError("student_init", "student_init='teacher_layers' copies a sentence "
                      "encoder's layers: it needs a sentence dataset")
  _validate_topk(config)
  _validate_fused(config)
  if config.get("student_init") == "baseline" and not config.baseline:
    raise ConfigError("student_init", "student_init='baseline' starts the student from the "
                      "trained baseline: set baseline=True")
  for field, bounds in (("temperature", dict(positive=True)), ("alpha", dict(unit_interval=True))):
    try:
      schedules.validate(config[field], field=field, **bounds)
    except ValueError as e:
      raise ConfigError(field, str(e)) from None
  for field in ("alpha", "beta"):
    if config.dkd[field] < 0:
      raise ConfigError(f"dkd.{field}", f"dkd.{field} must be >= 0, got {config.dkd[field]}")
  if config.feature_weight < 0:
    raise ConfigError("feature_weight", f"feature_weight must be >= 0, got {config.feature_weight}")
  _choice("precision", config.precision, PRECISIONS)
  _choice("teacher_cache", config.teacher_cache, TEACHER_CACHES)
  if not isinstance(config.teacher_fixed_views, bool):
    raise ConfigError("teacher_fixed_views", "teacher_fixed_views must be True or False, got "
                      f"{config.teacher_fixed_views!r}")
  if config.teacher_fixed_views and config.teacher_cache == "none":
    raise ConfigError("teacher_fixed_views",
        "teacher_fixed_views=True needs cached teacher outputs (they are the un-augmented "
        "views); set teacher_cache to 'auto', 'memory' or 'disk'.")
  for field in ("data", "model"):
    value = config.mesh[field]
    if value == 0 or value < -1:
      raise ConfigError(f"mesh.{field}",
                        f"mesh.{field} must be a positive int or -1 (the rest), got {value}")
  if config.checkpoint.every_steps < 0:
    raise ConfigError("checkpoint.every_steps", "checkpoint.every_steps must be >= 0, got "
                      f"{config.checkpoint.every_steps}")
  if config.checkpoint.keep < 1:
    raise ConfigError("checkpoint.keep", f"checkpoint.keep must be >= 1, got {config.checkpoint.keep}")


def _nonnegative_ints(prefix: str, node, fields, minimum: int = 0) -> None:
  for field in fields:
    value = node[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
      raise ConfigError(f"{prefix}.{field}",
                        f"{prefix}.{field} must be an int >= {minimum}, got {value!r}")


def _validate_image_task(config) -> None:
  _nonnegative_ints("dataset", config.dataset, ("train_examples", "test_examples", "crop_padding"))
  omit = config.dataset.omit_classes
  if not isinstance(omit, (tuple, list)) or not all(
      isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in omit):
    raise ConfigError("dataset.omit_classes",
                      f"dataset.omit_classes must be a tuple of class ids >= 0, got {omit!r}")
  for role in ("teacher", "student"):
    _choice(f"{role}.model", config[role].model, models.IMAGE_MODELS)
  _choice("method", config.method, METHODS)
  augmented = config.dataset.crop_padding > 0 or config.dataset.flip
  if (augmented and config.teacher_cache in ("memory", "disk", "shared")
      and not config.teacher_fixed_views):
    raise ConfigError("teacher_cache",
        f"teacher_cache={config.teacher_cache!r} with augmentation (dataset.crop_padding/"
        "dataset.flip): the teacher must see the same random view as the student "
        "(consistent teaching, Beyer et al. 2022), so its outputs cannot be cached. "
        "Use teacher_cache='none' or 'auto', turn augmentation off, or set "
        "teacher_fixed_views=True (the teacher then sees the un-augmented image).")


def _validate_sentence_task(config) -> None:
  d = config.dataset
  _nonnegative_ints("dataset", d, ("train_examples", "test_examples", "bible_verses",
                                   "probe_examples"))
  _nonnegative_ints("dataset", d, ("max_len",), 4)
  for role in ("teacher", "student"):
    _choice(f"{role}.model", config[role].model, models.ENCODER_MODELS)
  _choice("method", config.method, methods.EMBEDDING_METHODS)
  if not config.teacher.checkpoint:
    raise ConfigError("teacher.checkpoint", "a sentence encoder's teacher is pretrained: set "
                      "teacher.checkpoint (e.g. 'all-MiniLM-L6-v2', or a BERT directory)")
  if config.baseline:
    raise ConfigError("baseline", "baseline=True trains the student on hard labels, which "
                      "sentences do not have: set baseline=False (the from-scratch student is "
                      "student_init='scratch' with the same method)")
  _choice("student_init", config.get("student_init", "scratch"), ("scratch", "teacher_layers"))
  if config.method == "distilbert":
    _choice("divergence", config.divergence, ("cosine", "mse"))
  e = config.get("encoder")
  if e is None:
    raise ConfigError("encoder", "a sentence-encoder config needs an encoder block "
                      "(kd_jax.config.encoder_config())")
  _nonnegative_ints("encoder", e, ("relation_heads",), 1)
  if not e.init_layers or not all(isinstance(i, int) and i >= 0 for i in e.init_layers):
    raise ConfigError("encoder.init_layers", "encoder.init_layers must be a non-empty tuple "
                      f"of teacher layer indices, got {e.init_layers!r}")


def _validate_dpo(config) -> None:
  p = config.get("dpo")
  if p is None:
    raise ConfigError("dpo", "method='dpo' needs a dpo block (kd_jax.config.dpo_config())")
  _require_sft_start(config)
  _choice("dpo.pairs", p.pairs, PREFERENCE_PAIRS)
  _positive("dpo.beta", p.beta)
  _positive("dpo.learning_rate", p.learning_rate)
  _positive("dpo.temperature", p.temperature)
  _nonnegative_ints("dpo", p, ("k",), 2 if p.pairs == "ranked" else 1)
  if p.teacher_weight < 0:
    raise ConfigError("dpo.teacher_weight", f"dpo.teacher_weight must be >= 0, got "
                      f"{p.teacher_weight}")


def _require_sft_start(config) -> None:
  """A method that improves the trained baseline (SFT) student, its reference."""
  method = config.method
  if config.get("student_init") != "baseline" or not config.baseline:
    raise ConfigError("student_init", f"method={method!r} starts from the trained SFT student "
                      "(its reference): set student_init='baseline' and baseline=True")
  if config.get("student_data", "gold") != "gold":
    raise ConfigError("student_data", f"method={method!r} trains on its own samples: leave "
                      "student_data='gold'")


def _validate_rl(config) -> None:
  r = config.get("rl")
  if r is None:
    raise ConfigError("rl", f"method={config.method!r} needs an rl block "
                      "(kd_jax.config.rl_config())")
  _require_sft_start(config)
  grpo = config.method == "grpo"
  # GRPO's advantages compare the k samples of a prompt: one sample has no group.
  _nonnegative_ints("rl", r, ("k",), 2 if grpo else 1)
  if config.train.batch_size % r.k:
    raise ConfigError("rl.k", f"train.batch_size={config.train.batch_size} rows must be a "
                      f"whole number of prompts of rl.k={r.k} samples")
  _choice("rl.teacher_reward", r.teacher_reward, RL_TEACHER_REWARDS)
  for field in ("verifier_weight", "teacher_weight", "kl_coef"):
    if r[field] < 0:
      raise ConfigError(f"rl.{field}", f"rl.{field} must be >= 0, got {r[field]}")
  if grpo and not (r.verifier_weight or r.teacher_weight):
    raise ConfigError("rl.verifier_weight", "method='grpo' needs a reward: rl.verifier_weight "
                      "or rl.teacher_weight > 0")
  _positive("rl.learning_rate", r.learning_rate)
  if not 0 <= r.teacher_mix < 1:
    raise ConfigError("rl.teacher_mix", f"rl.teacher_mix must be in [0, 1), got {r.teacher_mix}")
  if grpo and r.teacher_mix:
    raise ConfigError("rl.teacher_mix", "rl.teacher_mix is MiniLLM's teacher-mixed sampling: "
                      "method='grpo' samples from the student (set it to 0)")
  if config.teacher_cache not in ("auto", "none") or config.get("teacher_fixed_views", False):
    raise ConfigError("teacher_cache", f"method={config.method!r} scores new samples every "
                      "step: the teacher runs live (teacher_cache='auto' or 'none', "
                      "teacher_fixed_views=False)")


def _validate_topk(config) -> None:
  t = config.get("topk")
  if t is None:
    return
  _nonnegative_ints("topk", t, ("k",))
  _choice("topk.mode", t.mode, topk.MODES)
  if not t.k:
    return
  _require_language_kd(config, "topk.k", f"topk.k={t.k}",
                       "caches a language-model teacher's top-k logits")
  if config.teacher_cache == "none":
    raise ConfigError("teacher_cache", f"topk.k={t.k} is a teacher cache: teacher_cache='none' "
                      "contradicts it")


def _require_language_kd(config, field: str, setting: str, what: str) -> None:
  """``setting`` (e.g. ``topk.k=4``) needs method='kd' on a language dataset with a
  probability divergence."""
  if config.dataset.name not in LANGUAGE_DATASETS or config.method != "kd":
    raise ConfigError(field, f"{setting} {what}: it needs method='kd' on a language dataset")
  if config.divergence not in divergences.PROBABILITY_DIVERGENCES:
    raise ConfigError("divergence", f"{setting} needs a probability divergence, got "
                      f"{config.divergence!r}; valid: "
                      f"{', '.join(sorted(divergences.PROBABILITY_DIVERGENCES))}")


def _validate_fused(config) -> None:
  chunk = config.get("loss_chunk_size", 0)
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
    raise ConfigError("loss_chunk_size", f"loss_chunk_size must be an int >= 0, got {chunk!r}")
  if not chunk:
    return
  field = f"loss_chunk_size={chunk}"
  _require_language_kd(config, "loss_chunk_size", field,
                       "is the language-model kd loss through the output heads")
  if (config.get("topk") or {}).get("k", 0) or config.teacher_cache in ("memory", "disk",
                                                                         "shared"):
    raise ConfigError("loss_chunk_size", f"{field} runs the teacher in every step (its hidden "
                      "states, not its logits): it cannot be combined with topk.k or "
                      f"teacher_cache={config.teacher_cache!r}")


def _validate_text_task(config) -> None:
  d = config.dataset
  _nonnegative_ints("dataset", d, ("train_examples", "test_examples"))
  _nonnegative_ints("dataset", d, ("max_len",), 8)
  _nonnegative_ints("dataset", d, ("vocab_size",), 259)   # the 256 bytes and 3 special tokens
  for role in ("teacher", "student"):
    _choice(f"{role}.model", config[role].model, models.SEQUENCE_MODELS)
  _choice("method", config.method, TEXT_METHODS)
  _choice("student_data", config.get("student_data", "gold"), ("gold",))


def _validate_language_task(config) -> None:
  if config.dataset.name in TEXT_DATASETS:
    _validate_text_task(config)
    return
  d = config.dataset
  _nonnegative_ints("dataset", d, ("train_examples", "test_examples", "steps", "digits"), 1)
  _nonnegative_ints("dataset", d, ("seed",))
  if "ood_examples" in d:
    _nonnegative_ints("dataset", d, ("ood_examples",))
  _nonnegative_ints("dataset", d, ("max_len",), 8)
  if not d.ops or set(d.ops) - set("+-*"):
    raise ConfigError("dataset.ops", f"dataset.ops must be a non-empty subset of '+-*', "
                      f"got {d.ops!r}")
  for role in ("teacher", "student"):
    _choice(f"{role}.model", config[role].model, models.SEQUENCE_MODELS)
  _choice("method", config.method, LANGUAGE_METHODS)
  _choice("student_data", config.get("student_data", "gold"), STUDENT_DATA)
  if config.method == "gkd":
    g = config.get("gkd")
    if g is None:
      raise ConfigError("gkd", "method='gkd' needs a gkd block (kd_jax.config.gkd_config())")
    for field in ("fraction", "beta"):
      if not 0 <= g[field] <= 1:
        raise ConfigError(f"gkd.{field}", f"gkd.{field} must be in [0, 1], got {g[field]}")
    if g.temperature <= 0:
      raise ConfigError("gkd.temperature", f"gkd.temperature must be > 0, got {g.temperature}")
  if config.method == "dpo":
    _validate_dpo(config)
  if config.method in RL_METHODS:
    _validate_rl(config)
  if config.get("student_data") == "transfer" or (
      config.method == "dpo" and config.dpo.pairs == "teacher"):
    t = config.get("transfer")
    if t is None:
      raise ConfigError("transfer", "student_data='transfer' and dpo.pairs='teacher' need a "
                        "transfer block (kd_jax.config.transfer_config())")
    _nonnegative_ints("transfer", t, ("k",), 1)
    s = t.sampling
    if s.temperature <= 0 or s.top_k < 0 or not 0 < s.top_p <= 1:
      raise ConfigError("transfer.sampling", "transfer.sampling.temperature must be > 0 (k "
                        "samples must differ), top_k >= 0 and top_p in (0, 1]; got "
                        f"{s.to_dict()}")
  sampling = config.get("sampling")
  if sampling is None:
    raise ConfigError("sampling", "a language-model config needs a sampling block "
                      "(kd_jax.config.sampling_config())")
  if sampling.temperature < 0 or sampling.top_k < 0 or not 0 < sampling.top_p <= 1:
    raise ConfigError("sampling", "sampling.temperature must be >= 0, sampling.top_k >= 0 and "
                      f"sampling.top_p in (0, 1]; got {sampling.to_dict()}")
  _nonnegative_ints("sampling", sampling, ("num_samples",), 1)
  bad = [k for k in sampling.pass_at_k if not isinstance(k, int) or not 1 <= k <= sampling.num_samples]
  if bad:
    raise ConfigError("sampling.pass_at_k", f"sampling.pass_at_k values must be ints in [1, "
                      f"sampling.num_samples={sampling.num_samples}], got {list(sampling.pass_at_k)}")
