"""The web page (web/) runs an exported student in a real browser: headless Chromium, onnxruntime-web."""

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kd_jax import models
from kd_jax.data import arithmetic
from kd_jax.export import onnx_format

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEB = os.path.join(ROOT, "web")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and shutil.which("node")
         and os.path.isdir(os.path.join(WEB, "node_modules", "onnxruntime-web"))),
    reason="needs chromium, node and web/node_modules (make install sets them up as root)")


@pytest.fixture
def served(tmp_path):
  """A static server over a directory laid out as the repository: web/ and a run's export/."""
  os.symlink(WEB, tmp_path / "web")
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
  handler.log_message = lambda *args: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
  server.shutdown()


def _open(url):
  """The page's #results, after headless Chromium has run it (web/test/run_page.mjs)."""
  out = subprocess.run(["node", os.path.join(WEB, "test", "run_page.mjs"), url],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, CHROMIUM=CHROMIUM))
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout)


def test_the_page_predicts_what_the_jax_student_predicts(served):
  root, url = served
  model = models.create("cnn", num_classes=10, rngs=nnx.Rngs(3), widths=(8, 16))
  function = lambda images: model((images.astype(jnp.float32) / 255.0 - 0.3) / 0.35)
  export = root / "runs" / "known" / "export"
  onnx_format.export(function, (28, 28, 1), str(export / "student.onnx"))
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)
  with open(export / "samples.json", "w") as f:
    json.dump({"kind": "image", "input_shape": [28, 28, 1], "class_names": [f"class {i}" for i in range(10)],
               "description": "a known CNN", "images": images.reshape(6, -1).tolist(),
               "labels": [0] * 6}, f)
  page = _open(f"{url}/web/?run=runs/known&auto=1")
  expected = np.asarray(function(jnp.asarray(images)))
  np.testing.assert_allclose(np.array(page["logits"]), expected, atol=1e-4, rtol=1e-4)
  assert page["images"] == 6 and page["median_ms_per_image"] > 0


def test_the_page_reasons_token_by_token_as_the_jax_student_does(served):
  root, url = served
  length, budget = 24, 12
  model = models.create("gpt", vocab_size=arithmetic.CharTokenizer().vocab_size, max_len=length,
                        num_layers=2, num_heads=2, dim=32, rngs=nnx.Rngs(5))
  function = lambda tokens: model(tokens)
  export = root / "runs" / "lm" / "export"
  onnx_format.export(function, (length,), str(export / "student.onnx"), "int32")
  prompts = ["12+3=", "7-5=", "99*3="]
  tokenizer = arithmetic.CharTokenizer()
  with open(export / "samples.json", "w") as f:
    json.dump({"kind": "language_model", "description": "a known GPT", "max_len": length,
               "chars": tokenizer.chars, "pad": 0, "bos": 1, "eos": 2, "max_new_tokens": budget,
               "prompts": prompts, "answers": [15, 2, 297]}, f)
  page = _open(f"{url}/web/?run=runs/lm&auto=1")
  for prompt, generated in zip(prompts, page["generated"]):
    ids, expected = [tokenizer.bos_id, *tokenizer.encode(prompt)], []
    while len(expected) < budget and len(ids) < length:      # greedy, full forward each token
      row = np.zeros((1, length), np.int32)
      row[0, :len(ids)] = ids
      ids.append(int(np.argmax(np.asarray(function(jnp.asarray(row)))[0, len(ids) - 1])))
      expected.append(ids[-1])
      if ids[-1] == tokenizer.eos_id:
        break
    assert generated == expected, prompt
  assert page["median_ms_per_token"] > 0


@pytest.mark.parametrize("conditional", [False, True])
def test_the_page_draws_the_garment_the_jax_generator_draws(served, conditional):
  from kd_jax.objectives import diffusion as df
  root, url = served
  model = models.create("unet", rngs=nnx.Rngs(4), widths=(8, 16), embed_dim=32,
                        num_classes=10 if conditional else None)
  model.out.kernel.set_value(0.1 * np.random.default_rng(1).normal(
      size=model.out.kernel.shape).astype(np.float32))
  guidance = 1.5

  def image(noise, v):
    t = jnp.ones((noise.shape[0],), jnp.float32)
    x_hat, _ = df.to_x_eps(v, noise, t)
    return jnp.clip(jnp.round((jnp.clip(x_hat, -1, 1) + 1) * 127.5), 0, 255).astype(jnp.uint8)

  def function(noise):          # kd_jax/export/student.py's one-step generator
    return image(noise, model(noise, jnp.ones((noise.shape[0],))))

  def guided(noise, labels):    # its class-conditional form, classifier-free guidance w = 1.5
    t, null = jnp.ones((noise.shape[0],)), jnp.full_like(labels, 10)
    return image(noise, (1 + guidance) * model(noise, t, labels) - guidance * model(noise, t, null))

  name = "gen_conditional" if conditional else "gen"
  export = root / "runs" / name / "export"
  noise = np.random.default_rng(2).normal(size=(3, 28, 28, 1)).astype(np.float32)
  labels = np.array([7, 0, 3], np.int32)
  samples = {"kind": "denoiser", "input_shape": [28, 28, 1], "description": "a known UNet",
             "noise": noise.reshape(3, -1).tolist()}
  if conditional:
    onnx_format.export(guided, (28, 28, 1), str(export / "student.onnx"), "float32",
                       (((), "int32"),))
    samples.update(labels=labels.tolist(), class_names=[f"class {i}" for i in range(10)])
    expected = guided(jnp.asarray(noise), jnp.asarray(labels))
  else:
    onnx_format.export(function, (28, 28, 1), str(export / "student.onnx"), "float32")
    expected = function(jnp.asarray(noise))
  with open(export / "samples.json", "w") as f:
    json.dump(samples, f)
  page = _open(f"{url}/web/?run=runs/{name}&auto=1")
  expected = np.asarray(expected).reshape(3, -1).astype(np.int32)
  got = np.array(page["images"], np.int32)
  # float32 in two runtimes: a pixel may round the other way at a .5 boundary, no further.
  assert got.shape == expected.shape and np.abs(got - expected).max() <= 1
  assert np.mean(got == expected) > 0.99 and page["median_ms_per_image"] > 0
