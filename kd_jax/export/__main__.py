r"""Exports a finished run's student and measures it: ``python -m kd_jax.export``.

    python -m kd_jax.export --workdir=runs/kd --format onnx|tflite [--quantize none|fp16|int8]

Writes ``WORKDIR/export/student.<onnx|tflite>`` (quantised: ``student.fp16.onnx``,
``student.int8.tflite``, ...) and ``WORKDIR/export/report.json`` (one entry per
exported file): its size, parity on the held-out split (max abs logit difference,
top-1 agreement, accuracy change), and median latency at batch 1 and 32 with the
format's runtime (onnxruntime, the LiteRT interpreter) and with the jitted JAX
student on the same CPU. An ONNX export also writes ``samples.json`` (held-out images,
labels, class names) for the web page: serve the repository root with
``python -m http.server`` and open ``http://localhost:8000/web/?run=WORKDIR``.
Mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags

from kd_jax.config import cli
from kd_jax.core.errors import ConfigError
from kd_jax.export import FORMATS, QUANTIZATIONS, litert_format, measure, onnx_format
from kd_jax.export import student as student_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's directory (kd_jax.main).")
_FORMAT = flags.DEFINE_enum("format", "onnx", FORMATS, "The exported file's format.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", QUANTIZATIONS,
                              "Weights and arithmetic: float32, float16 or int8.")
LATENCY_BATCHES = (1, 32)
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}


def write_web_samples(exportable, directory: str) -> None:
  """``samples.json`` next to the ONNX file: what web/index.html shows and runs."""
  with open(os.path.join(directory, "samples.json"), "w") as f:
    json.dump(exportable.web, f)


def _write_onnx(exportable, directory: str, quantize: str) -> str:
  path = os.path.join(directory, "student.onnx")
  onnx_format.export(exportable.function, exportable.input_shape, path, exportable.input_dtype,
                     exportable.extra_inputs)
  write_web_samples(exportable, directory)
  if quantize == "none":
    return path
  quantized = os.path.join(directory, f"student.{quantize}.onnx")
  if quantize == "fp16":
    onnx_format.to_fp16(path, quantized)
  else:
    onnx_format.to_int8(path, quantized, exportable.train_inputs)
  return quantized


def _write_tflite(exportable, directory: str, quantize: str) -> str:
  name = "student.tflite" if quantize == "none" else f"student.{quantize}.tflite"
  path = os.path.join(directory, name)
  litert_format.export(exportable.function, exportable.input_shape, path,
                       input_dtype=exportable.input_dtype, quantize=quantize,
                       calibration=exportable.train_inputs)
  return path


def export(workdir: str, fmt: str, quantize: str) -> dict:
  """Exports, measures and records one file; returns its report entry."""
  exportable = student_lib.load(workdir)
  if exportable.web["kind"] == "denoiser" and (fmt, quantize) != ("onnx", "none"):
    raise ConfigError(None, "a one-step diffusion student exports as float32 ONNX so far "
                      "(--format onnx --quantize none)")
  directory = os.path.join(workdir, "export")
  write = _write_tflite if fmt == "tflite" else _write_onnx
  path = write(exportable, directory, quantize)
  run_exported = litert_format.Runner(path) if fmt == "tflite" else onnx_format.runner(path)
  runtime = RUNTIMES[fmt]
  several = isinstance(exportable.test_inputs, tuple)    # (noise, labels) of a conditional one
  run_jax = jax.jit((lambda inputs: exportable.function(*inputs)) if several
                    else exportable.function)
  inputs, predictions = exportable.test_inputs, exportable.positions
  reference = predictions(measure.in_batches(run_jax, inputs))
  exported = predictions(measure.in_batches(run_exported, inputs))
  entry = {"file": os.path.basename(path), "format": fmt, "quantize": quantize,
           "bytes": os.path.getsize(path),
           "parity": (exportable.compare(reference, exported) if exportable.compare else
                      measure.parity(reference, exported, exportable.labels)),
           "latency_ms": {}}
  for batch in LATENCY_BATCHES:
    x = measure.rows(inputs, 0, batch)
    entry["latency_ms"][f"batch_{batch}"] = {
        runtime: measure.median_latency_ms(run_exported, x),
        "jax": measure.median_latency_ms(run_jax, x)}
  report_path = os.path.join(directory, "report.json")
  report = {}
  if os.path.exists(report_path):
    with open(report_path) as f:
      report = json.load(f)
  report[entry["file"]] = entry
  with open(report_path, "w") as f:
    json.dump(report, f, indent=2)
  return entry


def main(argv) -> None:
  del argv
  cli.quiet_logging()
  if not _WORKDIR.value:
    raise ConfigError(None, "--workdir is required: a finished run's directory")
  entry = export(os.path.abspath(os.path.expanduser(_WORKDIR.value)), _FORMAT.value,
                 _QUANTIZE.value)
  p, lat = entry["parity"], entry["latency_ms"]
  if "max_abs_pixel_difference" in p:        # a one-step generator's images
    print(f"{entry['file']}: {entry['bytes'] / 1e6:.2f} MB; max |Δpixel| "
          f"{p['max_abs_pixel_difference']}, equal pixels {p['equal_pixels']:.2%} on "
          f"{p['examples']} images from fixed noise")
  else:
    print(f"{entry['file']}: {entry['bytes'] / 1e6:.2f} MB; max |Δlogit| "
          f"{p['max_abs_logit_difference']:.2e}, top-1 agreement {p['top1_agreement']:.2%}, "
          f"accuracy {p['jax_accuracy']:.2%} → {p['exported_accuracy']:.2%} on "
          f"{p['examples']} held-out predictions")
  runtime = RUNTIMES[entry["format"]]
  for batch, ms in lat.items():
    print(f"  {batch}: {runtime} {ms[runtime]:.3f} ms, JAX {ms['jax']:.3f} ms")


if __name__ == "__main__":
  cli.run(main, "kd_jax.export")
