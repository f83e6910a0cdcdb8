"""Wait, with a bounded timeout, until the rendezvous host resolves and (optionally) its port answers.

Used by ``docker/entrypoint.sh`` on every node but node 0 of a multi-node job, so that a worker pod started
before the master (image pull, scheduling) waits quietly instead of crash-looping on a name that does not
resolve yet::

    python -m launch wait --host node0 --port 29500 --timeout 300
    python -m launch.wait --host trainer-0.trainer --timeout 60      # name only, no port

Exit codes: 0 ready; 69 (EX_UNAVAILABLE from sysexits.h) not ready before the timeout; 2 bad arguments.
Only the standard library is imported: this runs before every multi-node launch and must take milliseconds.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time

READY = 0
USAGE = 2
UNAVAILABLE = 69  # EX_UNAVAILABLE: the master never became reachable within --timeout


def _resolve(host: str, port: int | None, timeout: float) -> str | None:
    """None when ``host`` resolves, else the error text.

    getaddrinfo has no timeout of its own (a dead nameserver blocks for resolv.conf's attempts x timeout),
    so it runs in a daemon thread that we stop waiting for at the deadline.
    """
    outcome: list[str | None] = []

    def target() -> None:
        try:
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            outcome.append(None)
        except OSError as err:  # socket.gaierror is an OSError
            outcome.append(str(err))

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"name lookup still pending after {timeout:.1f} s"


def _connect(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port succeeds, else the error text."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.05)):
            return None
    except OSError as err:
        return str(err) or type(err).__name__


def wait_for(
    host: str,
    port: int | None,
    timeout: float,
    interval: float = 1.0,
    log=lambda msg: print(msg, file=sys.stderr, flush=True),
) -> int:
    """Poll until ready or ``timeout`` seconds have passed; return the exit code (0 or 69)."""
    target = f"{host}:{port}" if port else host
    start = time.monotonic()
    deadline = start + timeout
    next_note = start + 30.0  # a progress line every 30 s, so a long wait is visibly a wait, not a hang
    error: str | None = "not tried"
    while True:
        remaining = deadline - time.monotonic()
        error = _resolve(host, port, max(remaining, 0.05))
        if error is None and port:
            error = _connect(host, port, min(max(deadline - time.monotonic(), 0.05), 5.0))
        if error is None:
            log(f"wait: {target} is ready after {time.monotonic() - start:.1f} s")
            return READY
        now = time.monotonic()
        if now >= deadline:
            break
        if now >= next_note:
            log(f"wait: still waiting for {target} ({now - start:.0f} s of {timeout:.0f} s): {error}")
            next_note = now + 30.0
        time.sleep(min(interval, max(deadline - now, 0.0)))
    log(
        f"wait: {target} not reachable within {timeout:g} s ({error}); is the master node running and is "
        f"the address right? Raise the limit with ENTRYPOINT_WAIT_S / --timeout. Exit {UNAVAILABLE}."
    )
    return UNAVAILABLE


class _Parser(argparse.ArgumentParser):
    """One-line argument errors (exit 2), like the rest of `python -m launch`."""

    def error(self, message: str):
        print(f"{self.prog}: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m launch wait", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", required=True, help="host name to resolve (the master / rendezvous host)")
    p.add_argument("--port", type=int, default=None, help="also wait until this TCP port accepts connections")
    p.add_argument(
        "--timeout", type=float, default=300.0, help="give up after this many seconds (default 300)"
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between attempts (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.timeout < 0 or args.interval <= 0 or (args.port is not None and not 0 < args.port < 65536):
        print("wait: --timeout must be >= 0, --interval > 0 and --port in 1..65535", file=sys.stderr)
        return USAGE
    return wait_for(args.host.strip(), args.port, args.timeout, args.interval)


if __name__ == "__main__":
    sys.exit(main())
