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
# The best expression of the FlexiBERT search, seed 1 (results/README.md).
SEARCHED='add(mean(no_op(sqrt(head))), mean(softmax(sigmoid(grad))))'
"$LPZERO" nas --bench flexibert --validate \
    --proxy "eznas;lpzero_bert;$SEARCHED" \
    --scores results/baselines/flexibert/baselines.csv --out results/nas/flexibert
"$LPZERO" nas --bench gpt2 --validate \
    --proxy lpzero_gpt2,decoder_params,eznas \
    --scores results/baselines/gpt2/baselines.csv --out results/nas/gpt2
