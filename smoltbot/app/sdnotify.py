"""
systemd readiness notification (`sd_notify`): a `Type=notify` unit is "active" once the daemon
sends `READY=1`, and shows "deactivating" from `STOPPING=1`. Outside systemd (no
`NOTIFY_SOCKET`) nothing is sent.
"""

from __future__ import annotations

import os
import socket
from typing import Mapping


def sd_notify(message: bytes, environ: Mapping[str, str] | None = None) -> None:
    """Tell systemd about a state change (`READY=1`, `STOPPING=1`) when run as a Type=notify unit."""
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(message, address)
        except OSError:
            pass
