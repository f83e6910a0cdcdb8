#!/usr/bin/env bash
# DDP on this machine, one process per GPU (1 on a CPU; --nproc-per-node N to choose):  launch/ddp.sh -c configs/cnn.yaml [KEY=VALUE ...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $here/.venv/bin/python ]] && PYTHON=$here/.venv/bin/python
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m launch ddp "$@"
