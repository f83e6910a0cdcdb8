#!/usr/bin/env bash
# One process, nn.DataParallel over the local GPUs:  launch/dp.sh -c configs/cnn.yaml [KEY=VALUE ...]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $here/.venv/bin/python ]] && PYTHON=$here/.venv/bin/python
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m launch dp "$@"
