"""
A TCP relay between a client under test and a real server, which a test can cut or close.

Tests put it in front of PostgreSQL or Redis to make the dependency unreachable, hang, or
drop established connections, without touching the shared server other tests use.
"""

from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ServerEndpoint


class _Inbound(protocol.Protocol):
    def connectionMade(self):
        self.factory.inbound.add(self)
        self.outbound = None
        self.buffer = []
        if self.factory.mode == "refuse":
            self.transport.abortConnection()
            return
        if self.factory.mode == "hang":
            return
        outbound_factory = protocol.ClientFactory()
        outbound_factory.protocol = _Outbound
        outbound_factory.inbound = self
        self.factory.reactor.connectTCP(self.factory.target_host, self.factory.target_port, outbound_factory)

    def dataReceived(self, data):
        if self.outbound is None:
            self.buffer.append(data)
        else:
            self.outbound.transport.write(data)

    def connectionLost(self, reason):
        self.factory.inbound.discard(self)
        if self.outbound is not None:
            self.outbound.transport.loseConnection()


class _Outbound(protocol.Protocol):
    def connectionMade(self):
        inbound = self.factory.inbound
        inbound.outbound = self
        for data in inbound.buffer:
            self.transport.write(data)
        inbound.buffer = []
        self.transport.registerProducer(inbound.transport, True)
        inbound.transport.registerProducer(self.transport, True)

    def dataReceived(self, data):
        self.factory.inbound.transport.write(data)

    def connectionLost(self, reason):
        self.factory.inbound.transport.loseConnection()


class FaultProxy(protocol.Factory):
    """
    Relay 127.0.0.1:<port> to a target; `mode` decides what new connections get.

    Modes: "relay" (pass through), "refuse" (accept then abort at once), "hang" (accept and
    never answer). `cut()` aborts every established connection.
    """

    protocol = _Inbound
    noisy = False

    def __init__(self, reactor, target_host: str, target_port: int) -> None:
        self.reactor = reactor
        self.target_host = target_host
        self.target_port = target_port
        self.mode = "relay"
        self.inbound: set = set()
        self.port = None

    async def start(self) -> int:
        """Listen on an ephemeral loopback port and return it."""
        self.port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self)
        return self.port.getHost().port

    def cut(self) -> None:
        """Abort every established connection (both sides see a reset)."""
        for inbound in list(self.inbound):
            inbound.transport.abortConnection()
            if inbound.outbound is not None:
                inbound.outbound.transport.abortConnection()

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        self.cut()
        if self.port is not None:
            await self.port.stopListening()
