#!/usr/bin/env bash
# Test on GPUS processes of this machine (CPU-only machines use gloo):
#   tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py options]
# NNODES, NODE_RANK, MASTER_ADDR and PORT set up multi-node runs; PYTHON
# picks the interpreter (default: .venv/bin/python if present, else python).
set -euo pipefail
NAME=$(basename "$0")
USAGE="usage: $NAME CONFIG CHECKPOINT GPUS [test.py options]"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    cat <<HELP
$USAGE

Test CONFIG with CHECKPOINT on GPUS processes of this machine with torchrun
(CPU processes over gloo when there is no CUDA); the remaining arguments go
to test.py (python test.py --help lists them), e.g.
  $NAME CONFIG CHECKPOINT 8 --format-only --format-dir OUT

environment:
  NNODES, NODE_RANK   nodes in all (default 1) and this node's rank (0)
  MASTER_ADDR, PORT   rendezvous address (127.0.0.1) and port (29500)
  PYTHON              interpreter (default: .venv/bin/python if present,
                      else python)
HELP
    exit 0
fi
if [ $# -lt 3 ]; then
    echo "$USAGE" >&2
    echo "$NAME: error: CONFIG, CHECKPOINT and GPUS are required" >&2
    exit 2
fi
if ! [[ $3 =~ ^[1-9][0-9]*$ ]]; then
    echo "$USAGE" >&2
    echo "$NAME: error: GPUS: '$3' is not a positive number of processes" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON=${PYTHON:-python}
if [ -x "$ROOT/.venv/bin/python" ] && [ "$PYTHON" = python ]; then
    PYTHON="$ROOT/.venv/bin/python"
fi

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$ROOT/test.py" \
    "$CONFIG" \
    "$CHECKPOINT" \
    --launcher pytorch \
    "${@:4}"
