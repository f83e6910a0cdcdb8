"""Is the rendezvous endpoint on this machine, and which of its addresses do peers reach us on?

torchrun answers the first question by ``_matches_machine_hostname``: the host name, its canonical name and
the addresses *the host name* resolves to. A multi-homed node (a management NIC that the host name resolves
to, the rendezvous on a fabric NIC) is then nobody's store host, and both nodes time out as clients. Here the
endpoint's resolved addresses are compared with every address of every local interface instead (psutil, no
traffic).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable


def local_addresses() -> set[str]:
    """Every IPv4/IPv6 address of every interface of this machine (of this network namespace)."""
    import psutil  # ~10 ms; only multi-node plans that must decide who hosts ask

    return {
        a.address.split("%", 1)[0]
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family in (socket.AF_INET, socket.AF_INET6)
    }


def resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to (an empty list when it does not resolve yet)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except (OSError, UnicodeError):
        return []


def is_loopback(addrs: Iterable[str]) -> bool:
    return any(ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addrs)


def endpoint_is_local(host: str, local: Iterable[str], resolved: Iterable[str] | None = None) -> bool | None:
    """True when ``host`` names an address of a local interface; None when that cannot tell who hosts.

    A loopback endpoint (several agents on one machine, as in tests) is None: every agent matches, and
    torchrun's own rule (try to host, else join as a client) sorts it out. So is a name that does not resolve
    or resolves elsewhere: torchrun's rule also accepts the host's canonical name, which is not an interface
    address.
    """
    addrs = list(resolve(host) if resolved is None else resolved)
    if host == "localhost" or not addrs or is_loopback(addrs):
        return None
    return True if set(addrs) & set(local) else None


def route_source(host: str) -> str | None:
    """The local address this machine sends from towards ``host``: the one its peers reach it on.

    A UDP ``connect`` only asks the kernel for the route; nothing is sent. None when ``host`` does not
    resolve, is loopback, or has no route.
    """
    for addr in resolve(host):
        if is_loopback([addr]):
            return None
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((addr, 9))  # the discard port; any port does, no datagram leaves
                return s.getsockname()[0]
        except OSError:
            continue
    return None
