"""
A TCP relay on loopback, owned by a benchmark, that can take a server away from a client
without touching the server: `refuse()` cuts every established connection and aborts new ones
as they arrive, `restore()` relays again (the idea of tests/faultproxy.py, on asyncio).
"""

from __future__ import annotations

import asyncio


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error, then close the other side (which ends the opposite pipe too)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


class Relay:
    """Relays 127.0.0.1:<port> to `host`:`port`; `refusing` decides what connections get."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.refusing = False
        self._transports: set[asyncio.BaseTransport] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on an ephemeral loopback port and return it."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Abort every established connection (both ends see a reset) and every new one."""
        self.refusing = True
        for transport in list(self._transports):
            transport.abort()

    def restore(self) -> None:
        """Relay new connections again."""
        self.refusing = False

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        self.refuse()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if self.refusing:  # refused while connecting
            writer.transport.abort()
            upstream_writer.transport.abort()
            return
        pair = {writer.transport, upstream_writer.transport}
        self._transports |= pair
        try:
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            self._transports -= pair
