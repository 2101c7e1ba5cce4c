"""Sentence embeddings as a task of the engine: distil a pretrained sentence encoder.

The teacher is a pretrained BERT sentence encoder (``teacher.checkpoint``, e.g.
``"all-MiniLM-L6-v2"``, :mod:`kd_jax.models.bert`); the student a smaller
:class:`~kd_jax.models.bert.SentenceBert`. The data (:mod:`kd_jax.data.sentences`)
are English sentences tokenised by the teacher's WordPiece, truncated at
``dataset.max_len``, held on the devices as :class:`SentenceData`. A training batch
is the sentences' tokens; its loss mask ``[B, T]`` marks the real tokens of the real
rows (what the hidden-state and attention losses average over). The sentences have
no training targets: the methods (``distilbert``, ``minilm``, kd_jax/methods/sentence.py) only
match the teacher, whose outputs are cacheable (fixed inputs).

Evaluation (:meth:`SentenceEmbedding.evaluator`) embeds the held-out sentences and
the probe set (labelled training sentences) and reports, on the held-out sentences
labelled by fortune collection, ``probe_accuracy`` (the headline: a linear probe,
:func:`kd_jax.tasks.embedding_eval.linear_probe_accuracy`) and ``knn_accuracy`` (k = 10).
A student's report adds its fidelity to the teacher (``mean_cosine`` when the widths
match, ``neighbour_overlap`` of the 10 nearest held-out neighbours), its cost
(``sentences_per_second`` and ``latency_ms`` at batch 1 and 64, tokenisation
included, measured in the same process as the teacher's) and the ratios to the
teacher: ``probe_retention`` and ``speedup``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

import jax
import numpy as np
from flax import nnx

from kd_jax import models
from kd_jax.tasks import embedding_eval
from kd_jax.core import parallel
from kd_jax.engine import step
from kd_jax.engine.splits import DeviceSplit, device_split
from kd_jax.data import sentences as sentences_lib
from kd_jax.core.errors import ConfigError
from kd_jax.tasks.base import Prepared
from kd_jax.config import checks
from kd_jax.models import bert, hf_checkpoint

NAME = "embedding"
DATASETS = ("fortune_sentences",)
KIND = "sentence"
LANGUAGE = False
# "teacher_layers": the student starts as the teacher's embeddings and layers
# encoder.init_layers (DistilBERT's initialisation).
STUDENT_INITS = ("scratch", "teacher_layers")
NEIGHBOURS = 10
# Cost is timed on the first held-out sentences: this many at batch 64, fewer at batch 1.
COST_SENTENCES = {64: 512, 1: 128}


def check(config) -> None:
  """A sentence-encoder config: its dataset fields, a pretrained teacher, no hard-label
  baseline, and the ``encoder`` block."""
  d = config.dataset
  checks.ints_at_least("dataset", d, ("train_examples", "test_examples", "bible_verses",
                                      "probe_examples"))
  checks.ints_at_least("dataset", d, ("max_len",), 4)
  for role in ("teacher", "student"):
    checks.choice(f"{role}.model", config[role].model, models.ENCODER_MODELS)
  if not config.teacher.checkpoint:
    raise ConfigError("teacher.checkpoint", "a sentence encoder's teacher is pretrained: set "
                      "teacher.checkpoint (e.g. 'all-MiniLM-L6-v2', or a BERT directory)")
  if config.baseline:
    raise ConfigError("baseline", "baseline=True trains the student on hard labels, which "
                      "sentences do not have: set baseline=False (the from-scratch student is "
                      "student_init='scratch' with the same method)")
  e = config.get("encoder")
  if e is None:
    raise ConfigError("encoder", "a sentence-encoder config needs an encoder block "
                      "(kd_jax.config.encoder_config())")
  checks.ints_at_least("encoder", e, ("relation_heads",), 1)
  if not e.init_layers or not all(isinstance(i, int) and i >= 0 for i in e.init_layers):
    raise ConfigError("encoder.init_layers", "encoder.init_layers must be a non-empty tuple "
                      f"of teacher layer indices, got {e.init_layers!r}")


@device_split
class SentenceData(DeviceSplit):
  """A split on the devices: ``tokens`` int32 ``[N, T]`` (0 = padding), ``labels`` int32 ``[N]``
  (a collection, or -1), and the cached teacher outputs (embeddings ``[N, D]``, features)."""
  tokens: jax.Array
  labels: jax.Array


def tokenize(tokenizer, texts, max_len: int) -> np.ndarray:
  """``[N, max_len]`` int32 WordPiece ids ``[CLS] ... [SEP]``, truncated, padded with 0."""
  tokenizer.enable_truncation(max_len)
  tokenizer.no_padding()
  tokens = np.zeros((len(texts), max_len), np.int32)
  for i, encoding in enumerate(tokenizer.encode_batch(list(texts))):
    tokens[i, :len(encoding.ids)] = encoding.ids
  return tokens


@dataclasses.dataclass(frozen=True, eq=False)
class SentenceEmbedding:
  """The batch and evaluation side of the task (see the module docstring).

  ``probe_data`` are the labelled training sentences the probe and kNN learn from.
  """
  probe_data: SentenceData
  headline: ClassVar[str] = "probe_accuracy"

  @property
  def augments(self) -> bool:
    return False

  def input_identity(self) -> dict:
    return {"inputs": "tokens"}

  def train_batch(self, data: SentenceData, index, mask, rng, policy=None, teacher=None):
    """``(tokens [B, T], labels [B], real tokens of real rows [B, T], {})``."""
    del rng, policy, teacher
    tokens = data.tokens[index]
    return tokens, data.labels[index], (tokens != bert.SentenceBert.PAD_ID) & mask[:, None], {}

  def eval_inputs(self, data: SentenceData, index):
    return data.tokens[index]

  def train_metrics(self, embeddings, labels, loss_mask) -> dict:
    del embeddings, labels, loss_mask
    return {}

  def evaluator(self, graphdef, data: SentenceData, batch_size: int, mesh):
    """``evaluate(variables) -> ({"probe_accuracy", "knn_accuracy"}, test embeddings [N, D])``."""
    predict = step.make_predict(graphdef, self, mesh)
    test_labels = np.asarray(data.labels)
    probe_labels = np.asarray(self.probe_data.labels)
    labelled = test_labels >= 0

    def evaluate(variables):
      test, _ = step.predict_all(predict, variables, data, batch_size, mesh)
      probe, _ = step.predict_all(predict, variables, self.probe_data, batch_size, mesh)
      args = (probe, probe_labels, test[labelled], test_labels[labelled])
      return {"probe_accuracy": embedding_eval.linear_probe_accuracy(*args),
              "knn_accuracy": embedding_eval.knn_accuracy(*args, k=NEIGHBOURS)}, test

    return evaluate


def encoding_cost(module, tokenizer, texts, max_len: int) -> dict:
  """Sentences/s and latency of ``module`` encoding raw text, at batch 64 and 1."""
  encoder = bert.SentenceEncoder(getattr(module, "bert", module), tokenizer, max_len)
  cost = {}
  for batch, count in COST_SENTENCES.items():
    timed = embedding_eval.sentences_per_second(encoder.encode, texts[:count], batch)
    cost[f"sentences_per_second_b{batch}"] = timed["sentences_per_second"]
    cost[f"latency_ms_b{batch}"] = timed["latency_ms"]
  return cost


def _student_kwargs(config, teacher: bert.Bert) -> dict:
  """The student's architecture: ``student.kwargs`` over the teacher's vocabulary and length.

  Raises:
    ConfigError: another vocabulary than the teacher's (they share its tokenizer).
  """
  t = teacher.config
  kwargs = {"vocab_size": t["vocab_size"], "max_len": t["max_len"],
            **config.student.kwargs.to_dict()}
  if kwargs["vocab_size"] != t["vocab_size"]:
    raise ConfigError("student.kwargs", f"student.kwargs.vocab_size={kwargs['vocab_size']}: the "
                      f"student shares the teacher's tokenizer ({t['vocab_size']} tokens)")
  return kwargs


def _layer_student(config, teacher: bert.Bert, kwargs: dict, dtype) -> bert.SentenceBert:
  """DistilBERT's initialisation: the teacher's embeddings and layers ``encoder.init_layers``.

  Raises:
    ConfigError: a student shape the copied layers cannot have, or a layer outside the teacher.
  """
  layers, t = tuple(config.encoder.init_layers), teacher.config
  expected = {"dim": t["dim"], "num_heads": t["num_heads"], "mlp_dim": t["mlp_dim"],
              "num_layers": len(layers)}
  wrong = {k: kwargs.get(k) for k, v in expected.items() if kwargs.get(k) != v}
  if wrong:
    raise ConfigError("student.kwargs", f"student_init='teacher_layers' copies the teacher's "
                      f"layers {layers}: the student needs {expected}, got {wrong}")
  try:
    return bert.SentenceBert.wrap(bert.student_from_teacher(teacher, layers, dtype=dtype))
  except ValueError as e:      # a layer outside the teacher
    raise ConfigError("encoder.init_layers", f"encoder.init_layers: {e}") from None


def prepare(config, mesh, dtype) -> Prepared:
  """The sentence-encoder experiment's data, task and reports (see :class:`kd_jax.tasks.base.Prepared`).

  Raises:
    ConfigError: no such teacher checkpoint, or a student that does not fit it.
    DatasetNotFoundError: the sentences' packages are not installed.
  """
  import tokenizers  # noqa: PLC0415  (only text experiments need it)
  d = config.dataset
  checkpoint = hf_checkpoint.resolve(config.teacher.checkpoint)
  teacher = bert.load(checkpoint, dtype=dtype)
  tokenizer = tokenizers.Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
  if d.max_len > teacher.config["max_len"]:
    raise ConfigError("dataset.max_len", f"dataset.max_len={d.max_len} exceeds the teacher's "
                      f"{teacher.config['max_len']} positions")
  student_kwargs = _student_kwargs(config, teacher)
  train, test = sentences_lib.load(bible_verses=d.bible_verses)
  train_texts, train_labels = train.texts, train.labels
  if d.train_examples:
    train_texts, train_labels = train_texts[:d.train_examples], train_labels[:d.train_examples]
  test_texts, test_labels = test.texts, test.labels
  if d.test_examples:
    test_texts, test_labels = test_texts[:d.test_examples], test_labels[:d.test_examples]
  train_tokens = tokenize(tokenizer, train_texts, d.max_len)
  probe = np.flatnonzero(train_labels >= 0)
  if d.probe_examples:
    probe = probe[:d.probe_examples]
  to_device = lambda tokens, labels: SentenceData(*parallel.put_replicated(
      (tokens, np.asarray(labels, np.int32)), mesh))
  train_data = to_device(train_tokens, train_labels)
  test_data = to_device(tokenize(tokenizer, test_texts, d.max_len), test_labels)
  task = SentenceEmbedding(to_device(train_tokens[probe], train_labels[probe]))

  def build(spec, seed, role="student"):
    if role == "teacher":
      return bert.SentenceBert.wrap(teacher)
    if config.get("student_init") == "teacher_layers":
      return _layer_student(config, teacher, student_kwargs, dtype)
    try:
      return models.create(spec.model, rngs=nnx.Rngs(seed), dtype=dtype, **student_kwargs)
    except (TypeError, ValueError) as e:
      raise ConfigError("student.kwargs", f"student.kwargs={student_kwargs} do not fit model "
                        f"{spec.model!r}: {e}") from None

  def evaluate_teacher(graphdef, variables, batch_size):
    metrics, embeddings = task.evaluator(graphdef, test_data, batch_size, mesh)(variables)
    cost = encoding_cost(nnx.merge(graphdef, *variables), tokenizer, test_texts, d.max_len)
    return {**metrics, **cost}, {**metrics, **cost, "embeddings": embeddings}

  def student_report(fit, module, teacher_report, batch_size):
    del batch_size
    embeddings, reference = fit.test_outputs, teacher_report["embeddings"]
    report = {**fit.final, **encoding_cost(module, tokenizer, test_texts, d.max_len),
              "neighbour_overlap": embedding_eval.neighbour_overlap(
                  embeddings, reference, k=NEIGHBOURS)}
    if embeddings.shape == reference.shape:
      report["mean_cosine"] = embedding_eval.mean_cosine(embeddings, reference)
    report["probe_retention"] = report["probe_accuracy"] / teacher_report["probe_accuracy"]
    for batch in COST_SENTENCES:
      key = f"sentences_per_second_b{batch}"
      report[f"speedup_b{batch}"] = report[key] / teacher_report[key]
    return report

  return Prepared(task, train_data, train_data, test_data, 0, build, evaluate_teacher,
                  student_report, mesh=mesh)
