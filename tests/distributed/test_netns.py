"""Two hosts with their own addresses: the 2-node job across two network namespaces joined by a veth pair.

Needs root and iproute2 (CI has both); skips with the reason elsewhere. ../shared/PLATFORM.md lists the
three settings this needs: GLOO_SOCKET_IFNAME, torchrun's --local-addr, and is_host on the first node
(the launcher derives the last two from --local-addr).
"""

import os
import shutil
import subprocess
import sys
import uuid

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
        for cmd in (["ip", "netns", "add", hosts[1][0]],
                    ["ip", "link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1]]):
            r = sh(*cmd)
            if r.returncode:
                pytest.skip(f"{' '.join(cmd)} refused: {r.stderr.strip()}")
        for ns, dev, addr in hosts:
            for cmd in (["ip", "link", "set", dev, "netns", ns],
                        ["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev],
                        ["ip", "-n", ns, "link", "set", dev, "up"],
                        ["ip", "-n", ns, "link", "set", "lo", "up"]):
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
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "launch", "ddp", "--nnodes", "2",
               "--nproc-per-node", "1", "--node-rank", str(node), "--rdzv-endpoint", f"{master}:{port}",
               "--rdzv-id", "netns", "--local-addr", addr, f"run.dir={run_dir}", *TINY]
        procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs
    logs = "".join((run_dir / "logs" / f).read_text() for f in os.listdir(run_dir / "logs"))
    assert "world 2" in logs
    assert_close(final_weights(ref), final_weights(run_dir))
