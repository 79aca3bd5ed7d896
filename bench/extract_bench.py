"""
Micro-benchmark of response extraction: the CPU one response costs the relay, per provider.

Each case feeds the fake provider's answer (50 text events, with thinking and a tool call) to
a fresh extractor the way the proxy relays it, one SSE event per chunk, then finishes it.
Run: python -m bench.extract_bench [--number N] [--repeat R]   (from the project root)
"""

from __future__ import annotations

import argparse
import timeit
import zlib
from typing import Callable

from smoltbot.extract import extractor_for
from smoltbot.fakeprovider import Knobs, Reply
from smoltbot.fakeprovider import anthropic, gemini, openai

_REQUEST = {"stream_options": {"include_usage": True}}


def _gzip_events(events: list[bytes]) -> list[bytes]:
    """
    The events gzip-compressed as a streaming server does: one flushed piece per event.
    """
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    pieces = [compressor.compress(event) + compressor.flush(zlib.Z_SYNC_FLUSH) for event in events]
    pieces[-1] += compressor.flush()
    return pieces


def _cases() -> list[tuple[str, str, str, str | None, list[bytes]]]:
    """
    (label, provider, content type, content encoding, chunks) for each benchmarked response.
    """
    cases = []
    for module in (anthropic, openai, gemini):
        reply = Reply(1, "model-x", Knobs(events=50), 100, thinking=True, tool_name="get_weather")
        events = list(module.stream(reply, _REQUEST))
        cases += [
            ("sse", module.NAME, "text/event-stream", None, events),
            ("sse gzip", module.NAME, "text/event-stream", "gzip", _gzip_events(events)),
            ("json", module.NAME, "application/json", None, [module.message(reply, _REQUEST)]),
        ]
    return cases


def _run(provider: str, content_type: str, encoding: str | None, chunks: list[bytes]) -> Callable[[], object]:
    def run() -> object:
        extractor = extractor_for(provider, streaming=True, content_type=content_type, content_encoding=encoding)
        for chunk in chunks:
            extractor.feed(chunk)
        return extractor.finish(True)

    return run


def main() -> None:
    """
    Time each case and print microseconds per response (best of the repeats).
    """
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--number", type=int, default=2000, help="responses per timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings, the best of which is kept")
    options = parser.parse_args()
    print(f"{'provider':<10} {'body':<9} {'chunks':>6} {'bytes':>6} {'us/response':>12} {'us/chunk':>9}")
    for label, provider, content_type, encoding, chunks in _cases():
        run = _run(provider, content_type, encoding, chunks)
        best = min(timeit.repeat(run, number=options.number, repeat=options.repeat)) / options.number * 1e6
        size = sum(map(len, chunks))
        print(f"{provider:<10} {label:<9} {len(chunks):>6} {size:>6} {best:>12.1f} {best / len(chunks):>9.2f}")


if __name__ == "__main__":
    main()
