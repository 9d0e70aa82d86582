#!/usr/bin/env bash
# GPU call 1 (issue 5 / issue 2): the CUDA-only tests, the step benchmark, then a SimCLR run sized to
# TRAIN_SECONDS of training (default 300: the "kNN >= 0.83 in 5 minutes" target). Call 1b runs
# TRAIN_SECONDS=480 SKIP_TESTS=1 for the ">= 0.87 in 20 minutes" target: a session's 15 device minutes
# cannot hold a 20-minute run, so that target can only be shown met early, within about 8 minutes.
# Run from the repo root on the device machine with the CIFAR zip carried in .carry/ (pytest and
# pytest-timeout are there; kornia and faiss are not, and the tests run here need neither).
# The whole script stays inside DEADLINE seconds (default 570, under the run's 600-s limit): the training
# gets SIGTERM at the deadline, checkpoints, and the results below are still copied to $OUT. Call 1b passes
# call 1's full-step images/s as IPS=..., which skips the benchmark (its compiles cost 1-3 minutes).
set -uo pipefail
DEADLINE=${DEADLINE:-570}
export PYTHONUNBUFFERED=1 PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATA=${DATA:-.carry/cifar10-jpeg.zip}
COMPILE=${COMPILE---compile}   # COMPILE= (empty) for a quick CPU dry run: DATA=digits EPOCHS=1 COMPILE=
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch,sys;print('torch',torch.__version__,'python',sys.version.split()[0])"
TRAIN_SECONDS=${TRAIN_SECONDS:-300}
cp .carry/COMMIT "$OUT/COMMIT" 2>/dev/null || git rev-parse --short HEAD > "$OUT/COMMIT" 2>/dev/null
# whole-step caps (each test also has --timeout 120): a hang or slow compiles must leave the training its time
TESTS_SECONDS=${TESTS_SECONDS:-180}; BENCH_SECONDS=${BENCH_SECONDS:-210}
if [ -z "${SKIP_TESTS:-}" ]; then
  # every CUDA-only test (they skip on the CPU machine); kornia and faiss are absent there, so the tests
  # that use them as oracles skip or fail at import: those are listed, not fatal
  TIMEOUT=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout 120")   # a hang must not eat the call
  timeout -k 10 "$TESTS_SECONDS" python3 -m pytest -rfEs -p no:cacheprovider $TIMEOUT --continue-on-collection-errors \
    -k "cuda or gpu or pinned or test_placement" \
    tests/data tests/training tests/evaluation tests/negatives tests/clustering tests/views 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
fi
BENCH_ARGS=${BENCH_ARGS:---steps 60 --warmup-steps 15}   # CPU dry run: '--encoder small_cnn --image-size 8 --steps 2 --warmup-steps 1'
if [ -z "${IPS:-}" ]; then
  timeout -k 10 "$BENCH_SECONDS" python3 benchmarks/train_step.py $COMPILE ${COMPILE:+--compile-views} --data $DATA $BENCH_ARGS \
    --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
  IPS=$(python3 -c "import json;print(json.load(open('$OUT/bench.json'))['results']['full']['images_per_s'])" || echo 15000)
fi
RUN=/tmp/run5-$(date +%H%M%S)   # a new folder per call: a warm machine keeps /tmp between calls
LEFT=$((DEADLINE - SECONDS - 30))   # 30 s: the SIGTERM checkpoint (killed after 25 s) and the copies below
if [ "$LEFT" -lt 60 ]; then echo "only $LEFT s left: no training run in this call"; exit 1; fi   # timeout 0 = none
# the epochs fit the time really left (slow tests or compiles must not cut the cosine schedule short);
# ~150 s of it go to compiling, decoding and the kNN points (every 5 epochs)
BUDGET=$(( TRAIN_SECONDS < LEFT ? TRAIN_SECONDS : LEFT ))
EP=${EPOCHS:-$(python3 -c "print(max(20,min(400,int(($BUDGET-150)*float('$IPS')/50000))))")}
echo "full-step images/s=$IPS, $BUDGET s of training -> epochs=$EP"
echo "training gets at most $LEFT s of the call (SIGTERM then)"
# --foreground: the signal goes to the trainer alone (its DataLoader workers must live to finish the checkpoint)
timeout --foreground -s TERM -k 25 "$LEFT" python3 -m contrastkit train --data $DATA --epochs $EP --batch-size 512 $COMPILE --knn-every 5 --checkpoint-every 1000000 \
  --crop-min-scale 0.2 --temperature 0.2 --lr 0.3 --no-progress --out "$RUN" 2>&1 | tee "$OUT/train5.log"
cp "$RUN/metrics.json" "$RUN/config.yaml" "$OUT/" 2>/dev/null
gzip -c "$RUN/history.jsonl" > "$OUT/history5.jsonl.gz" 2>/dev/null
# stopped at the deadline: no metrics.json, but the checkpoint's progress holds the kNN-vs-time curve
[ -f "$RUN/metrics.json" ] || python3 -c "
import json, torch
p = torch.load('$RUN/checkpoint.pt', map_location='cpu', weights_only=False)['progress']
json.dump({k: p[k] for k in ('epoch', 'train_seconds', 'knn_curve', 'knn_top1_random_init', 'knn_top1_raw_pixels')},
          open('$OUT/progress_at_stop.json', 'w'), indent=1)
print('stopped after', p['epoch'], 'complete epochs; last kNN', p['knn_curve'][-1] if p['knn_curve'] else None)"
