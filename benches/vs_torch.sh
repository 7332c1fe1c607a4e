#!/usr/bin/env bash
# Times an lpzero probe and its PyTorch twin back to back, ROUNDS times (default 3), and prints
# each round and the median ratio lpzero / PyTorch (below 1: lpzero is faster).
#
#   benches/vs_torch.sh calibration [ROUNDS]   # the calibration encoder (benches/calibration_twin.py),
#                                              # each side the median of REPS probes (default 3)
#   benches/vs_torch.sh gpt2 [ROUNDS]          # one probe of the largest GPT-2 architecture
#                                              # (benches/gpt2_twin.py) per side and round, at
#                                              # BATCH × SEQ_LEN (default: lpzero's GPT-2 default)
#
# Settings: LPZERO (the binary, default target/release/lpzero), LPZERO_PYTHON (a Python with
# torch, default python3), THREADS (both engines' threads, default every core), REPS, BATCH,
# SEQ_LEN, ARCH (the GPT-2 config, default config_4_j9, the most parameters).
# Benchmark only: nothing in lpzero's build or tests needs PyTorch.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
what="${1:-}"
rounds="${2:-3}"
lpzero="${LPZERO:-$here/../target/release/lpzero}"
python="${LPZERO_PYTHON:-python3}"
threads="${THREADS:-$(nproc)}"
[ -x "$lpzero" ] || { echo "$lpzero: not found; run cargo build --release or set LPZERO" >&2; exit 1; }
"$python" -c 'import torch' 2>/dev/null || { echo "$python: cannot import torch; set LPZERO_PYTHON" >&2; exit 1; }
field() { tr -d ' ' | sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p"; }
case "$what" in
  calibration)
    reps="${REPS:-3}"
    label="calibration (4×SA-SDP, B=32, T=128, H=256, FFN 1024)"
    ours() { "$lpzero" bench --calibration-only --calibration-reps "$reps" --json | field calibration_forward_backward_seconds; }
    theirs() { "$python" "$here/calibration_twin.py" --reps "$reps" --threads "$threads" 2>/dev/null | field calibration_forward_backward_seconds; }
    ;;
  gpt2)
    arch="${ARCH:-config_4_j9}"
    shape=()
    [ -n "${BATCH:-}" ] && shape+=(--batch "$BATCH")
    [ -n "${SEQ_LEN:-}" ] && shape+=(--seq-len "$SEQ_LEN")
    index=$("$lpzero" params --bench gpt2 --format csv | awk -F, -v a="$arch" 'NR > 1 && $1 == a { print NR - 2 }')
    [ -n "$index" ] || { echo "GPT-2 architecture $arch: not in the benchmark" >&2; exit 1; }
    config="$here/../data/gpt2_wt103/configs/$arch.yaml"
    label="GPT-2 $arch (index $index) ${shape[*]:-default shape}"
    ours() { "$lpzero" bench --bench gpt2 --archs "$index" --proxy grad_norm --threads 1 "${shape[@]}" --json | field per_arch_seconds_median; }
    theirs() { "$python" "$here/gpt2_twin.py" "$config" "${shape[@]}" --reps 1 --threads "$threads" 2>/dev/null | field probe_seconds; }
    ;;
  *)
    echo "usage: $0 calibration|gpt2 [ROUNDS]" >&2
    exit 2
    ;;
esac
export RAYON_NUM_THREADS="$threads"
ratios=()
for round in $(seq "$rounds"); do
  a=$(ours)
  b=$(theirs)
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", a / b }')
  ratios+=("$ratio")
  echo "round $round: lpzero ${a} s, pytorch ${b} s, ratio ${ratio}"
done
median=$(printf '%s\n' "${ratios[@]}" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
echo "$label, $threads threads: median ratio lpzero/pytorch $median over $rounds rounds"
