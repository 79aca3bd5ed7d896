"""
A small asyncio HTTP/1.1 streaming client for the benchmark: time to first event under a
steady number of concurrent streams, and many slow streams held open at once.

It measures from writing the request to the first body bytes after the response headers,
with the same code for the gateway and the direct runs, so its own overhead cancels out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


def request_bytes(path: str, headers: dict[str, str], body: bytes) -> bytes:
    """One HTTP/1.1 request that closes its connection when done."""
    lines = [f"POST {path} HTTP/1.1", "Host: bench", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _open(port: int, request: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, float, float]:
    """Send `request`; return the stream, the send time and the time its first body bytes came."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.perf_counter()
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.split(b"\r\n", 1)[0].decode())
    if not await reader.read(1):
        raise RuntimeError("stream ended before its first event")
    return reader, writer, started, time.perf_counter()


async def _drain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):
        pass
    writer.close()


async def steady_ttfe(port: int, request: bytes, concurrency: int, seconds: float) -> list[float]:
    """
    Keep `concurrency` streams running for `seconds` (starts spread over the first second,
    each worker starting a new stream when its last one ends); return every time to first event.
    """
    samples: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        await asyncio.sleep(index / concurrency)
        while time.perf_counter() < deadline:
            reader, writer, started, first = await _open(port, request)
            samples.append(first - started)
            await _drain(reader, writer)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return samples


async def hold(port: int, request: bytes, count: int, while_held: Callable[[], Awaitable[None]]) -> int:
    """Open `count` streams, wait for each one's first event, run `while_held()`, then close them all."""
    opened = await asyncio.gather(*(_open(port, request) for _ in range(count)), return_exceptions=True)
    streams = [item for item in opened if not isinstance(item, BaseException)]
    try:
        await while_held()
    finally:
        for _, writer, _, _ in streams:
            writer.transport.abort()
    await asyncio.sleep(0.5)  # let both servers see the disconnects
    return len(streams)
