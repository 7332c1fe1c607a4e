#!/usr/bin/env bash
# A sharded `lpzero score` (or `lpzero nas`) on a Slurm cluster: a job array whose tasks each
# score one shard of the architectures, then a job that merges the shards once every task has
# succeeded.
#
# Run it (not sbatch it) from a folder that every node sees, with the settings in the
# environment and any further `lpzero score` options as arguments:
#
#     SHARDS=16 PROXY=all bash deploy/slurm_score.sh --batch 2 --seq-len 512
#     COMMAND=nas SHARDS=16 PROXY=lpzero_bert bash deploy/slurm_score.sh --space sample:2000 \
#         --max-params 8000000 --top 20
#
# It submits itself as the job array (--array=0-$((SHARDS-1))); each task runs
#
#     lpzero $COMMAND --bench $BENCH --proxy $PROXY --shard auto \
#         --out $SHARD_DIR/${COMMAND}_$SLURM_ARRAY_TASK_ID.jsonl ...
#
# (`--shard auto` reads SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT), and then submits
#
#     lpzero merge $SHARD_DIR/${COMMAND}_*.jsonl --out $OUT
#
# with --dependency=afterok on the whole array. $OUT is then byte for byte what the unsharded
# `lpzero score ... --out $OUT` writes; for `nas`, the folder the unsharded `lpzero nas` writes
# (the merge measures the latencies).
#
# Preemption and failures: tasks are submitted with --requeue, and a requeued task resumes its
# shard file (it skips the architectures already written). To run a failed task again, requeue
# it (`scontrol requeue <array job id>_<task id>`), which keeps the array's variables; if the
# merge job was cancelled because a task failed, run the merge command above by hand once
# every shard has finished. Use a fresh $SHARD_DIR for each run: the merge refuses shard files
# of different runs.
#
# Settings (environment variables):
#   LPZERO     the lpzero binary            (default: lpzero, found on PATH)
#   COMMAND    score or nas                 (default: score)
#   BENCH      --bench                      (default: flexibert)
#   PROXY      --proxy                      (default: all)
#   SHARDS     number of array tasks        (default: 8)
#   SHARD_DIR  folder of the shard files    (default: shards)
#   OUT        the merged output            (default: scores.csv; for nas, nas-$BENCH)
#   CPUS, MEM, TIME   resources of each task (default: 4, 16G, 04:00:00)

set -euo pipefail

LPZERO=${LPZERO:-lpzero}
COMMAND=${COMMAND:-score}
BENCH=${BENCH:-flexibert}
PROXY=${PROXY:-all}
SHARDS=${SHARDS:-8}
SHARD_DIR=${SHARD_DIR:-shards}
case "$COMMAND" in
    score) OUT=${OUT:-scores.csv} ;;
    nas) OUT=${OUT:-nas-$BENCH} ;;
    *)
        echo "error: COMMAND=$COMMAND: expected score or nas" >&2
        exit 1
        ;;
esac

if [[ -n "${SLURM_ARRAY_TASK_ID:-}" ]]; then
    # Inside the array: score this task's shard, one architecture per CPU at a time.
    exec "$LPZERO" "$COMMAND" --bench "$BENCH" --proxy "$PROXY" \
        --threads "${SLURM_CPUS_PER_TASK:-1}" \
        --shard auto --out "$SHARD_DIR/${COMMAND}_${SLURM_ARRAY_TASK_ID}.jsonl" "$@"
fi

# On the login node: submit the array, then the merge that waits for all of it.
if ! [[ "$SHARDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: SHARDS=$SHARDS: expected a positive number of array tasks" >&2
    exit 1
fi
mkdir -p "$SHARD_DIR"
array=$(sbatch --parsable \
    --job-name="lpzero-$COMMAND" \
    --array="0-$((SHARDS - 1))" \
    --cpus-per-task="${CPUS:-4}" \
    --mem="${MEM:-16G}" \
    --time="${TIME:-04:00:00}" \
    --requeue \
    --open-mode=append \
    --output="$SHARD_DIR/${COMMAND}_%A_%a.log" \
    --export=ALL \
    "$0" "$@")
array=${array%%;*} # --parsable prints "jobid" or "jobid;cluster"
merge_cmd=$(printf '%q ' "$LPZERO" merge)"$(printf '%q' "$SHARD_DIR")/${COMMAND}_*.jsonl --out $(printf '%q' "$OUT")"
merge=$(sbatch --parsable \
    --job-name=lpzero-merge \
    --dependency="afterok:$array" \
    --time=00:30:00 \
    --output="$SHARD_DIR/merge_%j.log" \
    --export=ALL \
    --wrap="$merge_cmd")
merge=${merge%%;*}
echo "submitted the array $array ($SHARDS shards into $SHARD_DIR/) and the merge $merge (into $OUT)"
