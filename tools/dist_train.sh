#!/usr/bin/env bash
# Train on GPUS processes of this node (and NNODES nodes in all) with torchrun.
#   tools/dist_train.sh CONFIG GPUS [train.py args]
# Multi-node: run on every node with the same MASTER_ADDR/PORT, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 tools/dist_train.sh CONFIG 8
set -euo pipefail
NAME=$(basename "$0")
USAGE="usage: $NAME CONFIG GPUS [train.py args]"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
    cat <<HELP
$USAGE

Train CONFIG on GPUS processes of this machine with torchrun (CPU processes
over gloo when there is no CUDA); the remaining arguments go to train.py
(python train.py --help lists them).

environment:
  NNODES, NODE_RANK   nodes in all (default 1) and this node's rank (0)
  MASTER_ADDR, PORT   rendezvous address (127.0.0.1) and port (29500)
  PYTHON              interpreter (default: .venv/bin/python if present,
                      else python)
HELP
    exit 0
fi
if [ $# -lt 2 ]; then
    echo "$USAGE" >&2
    echo "$NAME: error: CONFIG and GPUS are required" >&2
    exit 2
fi
if ! [[ $2 =~ ^[1-9][0-9]*$ ]]; then
    echo "$USAGE" >&2
    echo "$NAME: error: GPUS: '$2' is not a positive number of processes" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
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
    "$ROOT/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
