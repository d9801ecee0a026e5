#!/usr/bin/env bash
# Train under Slurm, one task per GPU.
#   tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]
# Environment: GPUS (total, default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5),
# SRUN_ARGS (extra srun arguments).
set -euo pipefail
NAME=$(basename "$0")
USAGE="usage: $NAME PARTITION JOB_NAME CONFIG WORK_DIR [train.py args]"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    cat <<HELP
$USAGE

Train CONFIG under Slurm (srun, one task per GPU) into WORK_DIR; the
remaining arguments go to train.py (python train.py --help lists them).

environment:
  GPUS           tasks in all (default 8)
  GPUS_PER_NODE  tasks per node (default 8)
  CPUS_PER_TASK  CPUs per task (default 5)
  SRUN_ARGS      extra srun arguments
  PYTHON         interpreter (default: python)
HELP
    exit 0
fi
if [ $# -lt 4 ]; then
    echo "$USAGE" >&2
    echo "$NAME: error: PARTITION, JOB_NAME, CONFIG and WORK_DIR are" \
        "required" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}

echo "$NAME: srun -p $PARTITION --job-name=$JOB_NAME --ntasks=$GPUS" \
    "($GPUS_PER_NODE per node) train.py $CONFIG --work-dir=$WORK_DIR" >&2
# shellcheck disable=SC2086  # SRUN_ARGS is a list of words
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher=slurm "${@:5}"
