#!/usr/bin/env bash
# Rehearse every prepared device call on this CPU machine, in an environment shaped like the device's:
# Python 3.12 and torch 2.11 (the device has 2.11.0+cu130; PyPI's 2.11.0 wheel runs on a CPU), with only
# the packages the device is known to hold (no kornia, faiss or transformers; tensorboard is absent here,
# though the device has it). Not part of CI: the venv costs ~3 GB (torch's CUDA libraries) and ~2 minutes.
#   bash benchmarks/device/rehearse.sh            # call 1's dry run, then every suite in --smoke mode
# It catches what a GPU session would otherwise find first: an import that needs a test-only package, a
# torch 2.11 / Python 3.12 difference, a stale path between two calls on a warm machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
# a pyenv shim named python3.12 may exist yet refuse to run: take the first candidate that runs
if [ -z "${PY312:-}" ]; then
  for c in python3.12 /root/.pyenv/versions/3.12.1/bin/python; do
    if "$c" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then PY312=$c; break; fi
  done
fi
: "${PY312:?no working Python 3.12 found: set PY312=/path/to/python3.12}"
V=${REHEARSE_VENV:-/tmp/contrastkit-device-venv}
if [ ! -x "$V/bin/python" ]; then
  "$PY312" -m venv "$V"
  "$V/bin/python" -m pip install -q --disable-pip-version-check torch==2.11.0 numpy scikit-learn pillow \
    tqdm pyyaml matplotlib safetensors pytest scipy 2> >(grep -v "is ignored" >&2)
fi
export PATH="$V/bin:$PATH" OMP_NUM_THREADS=1
python3 -c "import sys, torch; print('rehearsal: python', sys.version.split()[0], 'torch', torch.__version__)"
R=$(mktemp -d /tmp/rehearse-XXXX)
OUT=$R/call1 DATA=digits EPOCHS=1 COMPILE= \
  BENCH_ARGS="--encoder small_cnn --image-size 8 --steps 2 --warmup-steps 1 --batch-size 64" \
  bash benchmarks/device/call1_fast.sh > "$R/call1.log" 2>&1
[ -f "$R/call1/gpu_tests.log" ] && grep -E "passed|failed|error" "$R/call1/gpu_tests.log" | tail -1
python3 -c "import json; m = json.load(open('$R/call1/metrics.json')); print('call 1: knn', m['knn_top1'])"
for suite in objectives negatives sela resume; do
  OUT=$R/$suite python3 benchmarks/device/suite.py "$suite" --smoke > "$R/$suite.log" 2>&1
  python3 - "$R/$suite/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
bad = [r["row"] for r in rows if r.get("error") or r.get("rc") not in (0, None)]
print(f"{rows[0]['suite']}: {len(rows)} rows, failed: {bad or 'none'}")
sys.exit(1 if bad else 0)
EOF
done
echo "rehearsal ok; logs in $R"
