#!/usr/bin/env bash
# GPU call 1 (issue 5 / issue 2): the CUDA-only placement tests (pinned host memory), the step
# benchmark, then a SimCLR run sized to ~5 minutes of training.
# Run from the repo root on the device machine with the CIFAR zip carried in .carry/ (pytest is there;
# kornia and faiss are not, so the views and mined tests need their wheels carried).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATA=.carry/cifar10-jpeg.zip
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])"
python3 -m pytest -q -p no:cacheprovider tests/data/test_placement.py tests/training/test_cuda_train.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.log"
python3 benchmarks/train_step.py --compile --compile-views --data $DATA --steps 60 --warmup-steps 15 \
  --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
IPS=$(python3 -c "import json;print(json.load(open('$OUT/bench.json'))['results']['full']['images_per_s'])" || echo 15000)
EP=$(python3 -c "print(max(20,min(200,int((300-75)*float('$IPS')/50000))))")
echo "full-step images/s=$IPS -> epochs=$EP"
python3 -m contrastkit train --data $DATA --epochs $EP --batch-size 512 --compile --knn-every 5 \
  --crop-min-scale 0.2 --temperature 0.2 --lr 0.3 --no-progress --out /tmp/run5 2>&1 | tee "$OUT/train5.log"
cp /tmp/run5/metrics.json /tmp/run5/config.yaml "$OUT/" 2>/dev/null
gzip -c /tmp/run5/history.jsonl > "$OUT/history5.jsonl.gz" 2>/dev/null
