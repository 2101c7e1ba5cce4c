"""Export a finished run's student to the formats phones, boards and browsers run.

    python -m kd_jax.export --workdir=RUN --format onnx|tflite [--quantize none|fp16|int8]

writes ``RUN/export/student.onnx`` (or ``.tflite``) and ``RUN/export/report.json`` (file size, parity
against the JAX student on the held-out split, latency at batch 1 and 32 against JAX
on the same CPU). An exported image classifier takes raw ``uint8`` images
``[B, H, W, C]`` and returns float32 logits ``[B, classes]``: the normalisation is
inside the graph (DESIGN §5.7), the batch dimension is dynamic.

Modules: :mod:`kd_jax.export.student` (the trained student of a workdir as a
function of its raw inputs), :mod:`kd_jax.export.onnx_format` (jax2onnx, onnxruntime
quantisation), :mod:`kd_jax.export.litert_format` (jax2tf → TFLiteConverter, the
LiteRT interpreter), :mod:`kd_jax.export.measure` (parity and latency).
"""

FORMATS = ("onnx", "tflite")
QUANTIZATIONS = ("none", "fp16", "int8")
