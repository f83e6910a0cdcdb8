#!/usr/bin/env bash
# The GPU session's one command, from the repository root on the device machine (its own python3 with
# torch 2.11; the project carried as is, no venv, no internet):
#
#   OUT=$OUT timeout 570 bash bench/gpu_session.sh
#
# 1. preflight (seconds): the trainer imports with this python3, and a CUDA device is visible; a missing
#    package is named at once instead of after a cold start of every row
# 2. python3 -m bench.gpu --budget-s 390: recipe MFU, trainer ÷ raw in bf16, FSDP, then the other rows;
#    the JSON is rewritten after every row ($OUT/gpu-YYYYMMDD.json)
# 3. python3 -m bench.gpu_check --budget-s 90: every launch mode x precision, bf16 and fp16 first
# About 8.5 minutes in all; each script keeps its finished rows if the timeout cuts it short.
set -u
export OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
python3 - <<'PY' || exit 3
import sys

import torch

print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}", flush=True)
if not torch.cuda.is_available():
    sys.exit("preflight failed: no CUDA device")
try:  # what the rows import: the trainer's build, accelerate for its rows
    import accelerate  # noqa: F401
    import bench.gpu  # noqa: F401
    import trainer.run  # noqa: F401
except ImportError as e:
    sys.exit(f"preflight failed: {e}")
PY
python3 -m bench.gpu --budget-s "${GPU_BUDGET_S:-390}"
gpu=$?
python3 -m bench.gpu_check --budget-s "${CHECK_BUDGET_S:-90}"
check=$?
echo "bench.gpu exit $gpu, bench.gpu_check exit $check; JSON under $OUT"
exit $(( gpu != 0 ? gpu : check ))
