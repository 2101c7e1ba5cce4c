"""A finished run's trained student, as a function of the raw inputs its users have.

:func:`load` rebuilds the run's student from its ``results.json`` config and loads
its last checkpoint (:func:`kd_jax.run.pipeline.load_trained_student`), and returns it
with held-out and calibration inputs as host arrays:

* an image classifier as ``function(uint8 images [B, H, W, C]) -> logits [B, C]``: the
  task's normalisation is inside the function, so the exported graph takes raw pixels;
* a one-step diffusion student as ``function(float32 noise [B, 28, 28, 1]) -> uint8 images
  [B, 28, 28, 1]``: its x̂ at t = 1 from the noise, clipped to [−1, 1] and scaled to pixels
  (DESIGN §8); a class-conditional one as ``function(noise, int32 labels [B])``, with the
  run's classifier-free guidance (``dataset.guidance``) inside the graph;
* the arithmetic language model as ``function(int32 tokens [B, L]) -> logits [B, L, V]``
  at the fixed length L = ``dataset.max_len``: generation runs the full forward pass
  once per new token (no KV cache in the exported graph), reading the logits at the
  last real position (the attention is causal, so right padding changes nothing before it).

``web`` is what the web page (``web/``) needs besides the model: sample inputs, class
names or the character vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from kd_jax import data as data_lib
from kd_jax import models
from kd_jax.run import pipeline as experiment
from kd_jax.run import workdir as workdir_lib
from kd_jax.core.errors import ConfigError
from kd_jax.export import measure
from kd_jax.objectives import diffusion
from kd_jax.tasks import arithmetic
from kd_jax.tasks import diffusion as diffusion_task
from kd_jax.tasks import diffusion_sampler

WEB_SAMPLES = 64      # held-out examples the web page steps through


@dataclasses.dataclass(frozen=True)
class Exportable:
  """What an exporter needs (see the module docstring).

  ``positions(logits) -> [M, C]`` and ``labels`` ``[M]`` are the predictions parity is
  measured on: every image, or every target token of the held-out rows.
  """
  function: Callable
  input_shape: tuple          # per example
  input_dtype: str            # "uint8" (images) or "int32" (tokens)
  test_inputs: np.ndarray
  labels: np.ndarray
  positions: Callable
  train_inputs: np.ndarray    # calibration for int8
  config: ml_collections.ConfigDict
  web: dict
  # (reference outputs, exported outputs) -> the parity report; None: logits against labels
  compare: Callable | None = None
  # ((shape, dtype), ...) of the inputs after the first (a conditional generator's labels);
  # with them, test_inputs and train_inputs are tuples of arrays, one per input
  extra_inputs: tuple = ()


def _model_name(workdir: str) -> str | None:
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if not os.path.exists(path):
    return None       # load_trained_student says so
  with open(path) as f:
    return json.load(f)["config"]["student"]["model"]


def load(workdir: str, *, calibration_examples: int = 256) -> Exportable:
  """The student of the finished run in ``workdir``.

  Raises:
    ConfigError: no finished run there, or a student that cannot be exported yet.
  """
  name = _model_name(workdir)
  language = name in models.SEQUENCE_MODELS
  denoiser = name in models.DENOISER_MODELS
  if name is not None and name not in models.IMAGE_MODELS and not (language or denoiser):
    raise ConfigError(None, f"--workdir={workdir}: its student is a {name!r}; image "
                      f"classifiers, one-step denoisers and language models export so far")
  config, prepared, model = experiment.load_trained_student(workdir)
  if denoiser:
    return _one_step_generator(config, prepared, model, calibration_examples)
  if language and config.dataset.name not in arithmetic.DATASETS:
    raise ConfigError(None, f"--workdir={workdir}: of the language models, only the arithmetic "
                      "task's students export so far")
  host = lambda x: np.asarray(jax.device_get(x))
  description = f"{name} student of {config.experiment} ({config.method})"
  if language:
    return _language_model(config, prepared, model, host, calibration_examples, description)
  task = prepared.task

  def function(images):
    return model(task.preprocess(images)).astype(jnp.float32)   # train=False: eval mode

  images, labels = host(prepared.test_data.images), host(prepared.test_data.labels)
  web = {"kind": "image", "input_shape": list(model.input_shape), "description": description,
         "class_names": list(data_lib.load_split(config.dataset.name, "test").class_names),
         "images": images[:WEB_SAMPLES].reshape(min(WEB_SAMPLES, len(images)), -1).tolist(),
         "labels": labels[:WEB_SAMPLES].tolist()}
  return Exportable(function, tuple(model.input_shape), "uint8", images, labels,
                    lambda logits: logits, host(prepared.train_data.images[:calibration_examples]),
                    config, web)


def _language_model(config, prepared, model, host, calibration_examples, description):
  tokens = host(prepared.test_data.tokens)
  mask = host(prepared.test_data.loss_mask)          # [N, L - 1]: target j is token j + 1
  task = prepared.task
  tokenizer = task.tokenizer

  def function(token_rows):
    return model(token_rows).astype(jnp.float32)

  prompts = [tokenizer.decode(row[1:n]) for row, n in
             zip(tokens[:WEB_SAMPLES], task.prompt_lengths[:WEB_SAMPLES])]
  web = {"kind": "language_model", "description": description, "max_len": int(tokens.shape[1]),
         "chars": tokenizer.chars, "pad": tokenizer.pad_id, "bos": tokenizer.bos_id,
         "eos": tokenizer.eos_id, "max_new_tokens": int(task.max_new_tokens),
         "prompts": prompts, "answers": [int(a) for a in task.answers[:WEB_SAMPLES]]}
  return Exportable(function, (int(tokens.shape[1]),), "int32", tokens,
                    tokens[:, 1:][mask], lambda logits: logits[:, :-1][mask],
                    host(prepared.train_data.tokens[:calibration_examples]), config, web)


def _one_step_generator(config, prepared, model, calibration_examples):
  """A diffusion student as the one-step generator of the module docstring."""
  d = config.dataset
  parameterization, guidance = d.parameterization, float(d.guidance)

  def conditional(noise, labels):      # the sampler's one step, guidance included
    prediction = diffusion_sampler.guided_prediction(model, noise, 1.0, labels, guidance,
                                                     guided=bool(guidance))
    t = jnp.ones((noise.shape[0],), jnp.float32)
    x_hat, _ = diffusion.to_x_eps(prediction, noise, t, parameterization=parameterization)
    return diffusion_task.to_uint8(x_hat)

  def function(noise):
    return conditional(noise, None)

  shape = tuple(model.input_shape)
  count = max(WEB_SAMPLES, calibration_examples)
  noise = np.asarray(jax.random.normal(jax.random.key(d.seed), (count, *shape)))
  web = {"kind": "denoiser", "input_shape": list(shape),
         "description": f"one-step {config.student.model} student of {config.experiment} "
                        f"({config.method})",
         # Fixed noise (the browser test's), flattened; the page also draws its own.
         "noise": noise[:4].reshape(4, -1).tolist()}
  if not d.conditional:
    return Exportable(function, shape, "float32", noise[:WEB_SAMPLES], None, lambda x: x,
                      noise[:calibration_examples], config, web, compare=measure.pixel_parity)
  labels = (np.arange(count) % model.num_classes).astype(np.int32)   # every class in turn
  web.update(class_names=list(data_lib.load_split(
      diffusion_task.SOURCE[d.name], "test").class_names), labels=labels[:4].tolist())
  return Exportable(conditional, shape, "float32", (noise[:WEB_SAMPLES], labels[:WEB_SAMPLES]),
                    None, lambda x: x, (noise[:calibration_examples],
                                        labels[:calibration_examples]),
                    config, web, compare=measure.pixel_parity, extra_inputs=(((), "int32"),))
