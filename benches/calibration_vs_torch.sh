#!/usr/bin/env bash
# Times lpzero's calibration probe and its PyTorch twin (benches/calibration_twin.py) back to
# back, ROUNDS times (default 3), each side the median of REPS probes (default 3), and prints
# each round and the median ratio lpzero / PyTorch (below 1: lpzero is faster).
#
#   benches/calibration_vs_torch.sh [ROUNDS]
#
# Settings: LPZERO (the binary, default target/release/lpzero), LPZERO_PYTHON (a Python with
# torch, default python3), REPS, THREADS (both engines' threads, default every core).
# Benchmark only: nothing in lpzero's build or tests needs PyTorch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
lpzero="${LPZERO:-$here/../target/release/lpzero}"
python="${LPZERO_PYTHON:-python3}"
rounds="${1:-3}"
reps="${REPS:-3}"
threads="${THREADS:-$(nproc)}"
[ -x "$lpzero" ] || { echo "$lpzero: not found; run cargo build --release or set LPZERO" >&2; exit 1; }
"$python" -c 'import torch' 2>/dev/null || { echo "$python: cannot import torch; set LPZERO_PYTHON" >&2; exit 1; }
field() { sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p"; }
ratios=()
for round in $(seq "$rounds"); do
  ours=$(RAYON_NUM_THREADS="$threads" "$lpzero" bench --calibration-only --calibration-reps "$reps" --json | field calibration_forward_backward_seconds)
  theirs=$("$python" "$here/calibration_twin.py" --reps "$reps" --threads "$threads" 2>/dev/null | tr -d ' ' | field calibration_forward_backward_seconds)
  ratio=$(awk -v a="$ours" -v b="$theirs" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$ratio")
  echo "round $round: lpzero ${ours} s, pytorch ${theirs} s, ratio ${ratio}"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "calibration (4×SA-SDP, B=32, T=128, H=256, FFN 1024, $threads threads): median ratio lpzero/pytorch $median over $rounds rounds"
