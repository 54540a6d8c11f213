"""TCP ports for the servers tests start, picked where no outgoing connection can take them.

Binding port 0 gives a port from the kernel's ephemeral range, the same range outgoing
connections draw their local ports from: between the pick and the server's own bind, a
connection from any process on the machine can take it (a worker then dies with "address
already in use"). So ports come from below that range, never twice in one run.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOWEST = 20000
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now, outside the ephemeral range."""
    high = _ephemeral_low() - 1
    candidates = list(range(_LOWEST, high + 1)) if high > _LOWEST else []
    random.SystemRandom().shuffle(candidates)
    for port in candidates:
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError(f"no free TCP port between {_LOWEST} and {high}")
