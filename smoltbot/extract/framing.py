"""
The provider-neutral layers under extraction: undoing C{Content-Encoding} incrementally,
cutting an SSE stream into its events' data, and holding a JSON body until it ends.

Each layer works on bytes as they arrive, in chunks cut anywhere, with bounded memory. Pure
code: no I/O, no Twisted.
"""

from __future__ import annotations

import json
import zlib
from typing import Any, Callable

import brotli

Sink = Callable[[bytes], None]

# Decompressed output is produced and passed on in pieces of at most this size.
_PIECE = 64 * 1024
# A br chunk may inflate to at most this multiple of its size plus the floor: deflate's own
# limit (1032:1), which brotli does not have.
_BROTLI_RATIO = 1032
_BROTLI_FLOOR = 1024 * 1024


class StopExtraction(Exception):
    """
    Extraction of this response must stop; the argument is the reason to record.
    """

    @property
    def reason(self) -> str:
        """
        The reason to record as C{extraction_error}.
        """
        return str(self.args[0])


def _zlib_wrapped(head: bytes) -> bool:
    """
    Whether the first two bytes of a C{deflate} body are a zlib header (servers also send raw
    deflate under that name).
    """
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class _Inflate:
    """
    Undoes C{gzip} or C{deflate}, passing the output on in bounded pieces (in all at most
    1032 times the input: deflate's limit).
    """

    def __init__(self, sink: Sink, encoding: str) -> None:
        self._sink = sink
        self._encoding = encoding
        self._head = b""
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None

    def feed(self, chunk: bytes) -> None:
        """
        Decompress one chunk of the body.
        """
        inflater = self._zlib
        if inflater is None:
            self._head += chunk
            if len(self._head) < 2:
                return
            chunk, self._head = self._head, b""
            inflater = self._zlib = zlib.decompressobj(zlib.MAX_WBITS if _zlib_wrapped(chunk) else -zlib.MAX_WBITS)
        try:
            while not inflater.eof:
                out = inflater.decompress(chunk, _PIECE)
                chunk = inflater.unconsumed_tail
                if out:
                    self._sink(out)
                if not chunk and len(out) < _PIECE:
                    return
        except zlib.error:
            raise StopExtraction(f"decode_error: {self._encoding}") from None


class _Brotli:
    """
    Undoes C{br}, passing the output on in bounded pieces.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._brotli = brotli.Decompressor()

    def feed(self, chunk: bytes) -> None:
        """
        Decompress one chunk of the body.
        """
        budget = _BROTLI_FLOOR + _BROTLI_RATIO * len(chunk)
        decompressor = self._brotli
        try:
            while not decompressor.is_finished():
                out = decompressor.process(chunk, output_buffer_limit=_PIECE)
                if not out:
                    return
                chunk = b""
                budget -= len(out)
                if budget < 0:
                    raise StopExtraction("decompressed_too_large")
                self._sink(out)
        except brotli.error:
            raise StopExtraction("decode_error: br") from None


def decoder(content_encoding: str | None, sink: Sink) -> Sink:
    """
    What to feed the body's chunks to so that C{sink} gets them decoded.

    @raise StopExtraction: the encoding is not one of C{gzip}, C{deflate}, C{br} (or
        C{identity}), or several are stacked.
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return sink
    if codings == ["br"]:
        return _Brotli(sink).feed
    if codings in (["gzip"], ["x-gzip"], ["deflate"]):
        return _Inflate(sink, codings[0].removeprefix("x-")).feed
    raise StopExtraction("unsupported_encoding: " + ", ".join(codings)[:64])


class SSEEvents:
    """
    Cuts an SSE stream into events and passes on the data of each (its C{data:} lines joined
    by a line feed, one leading space removed). Other fields, comments and events without
    data are ignored. Lines may end in LF, CRLF or CR.

    At most one partial event is kept: an event larger than C{max_event} bytes is skipped and
    noted as C{"event_too_large"}.
    """

    def __init__(self, sink: Sink, note: Callable[[str], None], max_event: int) -> None:
        self._sink = sink
        self._note = note
        self._max = max_event
        self._pending: list[bytes] = []
        self._size = 0
        self._cr = False  # the last chunk ended in CR, so a LF starting the next one is its pair
        self._skipping = False
        self._lf = False  # while skipping: the last byte seen ended a line

    def feed(self, chunk: bytes) -> None:
        """
        Read the next chunk of the stream.
        """
        if self._cr or b"\r" in chunk:
            chunk = self._unify(chunk)
        if self._pending or self._skipping:
            chunk = self._complete(chunk)
            if not chunk:
                return
        events = chunk.split(b"\n\n")
        tail = events.pop()
        self._size = len(tail)
        if tail:
            self._pending.append(tail)
            if self._size > self._max:
                self._overflow(tail)
        for event in events:
            self._event(event)

    def close(self, complete: bool) -> None:
        """
        The stream has ended, whether C{complete} or cut short: pass on a last event whose
        last line ended though no blank line followed, and drop any partial line.
        """
        pending = self._pending
        if pending and pending[-1].endswith(b"\n") and not self._skipping:
            self._event(b"".join(pending).rstrip(b"\n"))
        pending.clear()

    def _unify(self, chunk: bytes) -> bytes:
        """
        C{chunk} with its line ends made LF, a CRLF cut between two chunks included.
        """
        if self._cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]
        self._cr = chunk.endswith(b"\r")
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    def _complete(self, chunk: bytes) -> bytes:
        """
        The pending partial event and C{chunk} when together they complete an event; else
        C{b""}, C{chunk} being kept (or skipped, in an oversize event).
        """
        if not chunk:
            return b""
        pending = self._pending
        if self._skipping:
            if self._lf and chunk.startswith(b"\n"):
                end = 1
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    self._lf = chunk.endswith(b"\n")
                    return b""
                end += 2
            self._skipping = False
            chunk = chunk[end:]
        if b"\n\n" in chunk or pending and pending[-1].endswith(b"\n") and chunk.startswith(b"\n"):
            if pending:
                pending.append(chunk)
                chunk = b"".join(pending)
                pending.clear()
            return chunk
        pending.append(chunk)
        self._size += len(chunk)
        if self._size > self._max:
            self._overflow(chunk)
        return b""

    def _overflow(self, last: bytes) -> None:
        """
        Drop the pending event, which ends with C{last} and is too large, and skip the rest.
        """
        self._pending.clear()
        self._size = 0
        self._skipping = True
        self._lf = last.endswith(b"\n")
        self._note("event_too_large")

    def _event(self, event: bytes) -> None:
        """
        Pass on the data of one event.
        """
        if event.startswith(b"data:"):
            start = 5
        else:
            start = event.find(b"\ndata:") + 6
            if start < 6:
                return
        if len(event) > self._max:
            self._note("event_too_large")
            return
        if event.find(b"\n", start) < 0:
            payload = event[start + 1 :] if event.startswith(b" ", start) else event[start:]
        else:
            payload = b"\n".join(
                line[6:] if line.startswith(b" ", 5) else line[5:]
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            )
        if payload:
            self._sink(payload)


class JSONBody:
    """
    Holds a JSON body of at most C{limit} bytes, and passes it on parsed once it has ended.
    """

    def __init__(self, sink: Callable[[Any], None], limit: int) -> None:
        self._sink = sink
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        """
        Keep the next chunk of the body.

        @raise StopExtraction: the body outgrew the limit (it is dropped).
        """
        if len(self._buffer) + len(chunk) > self._limit:
            self._buffer = bytearray()
            raise StopExtraction("body_too_large")
        self._buffer += chunk

    def close(self, complete: bool) -> None:
        """
        The body has ended (C{complete} is false when it was cut short): parse it, if any.

        @raise StopExtraction: the body is not JSON.
        """
        if not self._buffer:
            return
        try:
            value = json.loads(self._buffer)
        except (ValueError, RecursionError):
            raise StopExtraction("invalid_json" if complete else "truncated_body") from None
        self._sink(value)
