r"""Exports a finished run's student and measures it: ``python -m kd_jax.export``.

    python -m kd_jax.export --workdir=runs/kd --format onnx [--quantize none|fp16|int8]

Writes ``WORKDIR/export/student.onnx`` (``student.fp16.onnx``, ``student.int8.onnx``)
and ``WORKDIR/export/report.json`` (one entry per exported file): its size, parity
on the held-out split (max abs logit difference, top-1 agreement, accuracy change),
and median latency at batch 1 and 32 with onnxruntime and with the jitted JAX
student on the same CPU. Mistakes print one line and exit with status 2.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import flags

from kd_jax import cli
from kd_jax.errors import ConfigError
from kd_jax.export import FORMATS, QUANTIZATIONS, measure, onnx_format
from kd_jax.export import student as student_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run's directory (kd_jax.main).")
_FORMAT = flags.DEFINE_enum("format", "onnx", FORMATS, "The exported file's format.")
_QUANTIZE = flags.DEFINE_enum("quantize", "none", QUANTIZATIONS,
                              "Weights and arithmetic: float32, float16 or int8.")
LATENCY_BATCHES = (1, 32)


def export_onnx(workdir: str, quantize: str) -> dict:
  """Exports, measures and records one ONNX file; returns its report entry."""
  exportable = student_lib.load(workdir)
  directory = os.path.join(workdir, "export")
  path = os.path.join(directory, "student.onnx")
  onnx_format.export(exportable.function, exportable.input_shape, path)
  if quantize != "none":
    quantized = os.path.join(directory, f"student.{quantize}.onnx")
    if quantize == "fp16":
      onnx_format.to_fp16(path, quantized)
    else:
      onnx_format.to_int8(path, quantized, exportable.train_inputs)
    path = quantized
  session = onnx_format.session(path)
  name = session.get_inputs()[0].name
  run_onnx = lambda x: session.run(None, {name: x})[0]
  run_jax = jax.jit(exportable.function)
  inputs, labels = exportable.test_inputs, exportable.test_labels
  entry = {"file": os.path.basename(path), "format": "onnx", "quantize": quantize,
           "bytes": os.path.getsize(path),
           "parity": measure.parity(measure.in_batches(run_jax, inputs),
                                    measure.in_batches(run_onnx, inputs), labels),
           "latency_ms": {}}
  for batch in LATENCY_BATCHES:
    x = np.ascontiguousarray(inputs[:batch])
    entry["latency_ms"][f"batch_{batch}"] = {
        "onnxruntime": measure.median_latency_ms(run_onnx, x),
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
  if not _WORKDIR.value:
    raise ConfigError(None, "--workdir is required: a finished run's directory")
  if _FORMAT.value != "onnx":
    raise ConfigError(None, f"--format={_FORMAT.value}: only onnx is exportable so far")
  entry = export_onnx(os.path.abspath(os.path.expanduser(_WORKDIR.value)), _QUANTIZE.value)
  p, lat = entry["parity"], entry["latency_ms"]
  print(f"{entry['file']}: {entry['bytes'] / 1e6:.2f} MB; max |Δlogit| "
        f"{p['max_abs_logit_difference']:.2e}, top-1 agreement {p['top1_agreement']:.2%}, "
        f"accuracy {p['jax_accuracy']:.2%} → {p['exported_accuracy']:.2%} on "
        f"{p['examples']} held-out examples")
  for batch, ms in lat.items():
    print(f"  {batch}: onnxruntime {ms['onnxruntime']:.3f} ms, JAX {ms['jax']:.3f} ms")


if __name__ == "__main__":
  cli.run(main, "kd_jax.export")
