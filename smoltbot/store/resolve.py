"""
Host names in a DSN, resolved through the reactor, so that libpq never resolves one itself.

libpq resolves `host` with a blocking `getaddrinfo` inside its connect call, which would freeze
the reactor for as long as DNS takes (DESIGN §2). `with_hostaddr` resolves every host through
the reactor's resolver first and hands libpq the addresses as `hostaddr`, keeping `host` for
TLS certificate checks and for the names in its messages.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IAddress, IHostResolution, IResolutionReceiver
from zope.interface import implementer


async def with_hostaddr(reactor: Any, params: dict[str, str]) -> dict[str, str]:
    """
    `params` with every host name resolved and added as `hostaddr` (one entry per address, hosts
    and ports repeated to match); unchanged when it has a `hostaddr` already, no host, or only
    Unix sockets. `reactor` provides IReactorPluggableNameResolver.
    """
    if "hostaddr" in params or not params.get("host"):
        return params
    hosts = params["host"].split(",")
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports *= len(hosts)
    if len(ports) != len(hosts):
        return params  # libpq reports the mismatch
    entries: list[tuple[str, str, str]] = []
    for host, port in zip(hosts, ports):
        for address in await _addresses(reactor, host):
            entries.append((host, address, port))
    if not any(address for _, address, _ in entries):
        return params  # Unix sockets only
    hosts, addresses, ports = (list(column) for column in zip(*entries))
    params = dict(params, host=",".join(hosts), hostaddr=",".join(addresses))
    if any(ports):
        params["port"] = ",".join(ports)
    return params


def _addresses(reactor: Any, host: str) -> Deferred[list[str]]:
    """The addresses to try for one `host` entry ("" for a socket directory: libpq uses `host`)."""
    if not host or host.startswith(("/", "@")):
        return succeed([""])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        receiver = _Addresses(host)
        reactor.nameResolver.resolveHostName(receiver, host)
        return receiver.result
    return succeed([host])


@implementer(IResolutionReceiver)
class _Addresses:
    """Collects the addresses a host name resolves to and fires `result` with them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.addresses: list[str] = []
        self.result: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: IHostResolution) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        host = getattr(address, "host", None)
        if host and host not in self.addresses:
            self.addresses.append(host)

    def resolutionComplete(self) -> None:
        if self.result.called:  # cancelled by a connect timeout
            return
        if self.addresses:
            self.result.callback(self.addresses)
        else:
            self.result.errback(DNSLookupError(f"no address for {self.name}"))
