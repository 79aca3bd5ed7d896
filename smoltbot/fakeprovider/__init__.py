"""
A fake LLM provider server for tests, the benchmark and a local demo without API keys.

It speaks the real wire formats of the Anthropic Messages, OpenAI Chat Completions and Gemini
APIs (JSON and SSE), so the official SDKs accept its answers. Per-request C{x-fake-*} headers
(L{Knobs}) shape the answer: its size, pacing, errors, dropped connections and a marker string.
Responses are written under flow control, and the server records what it received and which
clients went away, for gateway tests to assert on.

Modules: L{reply} (knobs and provider-neutral content), L{anthropic}, L{openai}, L{gemini}
(wire formats), L{wire} (their shared interface), L{server} (HTTP, streaming, entry points).
"""

from smoltbot.fakeprovider.reply import Knobs, Reply, count_tokens
from smoltbot.fakeprovider.server import (
    EventStream,
    FakeProvider,
    FakeProviderOptions,
    ReceivedRequest,
    main,
    run_fake_provider,
)

__all__ = [
    "EventStream",
    "FakeProvider",
    "FakeProviderOptions",
    "Knobs",
    "ReceivedRequest",
    "Reply",
    "count_tokens",
    "main",
    "run_fake_provider",
]
