#!/usr/bin/env bash
# The GPU checks of the engine issue (#7), as one prepared script for a lent device:
#   bash bench/gpu.sh                       # mlp + Gauss, mlp-bn, resnet20 on 50,000 images,
#                                           # the language models with the Gauss length
#   DEVICE=cpu IMAGES=64 ALPHAS=3 REPEATS=1 bash bench/gpu.sh   # a dry run of the same script
# Targets: mlp (digits, 50 alphas, Gauss length included) under 0.5 s per path after warm-up;
# resnet20 over 50,000 CIFAR-shaped images with BN re-estimation under 30 s; mliscan at least
# 3x faster than the paper-style loop on both. Every table prints medians of interleaved runs.
set -euo pipefail
DEVICE=${DEVICE:-cuda}
IMAGES=${IMAGES:-50000}
ALPHAS=${ALPHAS:-50}
REPEATS=${REPEATS:-3}
PY=${PY:-python}
cd "$(dirname "$0")/.."
$PY - <<'PY'
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, {name}")
PY
common=(--device "$DEVICE" --alphas "$ALPHAS" --repeats "$REPEATS")
$PY bench/interpolation.py --workload mlp --gauss "${common[@]}"
$PY bench/interpolation.py --workload mlp-bn "${common[@]}"
$PY bench/interpolation.py --workload resnet20 --images "$IMAGES" "${common[@]}"
$PY bench/interpolation.py --workload lstm-lm --gauss "${common[@]}"
$PY bench/interpolation.py --workload transformer-lm --gauss "${common[@]}"
$PY bench/interpolation.py --workload gpt2-tiny --gauss "${common[@]}"
if [ "$DEVICE" != cpu ]; then  # minutes on a CPU: the dry run leaves it out
  $PY bench/interpolation.py --workload pythia-shaped --gauss "${common[@]}"
fi
