"""LiteRT (TensorFlow Lite) export: jax2tf → a TF concrete function → ``TFLiteConverter``.

The path the LiteRT documentation gives for JAX models: the student is converted
with ``jax2tf`` (symbolic batch ``b``) into a ``tf.function`` over ``uint8`` images,
and the converter turns its concrete function into a ``.tflite`` flatbuffer with
builtin ops only. ``quantize``: ``fp16`` stores float16 weights; ``int8`` quantises
weights and activations with ranges calibrated on training images (the graph's
input stays uint8, its output float32 logits). Models run with the LiteRT
interpreter (``ai_edge_litert``; TensorFlow's own ``tf.lite.Interpreter`` is
deprecated) on the CPU.

TensorFlow is imported only here: it is needed to convert, not to run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

from kd_jax.core.errors import ConfigError


def export(function, input_shape: tuple, path: str, *, input_dtype: str = "uint8",
           quantize: str = "none", calibration: np.ndarray | None = None) -> None:
  """Writes ``function``'s LiteRT model for ``input_dtype`` ``[B, *input_shape]`` inputs to
  ``path``.

  Raises:
    ConfigError: TensorFlow is missing, or the converter refuses an operation (named).
  """
  try:
    import tensorflow as tf  # noqa: PLC0415
    from jax.experimental import jax2tf  # noqa: PLC0415
  except ImportError:
    raise ConfigError(None, "--format=tflite needs TensorFlow to convert (pip install "
                      "tensorflow-cpu); ONNX export does not") from None
  dims = ", ".join(str(d) for d in input_shape)
  tf_function = tf.function(
      jax2tf.convert(function, polymorphic_shapes=[f"(b, {dims})"], with_gradient=False),
      input_signature=[tf.TensorSpec([None, *input_shape], tf.as_dtype(input_dtype))],
      autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [tf_function.get_concrete_function()], tf_function)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize == "fp16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i:i + 1]]
                                                for i in range(len(calibration)))
  with _captured_stderr() as captured:
    try:
      flatbuffer = converter.convert()
    except Exception as e:  # noqa: BLE001  (the converter raises its own ConverterError)
      error = e
    else:
      error = None
  if error is not None:
    lines = ("".join(captured) + "\n" + str(error)).splitlines()
    first = next((line for line in lines if "error:" in line), str(error).splitlines()[0])
    # "…/gpt.py:101:30: error: 'vhlo.dynamic_gather_v1' op is not part of …": keep the op.
    raise ConfigError(None, "LiteRT export: the converter refused an operation of this "
                      f"student: {first.split('error:', 1)[-1].strip()[:300]}") from None
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as f:
    f.write(flatbuffer)


@contextlib.contextmanager
def _captured_stderr():
  """The process's stderr (file descriptor 2) into a temporary file for the block: the
  converter's C++ code prints its MLIR diagnostics there, pages of them on a failure."""
  text: list[str] = []       # filled when the block ends
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile(mode="w+") as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield text
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text.append(captured.read())


class Runner:
  """``runner(inputs) -> outputs``: a LiteRT model on the CPU, resized to each batch."""

  def __init__(self, path: str):
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    self._interpreter = Interpreter(model_path=path)
    self._input = self._interpreter.get_input_details()[0]["index"]
    self._output = self._interpreter.get_output_details()[0]["index"]
    self._shape = None

  def __call__(self, inputs: np.ndarray) -> np.ndarray:
    if inputs.shape != self._shape:
      self._interpreter.resize_tensor_input(self._input, inputs.shape)
      self._interpreter.allocate_tensors()
      self._shape = inputs.shape
    self._interpreter.set_tensor(self._input, inputs)
    self._interpreter.invoke()
    return self._interpreter.get_tensor(self._output)
