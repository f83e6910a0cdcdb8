#!/usr/bin/env bash
# DDP with automatic mixed precision:  PRECISION=fp16 launch/amp.sh -c configs/gpt.yaml [KEY=VALUE ...]
# PRECISION is bf16 (default) or fp16; AMP is train.precision on any mode, this is the usual shortcut.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x $here/.venv/bin/python ]] && PYTHON=$here/.venv/bin/python
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m launch ddp "train.precision=${PRECISION:-bf16}" "$@"  # a later train.precision wins
