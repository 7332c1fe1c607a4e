#!/bin/sh
# Validation of `lpzero nas` where the ground truth is known: for parameter budgets at the
# 25, 50 and 75 % quantiles of each shipped benchmark, the truth of each proxy's top-1 and
# top-5 within the budget against the best architecture within it and against picking the
# largest ones. The proxy values come from the committed baseline tables
# (results/baselines/<bench>/baselines.csv, written by `lpzero baselines`), so nothing is
# probed. Budgets and the pick by parameters use lpzero's counts of the trained networks
# (`lpzero params`: FlexiBERT at the JSON's intended sizes); the FlexiBERT table was probed
# with the reference-faithful sizes, the default when it was made. Writes
# results/nas/<bench>/validation.{md,json}; the tables are copied into results/README.md.
#
# Usage: scripts/nas_validate.sh [path/to/lpzero]   (default: target/release/lpzero)
set -eu
LPZERO=${1:-target/release/lpzero}
# The proxy found by split seed 0 of the FlexiBERT study run made before the probe speed
# work (results/README.md), scored at the default probe with the baselines in
# results/flexibert_default_probe_searched.csv.
SEARCHED='add(log(total(frobenius_norm(normalize(abslog(head))))), neg(mean(relu(abs(softmax)))))'
"$LPZERO" nas --bench flexibert --validate \
    --proxy "$SEARCHED;eznas;lpzero_bert" \
    --scores results/flexibert_default_probe_searched.csv --out results/nas/flexibert
"$LPZERO" nas --bench gpt2 --validate \
    --proxy lpzero_gpt2,decoder_params,eznas \
    --scores results/baselines/gpt2/baselines.csv --out results/nas/gpt2
