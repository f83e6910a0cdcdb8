#!/usr/bin/env bash
# DDP across machines; run on every node with the same NNODES, MASTER_ADDR, MASTER_PORT and its own NODE_RANK:
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 launch/multinode.sh -c configs/cnn.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 MASTER_PORT=29500 launch/multinode.sh -c configs/cnn.yaml
# MODE=fsdp (or accelerate) switches the strategy; extra launch flags and KEY=VALUE overrides pass through.
set -euo pipefail
for var in NNODES NODE_RANK MASTER_ADDR MASTER_PORT; do
  if [[ -z ${!var:-} ]]; then
    echo "multinode.sh: set $var (NNODES, NODE_RANK 0..NNODES-1, MASTER_ADDR and MASTER_PORT of node 0)" >&2
    exit 2
  fi
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $here/.venv/bin/python ]] && PYTHON=$here/.venv/bin/python
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m launch "${MODE:-ddp}" --nnodes "$NNODES" --node-rank "$NODE_RANK" \
  --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" "$@"
