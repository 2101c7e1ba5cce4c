"""Counted compute (kd_jax/llm/compute.py, kd_jax.models.gpt.forward_flops): a hand count, and
XLA's own count of the compiled forward and decode steps as an independent reference."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from kd_jax.llm import compute
from kd_jax.methods import REGISTRY
from kd_jax.models import gpt

# A tiny GPT: grouped-query attention (2 query heads, 1 key/value head), SwiGLU.
TINY = dict(vocab_size=10, num_layers=1, num_heads=2, num_kv_heads=1, dim=8, head_dim=4,
            mlp_dim=16, mlp="swiglu")


def test_forward_flops_match_a_hand_count():
  # Per position (2 FLOPs per multiply-add): q 8x8 and o 8x8 projections 2*(2*8*8) = 256;
  # k and v 8x4 each: 2*(2*8*4) = 128; scores and weighted sum over 7 keys, 2 heads of 4:
  # 2*(2*2*4*7) = 224; SwiGLU gate, up 8x16 and down 16x8: 3*2*8*16 = 768; one block:
  # 1376. The head 8x10: 160. Five positions: 5 * 1536.
  assert gpt.forward_flops(TINY, tokens=5, context=7) == 5 * (256 + 128 + 224 + 768 + 160)
  # GELU's MLP has two matrices; context defaults to the positions run.
  gelu = {**TINY, "mlp": "gelu"}
  assert gpt.forward_flops(gelu, tokens=5) == 5 * (256 + 128 + 2 * 2 * 2 * 4 * 5
                                                    + 2 * 2 * 8 * 16 + 160)
  # The defaults a GPT resolves: K = H, h = D / H, F = the SwiGLU width of default_mlp_dim.
  plain = dict(vocab_size=10, num_layers=2, num_heads=2, dim=8)
  model = gpt.GPT(max_len=16, rngs=nnx.Rngs(0), **plain)
  assert gpt.forward_flops(plain, 3) == gpt.forward_flops(model.config, 3)


def _xla_flops(fn, *args) -> float:
  return float(jax.jit(fn).lower(*args).cost_analysis()["flops"])


@pytest.mark.parametrize("kwargs", [
    dict(vocab_size=32, num_layers=2, num_heads=2, dim=64),
    dict(vocab_size=20, num_layers=3, num_heads=4, num_kv_heads=2, dim=96, mlp="gelu"),
])
def test_the_count_is_xlas_matmuls_without_its_elementwise_work(kwargs):
  # XLA counts every op of the compiled CPU program; the count is its matmuls only, so
  # it is a little lower (norms, softmax, RoPE, activations) and never higher.
  model = gpt.GPT(max_len=64, rngs=nnx.Rngs(0), **kwargs)
  graphdef, state = nnx.split(model)
  forward = lambda st, x: nnx.merge(graphdef, st)(x)
  counted = gpt.forward_flops(model.config, 40)
  xla = _xla_flops(forward, state, jnp.zeros((1, 40), jnp.int32))
  assert counted <= xla <= 1.15 * counted
  # Generation: a prefill of P positions and M single-position steps, all against a
  # cache of P + M keys, is compute.generation's P + M positions over P + M keys.
  prompt, new = 12, 20
  cache = model.init_cache(1, prompt + new)
  decode = lambda st, t, p, c: nnx.merge(graphdef, st).decode(t, p, c)[0]
  prefill = _xla_flops(decode, state, jnp.zeros((1, prompt), jnp.int32),
                       jnp.arange(prompt, dtype=jnp.int32)[None], cache)
  one_step = _xla_flops(decode, state, jnp.zeros((1, 1), jnp.int32),
                        jnp.zeros((1, 1), jnp.int32), cache)
  counted = compute.generation(model.config, 3, prompt, new)
  assert counted <= 3 * (prefill + new * one_step) <= 1.15 * counted


def _shapes(teacher=True):
  return compute.Shapes(student=TINY, teacher={**TINY, "num_layers": 2} if teacher else None,
                        batch=4, row=11, new_tokens=7)


def test_a_supervised_step_is_a_forward_and_backward_and_the_teachers_forward():
  fwd_s, fwd_t = gpt.forward_flops(TINY, 11), gpt.forward_flops({**TINY, "num_layers": 2}, 11)
  assert compute.supervised_step(_shapes()) == {"student": 4 * 3 * fwd_s, "teacher": 4 * fwd_t}
  assert compute.supervised_step(_shapes(teacher=False))["teacher"] == 0


def test_a_policy_gradient_step_counts_its_sampling_and_its_reference():
  from kd_jax import config as config_lib
  c = config_lib.base_config()
  c.method, c.rl = "grpo", config_lib.rl_config(teacher_weight=0.0)
  # No teacher in R1-Zero's step: it does not run, so it costs nothing.
  assert not REGISTRY["grpo"].runs_teacher(c)
  step = REGISTRY["grpo"].flops_per_step(c, _shapes(teacher=False))
  sample = 4 * gpt.forward_flops(TINY, 12 + 7, 12 + 7)       # whole-row prompt buffers of 12
  assert step == {"student": sample + 4 * 4 * gpt.forward_flops(TINY, 11), "teacher": 0}
  c.rl.teacher_weight = 0.1
  assert REGISTRY["grpo"].runs_teacher(c)
  step = REGISTRY["grpo"].flops_per_step(c, _shapes())
  assert step["teacher"] == 4 * gpt.forward_flops({**TINY, "num_layers": 2}, 11)


def test_rl_zero_gets_the_student_compute_of_a_seqkd_row():
  # experiments/reasoning/r1_table.py: both start from the same baseline; the GRPO phase's
  # RL_ZERO_STEPS steps of sampled rows cost what train.steps SFT steps on traces cost.
  import numpy as np
  from kd_jax.core import parallel
  from kd_jax.tasks import reasoning
  from tests.test_experiments import cli_load
  c = cli_load("experiments/reasoning/r1_table.py")
  prepared = reasoning.prepare(c, parallel.make_mesh(1, 1, jax.devices()[:1]), np.float32)
  shapes = prepared.compute_shapes(c.train.batch_size, prepared.build(c.student, 0), None)
  seqkd = c.train.steps * REGISTRY["none"].flops_per_step(c, shapes)["student"]
  point = dict(p.split("=") for p in [s for s in c.sweep.points if s.startswith("rl-zero")][0]
               .split(": ")[1].split("; "))
  c.method, c.rl.teacher_weight, c.rl.steps = point["method"], 0.0, int(point["rl.steps"])
  rl_zero = c.rl.steps * REGISTRY["grpo"].flops_per_step(c, shapes)["student"]
  assert abs(rl_zero / seqkd - 1) < 0.01
