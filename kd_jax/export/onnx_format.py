"""ONNX export with jax2onnx, run and quantised with onnxruntime.

* :func:`export` traces a JAX function (of ``uint8`` images, or ``int32`` tokens) into an
  ONNX model whose batch dimension is symbolic (``"B"``).
* :func:`to_fp16` stores the weights and computes in float16, keeping float32 inputs
  and outputs (onnxruntime's converter; inputs here are uint8 anyway).
* :func:`to_int8` quantises weights and activations to int8 (QDQ format, static:
  activation ranges calibrated on training images).
* :func:`session` opens a model for inference on the CPU; :func:`runner` runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.core.errors import ConfigError


def export(function, input_shape: tuple, path: str, input_dtype: str = "uint8",
           extra_inputs: tuple = ()) -> None:
  """Writes ``function``'s ONNX graph for inputs ``input_dtype`` ``[B, *input_shape]`` to ``path``.

  ``extra_inputs``: ``(shape, dtype)`` of each further per-example input, in the order
  ``function`` takes them (a class-conditional generator's int32 labels: ``((), "int32")``).

  Raises:
    ConfigError: jax2onnx has no conversion for one of the function's operations
      (named), instead of the converter's traceback.
  """
  # onnx_ir warns about every untyped shape constant it leaves unserialised: harmless.
  logging.getLogger("onnx_ir").setLevel(logging.ERROR)
  specs = [jax.ShapeDtypeStruct(("B", *shape), jnp.dtype(dtype))
           for shape, dtype in ((input_shape, input_dtype), *extra_inputs)]
  try:
    with jax_api_restored():
      from jax2onnx import to_onnx  # noqa: PLC0415  (export-only dependency)
      model = to_onnx(function, specs)
  except NotImplementedError as e:       # jax2onnx: "No plugin registered for primitive ..."
    raise ConfigError(None, f"ONNX export: an operation of this student has no ONNX "
                      f"conversion in jax2onnx: {str(e).splitlines()[0]}") from None
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "wb") as f:
    f.write(model.SerializeToString())


# The public JAX and Flax namespaces jax2onnx's tracing plugins replace functions in.
_PATCHED_NAMESPACES = ("jax", "jax.numpy", "jax.lax", "jax.nn", "jax.random", "flax.nnx")


@contextlib.contextmanager
def jax_api_restored():
  """Puts back every public function of :data:`_PATCHED_NAMESPACES` that the block replaced.

  jax2onnx (0.17) swaps functions such as ``jnp.cumsum`` for keyword-only stand-ins while
  it traces and leaves them there, so that any later positional call in the process
  (``jnp.cumsum(x, 0)``) fails. Conversions inside the block still see jax2onnx's
  versions; the process afterwards sees JAX's own. (A later export re-applies them.)
  """
  namespaces = [sys.modules[name] for name in _PATCHED_NAMESPACES if name in sys.modules]
  saved = [(module, {k: v for k, v in vars(module).items() if not k.startswith("_")})
           for module in namespaces]
  try:
    yield
  finally:
    for module, attributes in saved:
      for name, value in attributes.items():
        if getattr(module, name, None) is not value:
          setattr(module, name, value)


def to_fp16(path: str, out_path: str) -> None:
  """``path``'s model with float16 weights and arithmetic (float32 at the inputs/outputs)."""
  import onnx  # noqa: PLC0415
  from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: PLC0415
  onnx.save(convert_float_to_float16(onnx.load(path), keep_io_types=True), out_path)


def to_int8(path: str, out_path: str, calibration: np.ndarray) -> None:
  """``path``'s model quantised to int8 (weights per channel, activations calibrated on
  ``calibration``, a batch of training inputs)."""
  from onnxruntime import quantization  # noqa: PLC0415
  input_name = session(path).get_inputs()[0].name

  class Reader(quantization.CalibrationDataReader):
    def __init__(self):
      self._batches = iter(np.array_split(calibration, max(1, len(calibration) // 32)))

    def get_next(self):
      batch = next(self._batches, None)
      return None if batch is None else {input_name: batch}

  prepared = out_path + ".pre.onnx"
  quantization.quant_pre_process(path, prepared)
  try:
    quantization.quantize_static(prepared, out_path, Reader(),
                                 quant_format=quantization.QuantFormat.QDQ,
                                 per_channel=True, weight_type=quantization.QuantType.QInt8,
                                 activation_type=quantization.QuantType.QInt8)
  finally:
    os.remove(prepared)


def runner(path: str):
  """``run(inputs) -> outputs``: the model at ``path`` on onnxruntime's CPU provider (its
  first output), as :class:`kd_jax.export.litert_format.Runner` for LiteRT; ``inputs`` is
  an array, or a tuple of arrays for a model of several inputs (in their order)."""
  opened = session(path)
  names = [i.name for i in opened.get_inputs()]
  return lambda inputs: opened.run(None, dict(zip(
      names, inputs if isinstance(inputs, tuple) else (inputs,))))[0]


def session(path: str, threads: int = 0):
  """An onnxruntime CPU session (``threads`` 0: onnxruntime's default), warnings off."""
  import onnxruntime as ort  # noqa: PLC0415
  options = ort.SessionOptions()
  options.log_severity_level = 3        # shape-merge warnings of NHWC graphs are harmless
  if threads:
    options.intra_op_num_threads = threads
  return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
