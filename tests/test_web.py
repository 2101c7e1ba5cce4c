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


def test_the_page_predicts_what_the_jax_student_predicts(served):
  root, url = served
  model = models.create("cnn", num_classes=10, rngs=nnx.Rngs(3), widths=(8, 16))
  function = lambda images: model((images.astype(jnp.float32) / 255.0 - 0.3) / 0.35)
  export = root / "runs" / "known" / "export"
  onnx_format.export(function, (28, 28, 1), str(export / "student.onnx"))
  images = np.random.default_rng(0).integers(0, 256, (6, 28, 28, 1)).astype(np.uint8)
  with open(export / "samples.json", "w") as f:
    json.dump({"input_shape": [28, 28, 1], "class_names": [f"class {i}" for i in range(10)],
               "description": "a known CNN", "images": images.reshape(6, -1).tolist(),
               "labels": [0] * 6}, f)
  out = subprocess.run(["node", os.path.join(WEB, "test", "run_page.mjs"),
                        f"{url}/web/?run=runs/known&auto=1"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, CHROMIUM=CHROMIUM))
  assert out.returncode == 0, out.stderr[-2000:]
  page = json.loads(out.stdout)
  expected = np.asarray(function(jnp.asarray(images)))
  np.testing.assert_allclose(np.array(page["logits"]), expected, atol=1e-4, rtol=1e-4)
  assert page["images"] == 6 and page["median_ms_per_image"] > 0
