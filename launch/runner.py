"""Run a :class:`launch.modes.Plan` and return the exit code the job deserves.

torchrun and ``accelerate launch`` run *in this process* (torch imported only here): run as commands they exit
1 for any worker failure, and a preemption (75) or a config error (2) would look like a bug to the scheduler.
Single-process modes run the trainer as a child in its own session, as torchrun does with its workers, and
this process forwards SIGTERM/SIGINT/SIGHUP to it, so ``docker stop`` or a pod deletion reaches the trainer
once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from launch import outcome
from launch.exitcodes import CONFIG, HANG, describe
from launch.modes import Plan

SHUTDOWN_GRACE_S = 30  # torchrun's default wait between SIGTERM and SIGKILL for its workers


def check_config(
    entry: str,
    config: str | None,
    overrides: list[str],
    mode: str,
    timeout: float = 120,
    world_size: int | None = None,
    nproc_per_node: int | None = None,
) -> str | None:
    """Run ``python -m ENTRY check`` once, before any worker starts; None if the config (and, given the
    world size, the device mesh it asks for) is valid, else its line."""
    cmd = [
        sys.executable,
        "-m",
        entry,
        "check",
        *(["-c", config] if config else []),
        *(["--world-size", str(world_size), "--nproc-per-node", str(nproc_per_node)] if world_size else []),
        *overrides,
        f"train.strategy={mode}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"`{entry} check` did not answer within {timeout:.0f} s"
    if proc.returncode == 0:
        return None
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"`{entry} check` exited with {proc.returncode}"


@contextlib.contextmanager
def forwarding_signals():
    """Pass SIGTERM, SIGINT and SIGHUP on to our child processes while the block runs.

    SIGINT and SIGHUP from a terminal already reach every process of the foreground group, so they are
    forwarded only to children in another process group (a second SIGINT means "exit now" to the trainer).
    """
    import psutil

    own_group = os.getpgrp()

    def forward(signum, _frame):
        for child in psutil.Process().children():
            try:
                if signum == signal.SIGTERM or os.getpgid(child.pid) != own_group:
                    child.send_signal(signum)
            except (psutil.Error, ProcessLookupError):
                pass

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _report(f: outcome.Failure) -> int:
    why = f": {f.reason}" if f.reason else ""
    print(
        f"launch: rank {f.rank} exited with {f.code} ({describe(f.code)}){why}", file=sys.stderr, flush=True
    )
    return f.code


def _after_signal(exc, exit_dir: str, grace: float) -> int:
    """Stopped by a signal: the workers' reason files say what they did with it (e.g. saved, exit 75)."""
    first = outcome.from_reasons(outcome.read_reasons(exit_dir), since=time.time() - grace - 5)
    code = 128 + int(getattr(exc, "sigval", signal.SIGTERM))
    return _report(first) if first else code


def _run_process(plan: Plan, exit_dir: str) -> int:
    proc = subprocess.Popen(plan.argv, env=dict(os.environ), start_new_session=True)
    with forwarding_signals():
        rc = proc.wait()
    if rc == 0:
        return 0
    rank = int(os.environ.get("RANK", "0"))
    return _report(outcome.from_process(rc, outcome.read_reasons(exit_dir), time.time(), rank))


def rendezvous_failed(plan: Plan, exc: BaseException | None) -> int:
    """A rendezvous that never formed: one line naming the endpoint and the timeout, exit 4 (HANG).

    ``exc`` None: the store's port never answered (the launcher's own wait on a node that does not host it).
    """
    endpoint = plan.rdzv_endpoint or "the rendezvous endpoint"
    port = endpoint.rpartition(":")[2] or "its port"
    within = f" in {plan.rdzv_timeout_s} s" if plan.rdzv_timeout_s else ""
    if exc is None:
        what = f"the store at {endpoint} did not answer{within}"
    elif type(exc).__name__ == "RendezvousTimeoutError":
        what = f"no peer reached {endpoint}{within}"
    elif type(exc).__name__ == "RendezvousConnectionError":
        what = f"the store at {endpoint} did not answer{within}"
    else:
        first = (str(exc).strip().splitlines() or [""])[0]
        what = f"{type(exc).__name__} at {endpoint}: {first}"
    print(
        f"launch: rendezvous failed: {what}: is node 0 up? is port {port} open? "
        "(dist.init_timeout_s bounds the wait)",
        file=sys.stderr,
        flush=True,
    )
    return HANG


def _import_torch_quietly() -> None:
    """Import torch with its C++ log level at FATAL in this process only.

    The agent's TCPStore client logs each failed connection attempt as an error with ~20 C++ frames; the
    launcher reports a failed rendezvous in one line instead. The level is read once, when torch loads, and
    the variable is removed again so that the workers log as usual.
    """
    if "torch" in sys.modules or "TORCH_CPP_LOG_LEVEL" in os.environ:
        return
    os.environ["TORCH_CPP_LOG_LEVEL"] = "FATAL"
    try:
        import torch  # noqa: F401
    finally:
        del os.environ["TORCH_CPP_LOG_LEVEL"]


def _store_answers(plan: Plan) -> bool:
    """On a node that does not host the store: wait until its port answers, within the rendezvous timeout.

    torchrun's own client wait is not bounded by the timeout (TCPStore retries with a random back-off:
    measured 11 s for a 5 s timeout, 21 s for 8 s), so the launcher waits itself and torchrun then connects at
    once.
    """
    from launch.cluster import split_endpoint
    from launch.wait import READY, wait_for

    host, port = split_endpoint(plan.rdzv_endpoint or "", "rendezvous endpoint")
    return wait_for(host, port, float(plan.rdzv_timeout_s or 0), interval=0.5, log=lambda _msg: None) == READY


def _run_torchrun(plan: Plan, exit_dir: str) -> int:
    if plan.rdzv_client and plan.rdzv_endpoint and not _store_answers(plan):
        return rendezvous_failed(plan, None)
    _import_torch_quietly()
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(plan.tool_args)
    try:
        run(args)
    except ChildFailedError as e:
        return _report(outcome.from_failures(e.failures, outcome.read_reasons(exit_dir)))
    except SignalException as e:
        return _after_signal(e, exit_dir, getattr(args, "shutdown_timeout", None) or SHUTDOWN_GRACE_S)
    except RendezvousError as e:
        return rendezvous_failed(plan, e)
    return 0


def _run_accelerate(plan: Plan, exit_dir: str) -> int:
    # accelerate reads HF_HOME when imported, so the environment is set before this import.
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(plan.tool_args)
    try:
        with forwarding_signals():  # one process: accelerate's simple launcher forwards nothing itself
            launch_command(args)
    except ChildFailedError as e:
        return _report(outcome.from_failures(e.failures, outcome.read_reasons(exit_dir)))
    except subprocess.CalledProcessError as e:
        return _report(outcome.from_process(e.returncode, outcome.read_reasons(exit_dir), time.time()))
    except SignalException as e:
        return _after_signal(e, exit_dir, SHUTDOWN_GRACE_S)
    return 0


RUNNERS = {"process": _run_process, "torchrun": _run_torchrun, "accelerate": _run_accelerate}


def execute(plan: Plan) -> int:
    """Start the job and wait for it; the workers inherit this process's environment plus ``plan.env``."""
    tmp = tempfile.mkdtemp(prefix="launch-")
    try:
        fresh = {name: os.path.join(tmp, name.lower()) for name in plan.fresh_dirs}
        for path in fresh.values():
            os.makedirs(path)
        for name in plan.unset:  # PET_* values the plan passes as flags: torchrun's parser must not read them
            os.environ.pop(name, None)
        os.environ.update(plan.env)
        os.environ.update(fresh)
        os.environ["LAUNCH_PID"] = str(os.getpid())  # workers die with this process (runtime/signals.py)
        try:
            return RUNNERS[plan.kind](plan, fresh.get("TRAINER_EXIT_DIR", tmp))
        except ImportError as e:  # torch or accelerate missing: an unfit environment, not a bug
            print(
                f"launch: {plan.kind} needs {e.name or e}: install the pinned requirements", file=sys.stderr
            )
            return CONFIG
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
