"""The GPT model and generate(): closed-form parameter counts, an independent NumPy
forward pass, the KV cache against full recomputation, sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax.llm import generate as generate_lib
from kd_jax import models
from kd_jax.models import gpt

SMALL = dict(vocab_size=23, max_len=40, num_layers=2, num_heads=4, dim=32)
VARIANTS = {
    "llama": {},
    "gqa_qwen2": dict(num_kv_heads=2, qkv_bias=True, rope_theta=1e6),
    "tied_gelu": dict(tie_embeddings=True, mlp="gelu", num_kv_heads=1),
}


def _model(seed=0, dtype=jnp.float32, **options):
  return gpt.GPT(**{**SMALL, **options}, rngs=nnx.Rngs(seed), dtype=dtype)


def _tokens(seed, shape, vocab=SMALL["vocab_size"]):
  return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_parameter_count_matches_the_closed_form(options):
  model = _model(**options)
  d, v, layers, heads = SMALL["dim"], SMALL["vocab_size"], SMALL["num_layers"], SMALL["num_heads"]
  kv = options.get("num_kv_heads", heads)
  h = d // heads
  f = 4 * d if options.get("mlp") == "gelu" else 88   # ⌈(8·32/3) / 8⌉·8 = 88
  per_block = (2 * d + 2 * d * heads * h + 2 * d * kv * h
               + ((heads + 2 * kv) * h if options.get("qkv_bias") else 0)
               + (2 if options.get("mlp") == "gelu" else 3) * d * f)
  expected = v * d + layers * per_block + d + (0 if options.get("tie_embeddings") else d * v)
  assert model.num_params() == expected
  assert gpt.param_count(**{k: SMALL[k] for k in SMALL if k != "max_len"}, **{
      k: o for k, o in options.items() if k != "rope_theta"}) == expected


def _numpy_forward(model, tokens):
  """The same architecture written out in float64 NumPy from the formulas."""
  state = jax.tree.map(lambda x: np.asarray(x, np.float64),
                       nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  c = model.config
  heads, kv, hd = c["num_heads"], c["num_kv_heads"], c["head_dim"]
  b, t = tokens.shape

  def rms(x, w, eps=1e-6):
    return x / np.sqrt(np.mean(x ** 2, -1, keepdims=True) + eps) * w

  def linear(layer, x):
    y = x @ layer["kernel"]
    return y + layer["bias"] if "bias" in layer else y

  def rope(x, theta):
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos[None, :, None] + rot * sin[None, :, None]

  x = state["embed_tokens"]["embedding"][tokens]
  theta = model.layers[0].self_attn.rope_theta
  for i in range(c["num_layers"]):
    p = state["layers"][i]
    a = p["self_attn"]
    hn = rms(x, p["input_layernorm"]["weight"])
    q = rope(linear(a["q_proj"], hn).reshape(b, t, heads, hd), theta)
    k = rope(linear(a["k_proj"], hn).reshape(b, t, kv, hd), theta)
    v = linear(a["v_proj"], hn).reshape(b, t, kv, hd)
    k, v = np.repeat(k, heads // kv, axis=2), np.repeat(v, heads // kv, axis=2)
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((t, t), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", probs, v).reshape(b, t, heads * hd)
    x = x + linear(a["o_proj"], out)
    hn = rms(x, p["post_attention_layernorm"]["weight"])
    m = p["mlp"]
    if c["mlp"] == "swiglu":
      g = linear(m["gate_proj"], hn)
      inner = g / (1 + np.exp(-g)) * linear(m["up_proj"], hn)
    else:
      u = linear(m["up_proj"], hn)
      inner = 0.5 * u * (1 + np.vectorize(__import__("math").erf)(u / np.sqrt(2)))
    x = x + linear(m["down_proj"], inner)
  x = rms(x, state["norm"]["weight"])
  if c["tie_embeddings"]:
    return x @ state["embed_tokens"]["embedding"].T
  return linear(state["lm_head"], x)


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_forward_matches_an_independent_numpy_transformer(options):
  model = _model(**options)
  tokens = _tokens(1, (2, 9))
  np.testing.assert_allclose(model(jnp.asarray(tokens)), _numpy_forward(model, tokens),
                             rtol=1e-4, atol=1e-5)


def test_features_and_padding_mask():
  model = _model()
  tokens = jnp.asarray(_tokens(2, (2, 6)))
  logits, features = model(tokens, return_features=True)
  assert logits.dtype == jnp.float32 and logits.shape == (2, 6, SMALL["vocab_size"])
  assert set(features) == set(model.feature_names)
  assert features["hidden_1"].shape == (2, 6, SMALL["dim"])
  probs = features["attention_0"]
  assert probs.shape == (2, SMALL["num_heads"], 6, 6)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  assert float(jnp.max(jnp.triu(probs, k=1))) == 0.0             # causal
  # A masked (padding) key gets no attention; the unmasked positions before it are unchanged.
  mask = jnp.array([[True] * 6, [True, True, True, False, True, True]])
  masked_logits, masked = model(tokens, return_features=True, mask=mask)
  assert float(jnp.max(masked["attention_0"][1, :, :, 3])) == 0.0
  np.testing.assert_allclose(masked_logits[:, :3], logits[:, :3], rtol=1e-6)


def test_bf16_compute_gives_float32_logits_close_to_float32():
  tokens = jnp.asarray(_tokens(3, (2, 8)))
  full = _model()(tokens)
  half = _model(dtype=jnp.bfloat16)(tokens)
  assert half.dtype == jnp.float32
  np.testing.assert_allclose(half, full, atol=0.05)


def test_created_through_the_registry():
  model = models.create("gpt", **SMALL, rngs=nnx.Rngs(0))
  assert isinstance(model, gpt.GPT)
  with pytest.raises(ValueError, match="num_kv_heads"):
    models.create("gpt", **SMALL, num_kv_heads=3, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------- generate


def _greedy_without_cache(model, prompt, steps):
  tokens = list(prompt)
  for _ in range(steps):
    logits = model(jnp.asarray([tokens], jnp.int32))
    tokens.append(int(jnp.argmax(logits[0, -1])))
  return tokens[len(prompt):]


@pytest.mark.parametrize("options", VARIANTS.values(), ids=VARIANTS.keys())
def test_greedy_with_the_cache_equals_recomputing_without_it(options):
  model = _model(seed=4, **options)
  prompts = _tokens(5, (3, 7))
  lengths = np.array([7, 3, 5], np.int32)
  prompts[1, 3:] = 0                          # right padding, ignored
  tokens, out_lengths = generate_lib.generate(*nnx.split(model), prompts, lengths,
                                              max_new_tokens=8)
  for i in range(3):
    assert tokens[i].tolist() == _greedy_without_cache(model, prompts[i, :lengths[i]], 8)
  assert out_lengths.tolist() == [8, 8, 8]


def test_eos_stops_a_row_and_pads_the_rest():
  model = _model(seed=6)
  prompts, lengths = _tokens(7, (2, 4)), np.array([4, 4], np.int32)
  free, _ = generate_lib.generate(*nnx.split(model), prompts, lengths, max_new_tokens=10)
  eos = int(free[0, 2])                       # row 0 "ends" at its third token
  tokens, out_lengths = generate_lib.generate(*nnx.split(model), prompts, lengths,
                                              max_new_tokens=10, eos_id=eos, pad_id=99)
  first = [int(np.argmax(np.asarray(free[i]) == eos)) if eos in free[i].tolist() else None
           for i in range(2)]
  for i in range(2):
    stop = first[i]
    if stop is None:
      assert tokens[i].tolist() == free[i].tolist() and out_lengths[i] == 10
    else:
      assert tokens[i, :stop + 1].tolist() == free[i, :stop + 1].tolist()
      assert tokens[i, stop + 1:].tolist() == [99] * (9 - stop)
      assert out_lengths[i] == stop + 1
  assert first[0] == 2


def test_sampling_is_deterministic_given_the_key_and_top_k_1_is_greedy():
  graphdef, state = nnx.split(_model(seed=8))
  prompts, lengths = _tokens(9, (4, 5)), np.full(4, 5, np.int32)
  sample = lambda key, **kw: generate_lib.generate(
      graphdef, state, prompts, lengths, max_new_tokens=12, rng=jax.random.key(key),
      temperature=1.5, **kw)[0]
  np.testing.assert_array_equal(sample(1), sample(1))
  assert not np.array_equal(sample(1), sample(2))
  greedy = generate_lib.generate(graphdef, state, prompts, lengths, max_new_tokens=12)[0]
  np.testing.assert_array_equal(sample(3, top_k=1), greedy)
  np.testing.assert_array_equal(sample(4, top_p=1e-6), greedy)   # a nucleus of one token


def test_filter_logits_top_k_and_top_p_by_the_definition():
  logits = jnp.log(jnp.array([[0.5, 0.05, 0.3, 0.15]]))
  kept = lambda **kw: np.isfinite(np.asarray(generate_lib.filter_logits(logits, **kw)))[0]
  assert kept(top_k=2).tolist() == [True, False, True, False]
  # Sorted 0.5, 0.3, 0.15, 0.05: mass before each is 0, 0.5, 0.8, 0.95.
  assert kept(top_p=0.5).tolist() == [True, False, False, False]
  assert kept(top_p=0.6).tolist() == [True, False, True, False]
  assert kept(top_p=0.81).tolist() == [True, False, True, True]


def test_one_compilation_per_shape():
  graphdef, state = nnx.split(_model(seed=10))
  before = generate_lib.compilations()
  for seed in range(3):   # new prompts, lengths and keys of the same shapes: no recompilation
    generate_lib.generate(graphdef, state, _tokens(seed, (2, 6)), np.array([6, 2 + seed]),
                          max_new_tokens=5, rng=jax.random.key(seed), temperature=1.0)
  assert generate_lib.compilations() == before + 1


def test_bad_sampling_settings_are_refused():
  graphdef, state = nnx.split(_model())
  prompts, lengths = _tokens(0, (1, 3)), np.array([3])
  for kwargs, message in ((dict(temperature=1.0), "needs rng"),
                          (dict(top_p=0.0), "top_p"), (dict(temperature=-1.0), "temperature")):
    with pytest.raises(ValueError, match=message):
      generate_lib.generate(graphdef, state, prompts, lengths, max_new_tokens=2, **kwargs)
  with pytest.raises(ValueError, match="max_len"):
    generate_lib.generate(graphdef, state, prompts, lengths, max_new_tokens=SMALL["max_len"])


def test_output_vocab_masks_the_rows_the_tokenizer_never_produces():
  """Qwen2.5-style padding: 24 rows for 19 ids. The logits are the first 19 columns, and a
  KD loss between a 24-row teacher and a 19-row student equals the KL of the teacher's
  softmax with its padding rows at −inf (probability 0), computed here in NumPy."""
  from kd_jax.objectives.losses import kd_loss
  kwargs = dict(max_len=8, num_layers=1, num_heads=2, dim=16)
  padded = models.create("gpt", vocab_size=24, rngs=nnx.Rngs(0), **kwargs)
  masked = models.create("gpt", vocab_size=24, output_vocab=19, rngs=nnx.Rngs(0), **kwargs)
  student = models.create("gpt", vocab_size=19, rngs=nnx.Rngs(1), **kwargs)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 19, (2, 8)))
  full = np.asarray(padded(tokens), np.float64)
  teacher_logits = np.asarray(masked(tokens))
  assert teacher_logits.shape == (2, 8, 19)
  np.testing.assert_allclose(teacher_logits, full[..., :19], rtol=1e-6)
  # The fused loss's head is cut the same way.
  hidden, head = masked.hidden_and_head(tokens)
  np.testing.assert_allclose(np.asarray(hidden @ head), full[..., :19], rtol=1e-4, atol=1e-5)
  # KL(p_T || p_S) with the teacher's rows 19..23 at −inf.
  s = np.asarray(student(tokens), np.float64)
  t = np.where(np.arange(24) < 19, full, -np.inf)
  p = np.exp(t - t.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  log_q = s - s.max(-1, keepdims=True)
  log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
  kept = p[..., :19]
  expected = np.mean(np.sum(kept * (np.log(kept) - log_q), -1))
  got = kd_loss(jnp.asarray(s).reshape(-1, 19), jnp.asarray(teacher_logits).reshape(-1, 19),
                None, temperature=1.0, alpha=0.0, divergence="kl")
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="output_vocab=25"):
    models.create("gpt", vocab_size=24, output_vocab=25, rngs=nnx.Rngs(0), **kwargs)
