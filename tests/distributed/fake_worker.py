"""A stand-in for ``python -m trainer`` that keeps the launcher's half of the contract testable on its own.

``python -m fake_worker check [-c CONFIG] ...`` exits 2 with one line on stderr when CONFIG is
missing, else 0.
``python -m fake_worker train -c CONFIG ...`` records what it saw in ``$FAKE_OUT/rank{R}-attempt{K}.json`` and
then, on the rank in FAKE_RANK (default: every rank):

- FAKE_EXIT=N        exit with N, after writing the reason file the trainer would write;
- FAKE_FIRST_ONLY=1  ... but only on the first attempt (TORCHELASTIC_RESTART_COUNT == 0);
- FAKE_SIGNAL=ABRT   after the reason file, die by that signal instead (gloo's abort at interpreter exit);
- FAKE_WAIT_TERM=1   write ``ready-rank{R}`` and wait for SIGTERM, then exit 75 like a preempted trainer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def write_reason(rank: int, code: int, reason: str) -> None:
    exit_dir = os.environ.get("TRAINER_EXIT_DIR")
    if exit_dir:
        with open(os.path.join(exit_dir, f"exit-rank{rank}.json"), "w") as f:
            json.dump({"rank": rank, "code": code, "reason": reason, "time": time.time()}, f)


def train(argv: list[str]) -> int:
    rank = int(os.environ.get("RANK", "0"))
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    out = os.environ.get("FAKE_OUT")
    if out:
        seen = {
            k: os.environ.get(k)
            for k in (
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "LOCAL_WORLD_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
                "OMP_NUM_THREADS",
                "TORCH_DISABLE_SHARE_RDZV_TCP_STORE",
                "TRAINER_EXIT_DIR",
                "NCCL_SOCKET_IFNAME",
                "GLOO_SOCKET_IFNAME",
                "NCCL_IB_HCA",
                "LAUNCH_MODE",
            )
        }
        with open(os.path.join(out, f"rank{rank}-attempt{attempt}.json"), "w") as f:
            json.dump({"argv": argv, "env": seen, "pid": os.getpid()}, f)
    targeted = os.environ.get("FAKE_RANK", str(rank)) == str(rank)
    if targeted and os.environ.get("FAKE_WAIT_TERM"):
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        open(os.path.join(out, f"ready-rank{rank}"), "w").close()
        deadline = time.time() + 30
        while not stop and time.time() < deadline:
            time.sleep(0.05)
        write_reason(rank, 75, "preempted by SIGTERM; checkpoint saved")
        return 75
    code = int(os.environ.get("FAKE_EXIT", "0"))
    if not targeted or code == 0 or (os.environ.get("FAKE_FIRST_ONLY") and attempt > 0):
        return 0
    write_reason(rank, code, f"fake failure {code}")
    if os.environ.get("FAKE_SIGNAL"):
        sys.stdout.flush()
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ["FAKE_SIGNAL"]))
        time.sleep(5)
    return code


def check(argv: list[str]) -> int:
    config = argv[argv.index("-c") + 1] if "-c" in argv else None
    if config is not None and not os.path.exists(config):
        print(f"config: file {config!r} not found", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    command, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"train": train, "check": check}[command](rest))
