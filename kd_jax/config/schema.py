"""The experiment config's schema: defaults shared by every experiment module, and blocks.

Experiment modules (``experiments/<group>/<name>.py``) start from :func:`base_config`
and override what they study; a task or method that reads a block of its own gets it
from a helper here (``dpo_config()``, ``sampling_config()``, ...). The schema imports
nothing of kd_jax but errors (no JAX): validation asks the task and method plug-ins
(:func:`kd_jax.run.validation.validate`).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import types
from typing import Any

import ml_collections

from kd_jax.core.errors import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
PRECISIONS = ("fp32", "bf16")
# "shared": as disk, in a directory every run shares (kd_jax/engine/teacher_cache.py).
TEACHER_CACHES = ("auto", "none", "memory", "disk", "shared")
# The student_init values that start the student from a trained student of the same seed,
# shared between runs (the pipeline trains it once): the baseline, or the baseline
# fine-tuned on the teacher's transfer set ("seqkd").
WARM_STARTS = ("baseline", "seqkd")


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
      # Mix each training view with another example's (a Beta(a, a) share; 0 = off; one of
      # the two): the labels are mixed alike, and a live teacher reads the same mixed view.
      mixup=0.0,
      cutmix=0.0,
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
  # Also train the student from scratch with the same budget (or, with baseline_steps, the
  # base that warm-started students start from).
  c.baseline = True
  # > 0: the baseline trains this many steps instead of the students' budget: the base that
  # warm-started students (student_init "baseline" or "seqkd") start from, trained to its own
  # budget (the reasoning R1 table's weak base). It is then a start, not the same-budget
  # control, so validation refuses it without a warm start.
  c.baseline_steps = 0
  # A language-model teacher's outputs cached as their top k logits per token (0: full
  # logits), compared with the student as `mode` says (kd_jax/objectives/topk.py: renormalize, tail).
  c.topk = ml_collections.ConfigDict(dict(k=0, mode="tail"))
  # > 0: a language model's kd loss through the output heads in chunks of this many tokens
  # (losses.fused_linear_kd_loss: the [tokens, vocab] logits are never made); 0: naive.
  c.loss_chunk_size = 0
  # "baseline": the student starts from the trained baseline (the same seed's student
  # trained without a teacher, e.g. SFT before on-policy distillation) instead of scratch;
  # "seqkd" (tasks with transfer sets): from that baseline fine-tuned on the teacher's
  # transfer set (R1's distilled student), e.g. on-policy distillation after seqkd;
  # "teacher" (diffusion): a copy of the trained teacher, e.g. a few-step student.
  c.student_init = "scratch"
  c.teacher_cache = "auto"  # auto = memory when the student sees fixed (un-augmented) views
  # True: under augmentation the teacher sees the un-augmented image while the student sees
  # its augmented view, so the teacher's outputs can be cached (see kd_jax/engine/teacher_cache.py).
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


def reasoning_dataset(*, answers_examples: int = 4000, gold_examples: int = 500,
                      pool_examples: int = 16000, test_examples: int = 500,
                      ood_examples: int = 500, terms: int = 4, digits: int = 2,
                      minus: float = 0.4, seed: int = 0, max_len: int = 56,
                      baseline_data: str = "answers") -> ml_collections.ConfigDict:
  """The reasoning testbed's data (kd_jax/data/reasoning.py) as a ``dataset`` block.

  The student's original data are ``answers_examples`` problems with final answers only;
  the teacher learns from ``gold_examples`` step-by-step solutions and writes traces for
  ``pool_examples`` unlabelled prompts (``student_data="transfer"``); ``ood_examples`` > 0
  adds a held-out split with one operand more (``ood_exact_match["terms+1"]``).
  The baseline (and every student that starts from it) trains on ``baseline_data``:
  ``"answers"`` or ``"gold"``.
  """
  return ml_collections.ConfigDict(dict(
      name="reasoning", answers_examples=answers_examples, gold_examples=gold_examples,
      pool_examples=pool_examples, test_examples=test_examples, ood_examples=ood_examples,
      terms=terms, digits=digits, minus=minus,
      seed=seed,          # the problem generator's seed (the split of a problem is its hash)
      max_len=max_len,    # tokens per (prompt, response) training row
      baseline_data=baseline_data))


def diffusion_dataset(*, train_examples: int = 0, test_examples: int = 0,
                      conditional: bool = False, label_dropout: float = 0.1,
                      parameterization: str = "v", guidance: float = 0.0, samples: int = 1000,
                      sample_steps=(256, 16, 4, 2, 1), student_sample_steps=(),
                      classifier_examples: int = 0, seed: int = 0
                      ) -> ml_collections.ConfigDict:
  """Fashion-MNIST images for a denoiser (kd_jax/tasks/diffusion.py) as a ``dataset`` block.

  ``train_examples`` / ``test_examples`` > 0 keep the first images (smoke runs); the
  network predicts ``parameterization`` ("v" or "x"); ``conditional``: class labels in,
  each dropped to the null label with probability ``label_dropout`` in training, and
  sampled with classifier-free ``guidance``; every trained model is reported on
  ``samples`` images drawn from fixed noise (``seed``) with DDIM at each of
  ``sample_steps``; the students at each of ``student_sample_steps`` instead, when given.
  Quality is measured in the features of a classifier trained on the first
  ``classifier_examples`` training images (0: all of them, the tables' ruler; smoke runs
  use fewer).
  """
  return ml_collections.ConfigDict(dict(
      name="fashion_mnist_diffusion", train_examples=train_examples,
      test_examples=test_examples, conditional=conditional, label_dropout=label_dropout,
      parameterization=parameterization, guidance=guidance, samples=samples,
      sample_steps=tuple(sample_steps), student_sample_steps=tuple(student_sample_steps),
      classifier_examples=classifier_examples, seed=seed))


def progressive_config(*, start_steps: int = 256, final_steps: int = 1
                       ) -> ml_collections.ConfigDict:
  """Progressive distillation (``method="progressive"``): rounds that halve the sampler's
  steps from the teacher's ``start_steps`` to ``final_steps`` (powers of 2), each round
  ``train.steps`` / rounds steps (kd_jax/methods/progressive.py)."""
  return ml_collections.ConfigDict(dict(start_steps=start_steps, final_steps=final_steps))


def adversarial_config(*, student_times=(1.0, 0.75, 0.5, 0.25), distillation_weight: float = 2.5,
                       discriminator_learning_rate: float = 1e-4,
                       discriminator_width: int = 32) -> ml_collections.ConfigDict:
  """Adversarial diffusion distillation (``method="adversarial"``): the student's times, the
  score-distillation weight λ, and the discriminator's learning rate and first width
  (kd_jax/methods/adversarial.py)."""
  return ml_collections.ConfigDict(dict(
      student_times=tuple(student_times), distillation_weight=distillation_weight,
      discriminator_learning_rate=discriminator_learning_rate,
      discriminator_width=discriminator_width))


def one_step_kd_config(*, pairs: int = 10000, teacher_steps: int = 256
                       ) -> ml_collections.ConfigDict:
  """One-step knowledge distillation (``method="one_step_kd"``): the teacher's DDIM samples
  at ``teacher_steps`` from ``pairs`` fixed noise draws, cached, regressed by the student
  in one step (kd_jax/methods/one_step_kd.py)."""
  return ml_collections.ConfigDict(dict(pairs=pairs, teacher_steps=teacher_steps))


def consistency_config(*, grid: int = 64, ema: float = 0.95, distance: str = "l2",
                       sigma_data: float = 0.5) -> ml_collections.ConfigDict:
  """Consistency distillation (``method="consistency"``): one teacher DDIM step between the
  neighbours of a ``grid``-point time grid, an EMA target network (rate ``ema``), the
  ``distance`` ("l2" or "pseudo_huber") and the data scale ``sigma_data`` of the skip
  parameterisation (kd_jax/methods/consistency.py)."""
  return ml_collections.ConfigDict(dict(grid=grid, ema=ema, distance=distance,
                                        sigma_data=sigma_data))


def text_dataset(*, name: str = "fortunes", vocab_size: int = 8192, max_len: int = 128,
                 train_examples: int = 0, test_examples: int = 0,
                 student_vocab_size: int = 0) -> ml_collections.ConfigDict:
  """A text corpus (kd_jax/data/text.py) as a ``dataset`` block: a BPE tokenizer of
  ``vocab_size`` trained on its training documents, packed rows of ``max_len`` tokens;
  ``train_examples`` / ``test_examples`` > 0 keep the first rows (smoke runs).
  ``student_vocab_size`` > 0 gives the student a tokenizer of its own, a BPE of that
  many tokens (259: the bytes and the three specials), while the teacher keeps
  ``vocab_size``'s (or its checkpoint's); 0: the student shares the teacher's."""
  return ml_collections.ConfigDict(dict(name=name, vocab_size=vocab_size, max_len=max_len,
                                        train_examples=train_examples,
                                        test_examples=test_examples,
                                        student_vocab_size=student_vocab_size))


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


def uld_config(*, top_k: int = 0) -> ml_collections.ConfigDict:
  """The ULD term of the cross-tokenizer methods (``uld``, and ``aligned_kd`` where the next
  token differs): ``top_k`` > 0 compares each side's ``top_k`` largest probabilities and
  its remaining mass as one bucket (a lower bound of exact ULD within twice the smaller
  tail, logged as ``uld_tail_bound``); 0 is exact ULD (kd_jax/objectives/cross_tokenizer.py).
  Without the block: exact."""
  return ml_collections.ConfigDict(dict(top_k=top_k))


def gkd_config(*, fraction: float = 0.5, beta: float = 0.5, temperature: float = 1.0,
               learning_rate: float = 0.0, steps: int = 0) -> ml_collections.ConfigDict:
  """On-policy distillation (``method="gkd"``): a fraction λ of the batches is sampled by the
  student at ``temperature``; every batch is scored with T²·JSD(β) against the teacher.
  From a warm start (``student_init`` ``"baseline"`` or ``"seqkd"``), ``learning_rate``
  and ``steps`` > 0 set the phase's peak rate and length (0: ``train``'s)."""
  return ml_collections.ConfigDict(dict(fraction=fraction, beta=beta, temperature=temperature,
                                        learning_rate=learning_rate, steps=steps))


def dpo_config(*, beta: float = 0.1, pairs: str = "ranked", k: int = 4, temperature: float = 1.0,
               teacher_weight: float = 0.1, learning_rate: float = 1e-4, nll_weight: float = 0.0,
               correct_chosen: bool = True) -> ml_collections.ConfigDict:
  """Rank-based distillation (``method="dpo"``, from the trained baseline): the starting
  student samples ``k`` answers per training prompt at ``temperature``; ``pairs`` =
  ``"ranked"`` ranks them by verifier + ``teacher_weight`` × the teacher's mean token
  log-likelihood (best chosen, worst rejected), ``"teacher"`` pairs a verified teacher
  answer (chosen, the ``transfer`` block's sampling) with the student's (rejected). DPO's
  ``beta`` scales the log-ratio margin; ``learning_rate`` is the DPO phase's peak rate (the
  SFT start trains with ``train.learning_rate``); ``nll_weight`` > 0 adds that times the
  chosen answers' per-token NLL (Pang et al. 2024, against likelihood displacement);
  ``correct_chosen``: a ranked pair's chosen answer must pass the verifier (False ranks
  by the reward alone, for a start that is never right, as the smoke configs' is)."""
  return ml_collections.ConfigDict(dict(beta=beta, pairs=pairs, k=k, temperature=temperature,
                                        teacher_weight=teacher_weight,
                                        learning_rate=learning_rate, nll_weight=nll_weight,
                                        correct_chosen=correct_chosen))


def rl_config(*, k: int = 4, verifier_weight: float = 1.0, teacher_weight: float = 0.1,
              teacher_reward: str = "log_ratio", kl_coef: float = 0.04, teacher_mix: float = 0.0,
              learning_rate: float = 1e-4, steps: int = 0) -> ml_collections.ConfigDict:
  """Policy-gradient distillation (``method="grpo"`` or ``"minillm"``, from the trained
  baseline, which is also the frozen reference of the KL penalty ``kl_coef``).

  Every step samples ``k`` answers (temperature 1) to each of ``train.batch_size / k``
  prompts. GRPO's reward of an answer is ``verifier_weight`` × the verifier's verdict +
  ``teacher_weight`` × the teacher's ``teacher_reward`` (``"log_ratio"``: the mean token
  log p_T − log q_S, MiniLLM's reverse-KL reward; ``"log_likelihood"``: the mean log p_T);
  MiniLLM's reward is the token log-ratio alone, and ``teacher_mix`` = α > 0 samples from
  α·teacher + (1 − α)·student (its teacher-mixed sampling; GRPO samples from the
  student). ``learning_rate`` is the phase's peak rate and ``steps`` > 0 its number of
  steps (0: ``train.steps``; the SFT start keeps ``train``'s), e.g. to give it the student
  compute of another row (kd_jax/llm/compute.py)."""
  return ml_collections.ConfigDict(dict(
      k=k, verifier_weight=verifier_weight, teacher_weight=teacher_weight,
      teacher_reward=teacher_reward, kl_coef=kl_coef, teacher_mix=teacher_mix,
      learning_rate=learning_rate, steps=steps))


def distillm2_config(*, alpha_teacher: float = 0.1, alpha_student: float = 0.1,
                     temperature: float = 1.0, learning_rate: float = 1e-4
                     ) -> ml_collections.ConfigDict:
  """DistiLLM-2's contrastive distillation (``method="distillm2"``, from the trained baseline):
  the skews α₁ (``alpha_teacher``, the skew KL on the teacher's responses) and α₂
  (``alpha_student``, the skew reverse KL on the starting student's, sampled once at
  ``temperature``); ``learning_rate`` is the phase's peak rate (the SFT start keeps
  ``train.learning_rate``). The teacher's responses are its transfer set (the ``transfer``
  block)."""
  return ml_collections.ConfigDict(dict(alpha_teacher=alpha_teacher, alpha_student=alpha_student,
                                        temperature=temperature, learning_rate=learning_rate))


def sft_config(*, learning_rate: float = 0.0, steps: int = 0) -> ml_collections.ConfigDict:
  """Supervised fine-tuning (``method="none"``) that continues a trained start
  (``student_init="baseline"`` or ``"seqkd"``) at its own peak ``learning_rate`` and for its own ``steps``
  (0: ``train``'s): the same-learning-rate, same-steps control of a warm-started method
  whose block sets them (``dpo.learning_rate``, ``rl.learning_rate``, ...)."""
  return ml_collections.ConfigDict(dict(learning_rate=learning_rate, steps=steps))


# The blocks of one method, absent from other configs, and their defaults (a finished run
# without the block is the same run as one with it at these defaults: kd_jax/config/records.py).
METHOD_BLOCKS = {"gkd": gkd_config, "dpo": dpo_config, "rl": rl_config,
                 "distillm2": distillm2_config, "sft": sft_config,
                 "progressive": progressive_config, "consistency": consistency_config,
                 "one_step_kd": one_step_kd_config, "adversarial": adversarial_config}


def transfer_config(*, k: int = 4, temperature: float = 0.7, top_k: int = 0, top_p: float = 1.0,
                    label_free: bool = False, max_examples: int = 0) -> ml_collections.ConfigDict:
  """How the teacher writes a transfer set (kd_jax/llm/transfer.py) for ``student_data="transfer"``.

  ``k`` samples per training prompt at the sampling settings; the verified
  ones are kept (``label_free``: the samples agreeing with the majority answer).
  ``max_examples`` > 0 trains on the first that many kept samples, in prompt order (all
  of a prompt's before the next prompt's: the transfer-set-size axis of a study, from
  one generation of the full set); 0 keeps all. On a text corpus every sample is kept:
  ``k`` per training document, or ``max_examples`` > 0 documents
  (:mod:`kd_jax.tasks.text_transfer`).
  """
  return ml_collections.ConfigDict(dict(
      k=k, label_free=label_free, max_examples=max_examples,
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
