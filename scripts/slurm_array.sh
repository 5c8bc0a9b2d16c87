#!/usr/bin/env bash
# Example: permutation inference of bids_group_app as a SLURM job array, with Apptainer.
#
# The N shards of the shufflings run as N array tasks, in parallel; a dependent job merges them
# and writes OUTPUT_DIR. The merged results are identical, bit for bit, to a single run with the
# same options. Adapt the settings below (or set them in the environment), then, on a login node:
#
#   bash scripts/slurm_array.sh            # submits the jobs and prints their ids
#
# Under sbatch the same file is the job script (its first argument says which part it runs).
#
# One-off preparation: the image as a SIF file (on a machine with network access)
#   apptainer build bids_group_app-0.1.0.sif docker://bids/bids_group_app:0.1.0
#
# How the jobs share state:
#   WORK_DIR (-w)          shared by all jobs: each shard saves WORK_DIR/perm-shards/<key>-shard-KofN.npz,
#                          the merge reads all N. Shards of another analysis never mix (the key hashes
#                          data, design, contrast and options), so the folder can be reused.
#   DB_DIR                 the PyBIDS index (--bids-database-dir): built once by the first job (shard 1),
#                          then only read by the other shards and the merge, which wait for it. It is
#                          keyed on the dataset path as the container sees it, so every job binds the
#                          dataset at the same place (/data). Delete it when the dataset changes.
#   the options            must be the same in every job (APP_OPTS), or the merge finds no shards.
#
#SBATCH --job-name=bids_group_app
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

# ---- settings -------------------------------------------------------------------------------
BIDS_DIR="${BIDS_DIR:-$HOME/data/ds000001}"             # raw dataset, first-level maps in derivatives/
OUTPUT_DIR="${OUTPUT_DIR:-$HOME/results/ds000001-group}"
SCRATCH="${SCRATCH_DIR:-/scratch/$USER/bids_group_app}"  # shared file system, seen by every node
WORK_DIR="${WORK_DIR:-$SCRATCH/work}"
DB_DIR="${DB_DIR:-$SCRATCH/bidsdb}"
SIF="${SIF:-$HOME/containers/bids_group_app-0.1.0.sif}"
N_SHARDS="${N_SHARDS:-20}"
# The analysis: identical in every job. 10,000 sign-flips with TFCE, as in the README's seed 002.
APP_OPTS=(--filter contrast=motor --covariates score --smoothing-fwhm 5 --n-perm 10000 --tfce --seed 0)
# OpenBLAS picks its kernels for each node's CPU (AVX-512 "SkylakeX", AVX2 "Haswell", ...), and the
# float32 sums then differ in the last bits. On a partition of mixed node types, one kernel for
# every job keeps the shards consistent and the results reproducible across machines (Haswell
# kernels run on any x86-64 CPU with AVX2); leave empty to let OpenBLAS choose.
BLAS_CORETYPE="${BLAS_CORETYPE:-Haswell}"

# ---- the container call -----------------------------------------------------------------------
# --cleanenv: no host variables (PYTHONPATH, conda, OMP_*) leak in; the image sets its own (caches in
#   /tmp, HOME unused); --env adds OPENBLAS_CORETYPE. The SIF is read-only and runs as the calling user.
# -B: the dataset read-only at /data; outputs, the shared work folder and the index read-write;
#   /tmp from node-local scratch when the site offers one.
# --n-cpus: the cores SLURM gave the task (BLAS threads are capped to it).
bids_group_app() {
    apptainer run --cleanenv --no-home \
        ${BLAS_CORETYPE:+--env "OPENBLAS_CORETYPE=$BLAS_CORETYPE"} \
        -B "$BIDS_DIR:/data:ro" \
        -B "$OUTPUT_DIR:/out" \
        -B "$WORK_DIR:/work" \
        -B "$DB_DIR:/bidsdb" \
        -B "${SLURM_TMPDIR:-${TMPDIR:-/tmp}}:/tmp" \
        "$SIF" /data /out group "${APP_OPTS[@]}" \
        --bids-database-dir /bidsdb -w /work --n-cpus "${SLURM_CPUS_PER_TASK:-1}" "$@"
}

case "${1:-submit}" in
submit)
    # ---- on the login node: submit shard 1 (it also builds the index), shards 2..N once the index
    # exists, and the merge once every shard succeeded (afterok on an array = all of its tasks)
    [ -f "$SIF" ] || { echo "no image $SIF (apptainer build ... docker://bids/bids_group_app:<version>)" >&2; exit 1; }
    mkdir -p logs "$OUTPUT_DIR" "$WORK_DIR" "$DB_DIR"
    export BIDS_DIR OUTPUT_DIR WORK_DIR DB_DIR SIF N_SHARDS BLAS_CORETYPE   # the jobs inherit them (--export=ALL)
    first=$(sbatch --parsable --array=1 "$0" shard)
    echo "shard 1/$N_SHARDS (and the PyBIDS index): job $first"
    deps="$first"
    if [ "$N_SHARDS" -gt 1 ]; then
        rest=$(sbatch --parsable --array="2-$N_SHARDS" --dependency="afterok:$first" "$0" shard)
        echo "shards 2-$N_SHARDS/$N_SHARDS: job array $rest"
        deps="$first:$rest"
    fi
    merge=$(sbatch --parsable --dependency="afterok:$deps" --cpus-per-task=2 --mem=16G --time=01:00:00 \
        --job-name=bids_group_app-merge "$0" merge)
    echo "merge into $OUTPUT_DIR: job $merge"
    echo "a failed shard K can be rerun alone: sbatch --array=K $0 shard (then submit the merge again)"
    ;;
shard)
    # ---- one array task: shard K of N into the shared work folder; nothing goes to OUTPUT_DIR
    : "${SLURM_ARRAY_TASK_ID:?run the shards as an array job (sbatch --array=1-N)}"
    echo "shard ${SLURM_ARRAY_TASK_ID}/${N_SHARDS} on $(hostname)"
    bids_group_app --perm-shard "${SLURM_ARRAY_TASK_ID}/${N_SHARDS}" --no-reports --quiet
    ;;
merge)
    # ---- the merge: reads the N shards, writes the results, the report and the methods text
    bids_group_app --merge-perm-shards
    # the shards can go once the results are in place:
    # rm -rf "$WORK_DIR/perm-shards"
    ;;
*)
    echo "usage: bash $0 [submit]   (sbatch runs it with 'shard' or 'merge')" >&2
    exit 64
    ;;
esac
