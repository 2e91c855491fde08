#!/usr/bin/env bash
# The GPU throughput checks as one call on a GPU machine, which
# starts bare: Python 3.12 with PyTorch, no pycocotools, no official EfficientViT-SAM code, no data.
#
#   bash benchmarks/gpu_session.sh --prepare DATA  # here, once per checkout: wheels + photos into .gpu/ (ignored);
#                                                 # DATA holds images/ (photos) and coco_subset/ (COCO val images)
#   device run: command "bash benchmarks/gpu_session.sh", carry [".gpu"], timeout_s 540
#
# On the machine: installs the carried wheels, then (each stage time-boxed, its table and JSON under $OUT)
#   1. encoder images/s at batch 16, L0 and XL1, fp32/fp16/bf16, ours vs official, eager, plus the mask IoU
#      of our fp16/bf16 predictor against fp32 on 10 real photos;
#   2. the same throughput for L0 under torch.compile.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    data=${2:?usage: gpu_session.sh --prepare DATA (a folder with images/ and coco_subset/)}
    grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    mkdir -p .gpu/whl .gpu/data
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl pycocotools efficientsam==1.0.0
    cp -r "$data/images" "$data/coco_subset" .gpu/data/
    du -sh .gpu
    exit 0
fi

OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, evitsam; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"

cd benchmarks
timeout 300 python3 gpu_throughput.py --variants l0 xl1 --batch 16 --data ../.gpu/data \
    --json "$OUT/eager.json" 2>&1 | tee "$OUT/eager.md" || echo "eager stage stopped: $?"
timeout 180 python3 gpu_throughput.py --variants l0 --batch 16 --compile --mask-photos 0 --data ../.gpu/data \
    --json "$OUT/compile.json" 2>&1 | tee "$OUT/compile.md" || echo "compile stage stopped: $?"
