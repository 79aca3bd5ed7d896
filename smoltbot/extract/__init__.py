"""
Metadata extraction from provider responses as they are relayed, and from requests.

The proxy creates a L{ResponseExtractor} per response with L{extractor_for}, feeds it every
body chunk it relays, and calls C{finish} at the end to get an L{Extract}: model, token usage,
stop reason, tool calls, thinking (hash, presence, bounded text) and stream error events.
L{request_model} and L{request_streaming} read the request side.

Modules: L{result} (L{Extract} and the state a parser fills), L{framing} (content decoding,
SSE events, JSON bodies), L{anthropic}, L{openai}, L{gemini} (each provider's responses),
L{extractor} (assembly), L{request} (the request side). Pure code: no I/O, no Twisted.
"""

from smoltbot.extract.extractor import ResponseExtractor, extractor_for
from smoltbot.extract.request import request_model, request_streaming
from smoltbot.extract.result import Extract

__all__ = ["Extract", "ResponseExtractor", "extractor_for", "request_model", "request_streaming"]
