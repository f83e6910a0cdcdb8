"""Two hosts with their own addresses: the 2-node job across two network namespaces joined by a veth pair.

Needs root and iproute2 (CI has both); skips with the reason elsewhere. ../shared/PLATFORM.md lists the
three settings this needs: GLOO_SOCKET_IFNAME, torchrun's --local-addr, and is_host on the first node.

The multi-homed case adds what a GPU node looks like: each namespace has its own host name (a UTS namespace)
and its own hosts file (``ip netns exec`` bind-mounts /etc/netns/NS/hosts over /etc/hosts), in which the host
name resolves to a management address on an interface of its own (unreachable from the other node), while the
rendezvous address is on the second interface, the veth pair. torchrun alone then makes nobody the store host
(both nodes time out as clients) and advertises the management name; the launcher must find the host by
interface address and advertise the address on the route to the endpoint.
"""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.distributed.test_equivalence import TINY, assert_close, launch
from tests.helpers import final_weights

pytestmark = pytest.mark.slow


def sh(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"trn-a-{tag}", f"tva{tag}", "10.99.0.1"), (f"trn-b-{tag}", f"tvb{tag}", "10.99.0.2")]
    try:
        r = sh("ip", "netns", "add", hosts[0][0])
        if r.returncode:
            pytest.skip(f"ip netns add refused: {r.stderr.strip()}")
        for cmd in (
            ["ip", "netns", "add", hosts[1][0]],
            ["ip", "link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1]],
        ):
            r = sh(*cmd)
            if r.returncode:
                pytest.skip(f"{' '.join(cmd)} refused: {r.stderr.strip()}")
        for ns, dev, addr in hosts:
            for cmd in (
                ["ip", "link", "set", dev, "netns", ns],
                ["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev],
                ["ip", "-n", ns, "link", "set", dev, "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
            ):
                r = sh(*cmd)
                assert r.returncode == 0, (cmd, r.stderr)
        yield hosts
    finally:
        for ns, _, _ in hosts:
            sh("ip", "netns", "del", ns)  # removes the veth end inside it, and so the pair


@pytest.mark.timeout(150)
def test_two_namespaces_equal_two_processes(two_hosts, tmp_path):
    ref = tmp_path / "one-node"
    launch("ddp", ref, "--nproc-per-node", "2")
    run_dir = tmp_path / "two-hosts"
    port = free_port()
    master = two_hosts[0][2]
    procs = []
    for node, (ns, dev, addr) in enumerate(two_hosts):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, GLOO_SOCKET_IFNAME=dev)
        cmd = [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-m",
            "launch",
            "ddp",
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--rdzv-endpoint",
            f"{master}:{port}",
            "--rdzv-id",
            "netns",
            "--local-addr",
            addr,
            f"run.dir={run_dir}",
            *TINY,
        ]
        procs.append(
            subprocess.Popen(
                cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = "".join((run_dir / "logs" / f).read_text() for f in os.listdir(run_dir / "logs"))
    assert "world 2" in logs
    assert_close(final_weights(ref), final_weights(run_dir))


@pytest.fixture
def multi_homed(two_hosts):
    """two_hosts + per namespace: a management interface of its own, its own host name and hosts file."""
    tag = two_hosts[0][0].rsplit("-", 1)[1]
    names = [f"node-a-{tag}", f"node-b-{tag}"]
    fabric = f"fabric-a-{tag}"  # the rendezvous name: node A's fabric address, on both nodes
    made = []
    try:
        for i, (ns, _dev, _addr) in enumerate(two_hosts):
            mgmt = f"10.98.0.{i + 1}"
            # A veth pair with both ends in this namespace: an interface of its own that leads nowhere else
            # (no dummy driver on every kernel).
            for cmd in (
                ["ip", "-n", ns, "link", "add", "mgmt0", "type", "veth", "peer", "name", "mgmt1"],
                ["ip", "-n", ns, "addr", "add", f"{mgmt}/24", "dev", "mgmt0"],
                ["ip", "-n", ns, "link", "set", "mgmt1", "up"],
                ["ip", "-n", ns, "link", "set", "mgmt0", "up"],
            ):
                r = sh(*cmd)
                if r.returncode:
                    pytest.skip(f"{' '.join(cmd)} refused: {r.stderr.strip()}")
            etc = Path("/etc/netns") / ns
            etc.mkdir(parents=True, exist_ok=True)
            made.append(etc)
            # Each node's name resolves to its management address; the other's name too (as DNS would), though
            # that address is not reachable from here. Only the fabric name is on the shared network.
            (etc / "hosts").write_text(
                f"127.0.0.1 localhost\n10.98.0.1 {names[0]}\n10.98.0.2 {names[1]}\n"
                f"{two_hosts[0][2]} {fabric}\n"
            )
        yield [(ns, dev, addr, names[i]) for i, (ns, dev, addr) in enumerate(two_hosts)], fabric
    finally:
        for etc in made:
            shutil.rmtree(etc, ignore_errors=True)
        if Path("/etc/netns").is_dir() and not any(Path("/etc/netns").iterdir()):
            Path("/etc/netns").rmdir()


def in_host(ns: str, hostname: str, *cmd: str) -> list[str]:
    """``cmd`` inside namespace ``ns`` (its own hosts file) with its own host name."""
    return [
        "ip",
        "netns",
        "exec",
        ns,
        "unshare",
        "--uts",
        "sh",
        "-c",
        'hostname "$0" && exec "$@"',
        hostname,
        *cmd,
    ]


@pytest.mark.timeout(240)
def test_multi_homed_nodes_train_with_the_rendezvous_on_a_second_interface(multi_homed, tmp_path):
    hosts, fabric = multi_homed
    probe = subprocess.run(
        in_host(
            hosts[0][0],
            hosts[0][3],
            sys.executable,
            "-c",
            "import socket; print(socket.gethostname(), socket.gethostbyname(socket.gethostname()),"
            f" socket.gethostbyname({fabric!r}))",
        ),
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert probe.stdout.split() == [hosts[0][3], "10.98.0.1", hosts[0][2]], (
        probe
    )  # the name is not the fabric

    ref = tmp_path / "one-node"
    launch("ddp", ref, "--nproc-per-node", "2")
    # Two ways in: the entrypoint under an Indexed Job's variables (the source fixes node 0 as the host; the
    # rendezvous name resolves to the fabric), and plain flags with an address (found among node A's
    # interfaces).
    for way in ("entrypoint", "flags"):
        run_dir = tmp_path / way
        port = free_port()
        procs, t0 = [], time.monotonic()
        for node, (ns, dev, _addr, name) in enumerate(hosts):
            env = dict(
                os.environ,
                OMP_NUM_THREADS="1",
                PYTHONPATH=ROOT,
                GLOO_SOCKET_IFNAME=dev,
                PYTHON=sys.executable,
            )
            if way == "entrypoint":
                env.update(
                    JOB_COMPLETION_INDEX=str(node),
                    LAUNCH_NNODES="2",
                    LAUNCH_MASTER_ADDR=fabric,
                    LAUNCH_MASTER_PORT=str(port),
                    RUN_DIR=str(run_dir),
                    ENTRYPOINT_WAIT_S="60",
                    LAUNCH_MODE="ddp",
                )
                cmd = ["bash", os.path.join(ROOT, "docker", "entrypoint.sh"), "--nproc-per-node", "1", *TINY]
            else:
                cmd = [
                    sys.executable,
                    "-m",
                    "launch",
                    "ddp",
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--rdzv-endpoint",
                    f"{hosts[0][2]}:{port}",
                    "--rdzv-id",
                    "multihomed",
                    f"run.dir={run_dir}",
                    *TINY,
                ]
            procs.append(
                subprocess.Popen(
                    in_host(ns, name, *cmd),
                    env=env,
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
        try:
            outs = [p.communicate(timeout=150) for p in procs]
        finally:
            for p in procs:
                p.kill()
        print(f"multi-homed via {way}: {time.monotonic() - t0:.1f} s")
        assert [p.returncode for p in procs] == [0, 0], outs
        logs = "".join((run_dir / "logs" / f).read_text() for f in os.listdir(run_dir / "logs"))
        assert "world 2" in logs
        assert_close(final_weights(ref), final_weights(run_dir))
