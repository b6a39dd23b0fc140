#!/usr/bin/env bash
# Issue 12, items 5 and 6, on a GPU machine in one go: the CUDA tests, the renderer and a
# second-order step on the GPU, then as much of the accuracy-against-data sweep as the time
# left allows (every part is resumable: rerun the script to continue it).
#
# Run from the repository root, with the project importable (an install, or PYTHONPATH=.):
#
#     OUT=gpu_out SWEEP_SECONDS=360 bash benchmarks/gpu_checks.sh
#
# Settings (environment): OUT (folder of every output, default gpu_out), DEVICE (default
# cuda), PYTHON (default python3), SWEEP_SECONDS (time for the sweep, default 360: it is
# stopped then, its finished parts kept), SIZES, SEEDS and JOBS of the sweep (default
# "2000 4000 8000 16000", "0 1 2 3 4" and 8), EPOCHS and REFERENCE (the sweep's --epochs and
# --reference-size, default "1000 1000 800" and "2000 8000 8000", its default rule: value at
# equal steps above 2000 samples, the derivatives at equal epochs up to 8000, see
# docs/accuracy.rst), QUICK=1 for a smoke run of the whole script
# in a minute (tiny data; DEVICE=cpu works too, without the CUDA tests).
set -u
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-python3}
SWEEP_SECONDS=${SWEEP_SECONDS:-360}
SIZES=${SIZES:-2000 4000 8000 16000}
SEEDS=${SEEDS:-0 1 2 3 4}
JOBS=${JOBS:-8}
EPOCHS=${EPOCHS:-1000 1000 800}
REFERENCE=${REFERENCE:-2000 8000 8000}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
q=()
# shellcheck disable=SC2206
budget=(--epochs $EPOCHS --reference-size $REFERENCE)
if [ "$QUICK" = 1 ]; then q=(--quick); budget=(--epochs 4 4 2 --reference-size 24); fi

step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "device"
{ nvidia-smi || true; "$PYTHON" -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"; } \
    > "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

if [ "$DEVICE" != cpu ]; then
    step "CUDA tests (pytest -m cuda)"
    "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda -rs > "$OUT/cuda_tests.txt" 2>&1
    echo "rc $?"; tail -n 5 "$OUT/cuda_tests.txt"
fi

step "renderer and second-order step on $DEVICE"
sizes=(64 256 1024 4096)
[ "$QUICK" = 1 ] && sizes=(4 16)
"$PYTHON" benchmarks/render.py "${q[@]}" --manifold cube --exact-only --step-cost --device "$DEVICE" \
    --batch-sizes "${sizes[@]}" --out "$OUT/render_$DEVICE.json" > "$OUT/render_$DEVICE.txt" 2>&1
echo "rc $?"; tail -n 12 "$OUT/render_$DEVICE.txt"

step "accuracy against data size on $DEVICE, at most $SWEEP_SECONDS s"
# shellcheck disable=SC2086
timeout --signal=INT "$SWEEP_SECONDS" "$PYTHON" benchmarks/accuracy_vs_data.py "${q[@]}" --work "$OUT/acc_$DEVICE" \
    --sizes $SIZES --seeds $SEEDS --objectives value second "${budget[@]}" --device "$DEVICE" --jobs "$JOBS" \
    > "$OUT/sweep_$DEVICE.txt" 2>&1
echo "rc $? (124 or 130: stopped at the time limit; rerun to continue)"; tail -n 4 "$OUT/sweep_$DEVICE.txt"

step "summary of the parts so far"
"$PYTHON" benchmarks/accuracy_vs_data.py --work "$OUT/acc_$DEVICE" --summarize "${budget[@]}" \
    --out "$OUT/accuracy_vs_data_$DEVICE.json" 2>&1 | tee "$OUT/summary_$DEVICE.txt" | tail -n 12
