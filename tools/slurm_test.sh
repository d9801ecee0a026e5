#!/usr/bin/env bash
# Test on a Slurm cluster:
#   tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
# GPUS (default 8), GPUS_PER_NODE (8), CPUS_PER_TASK (5) and SRUN_ARGS
# shape the job; PYTHON picks the interpreter (default: python on PATH).
set -euo pipefail
NAME=$(basename "$0")
USAGE="usage: $NAME PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    cat <<HELP
$USAGE

Test CONFIG with CHECKPOINT under Slurm (srun, one task per GPU); the
remaining arguments go to test.py (python test.py --help lists them).

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
    echo "$NAME: error: PARTITION, JOB_NAME, CONFIG and CHECKPOINT are" \
        "required" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}

echo "$NAME: srun -p $PARTITION --job-name=$JOB_NAME --ntasks=$GPUS" \
    "($GPUS_PER_NODE per node) test.py $CONFIG $CHECKPOINT" >&2
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
    "$PYTHON" -u "$ROOT/test.py" "$CONFIG" "$CHECKPOINT" --launcher=slurm \
    "${@:5}"
