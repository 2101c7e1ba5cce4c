#!/usr/bin/env bash
# The GPU benchmark suite (issues 6, 12, 13; bf16), in one command:
#
#   bash benchmarks/gpu_suite.sh            # PYTHON=... to pick the interpreter
#
# Needs jax with CUDA, flax, optax, orbax, absl, ml_collections, filelock and, for the
# PyTorch comparison, a CUDA build of torch; installs nothing itself (GPU hosts
# are often offline). Writes benchmarks/results/<script>-gpu-<pair>-bf16.json for
# both pairs: the default experiment's (tiny: launch-bound on a GPU) and
# resnet32x4 → resnet8x4 (large enough to fill one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import jax, sys; d = jax.devices()[0]; print('device:', d.device_kind); \
sys.exit(0 if d.platform == 'gpu' else 'no GPU: jax.devices() = %s' % jax.devices())"
for pair in resnet default; do
  # (also the function-matching step: crop, flip and mixup read by the live teacher, issue 27)
  "$PYTHON" benchmarks/kd_step.py --precision bf16 --pair "$pair" --tag "gpu-$pair-bf16"
  "$PYTHON" benchmarks/vs_pytorch.py --precision bf16 --pair "$pair" --tag "gpu-$pair-bf16"
done
"$PYTHON" benchmarks/overhead.py --precision bf16 --tag gpu-default-bf16
"$PYTHON" benchmarks/scaling.py --quick --tag gpu
# Language models (issues 12 and 13): the Liger-Kernel shape of the fused-linear KD loss
# (targets ≤ 35 ms and ≤ 3 GiB fwd+bwd), and where a GKD step's time goes.
"$PYTHON" benchmarks/vocab.py --liger --tag gpu-liger
"$PYTHON" benchmarks/gkd_step.py --precision bf16 --tag gpu-bf16
