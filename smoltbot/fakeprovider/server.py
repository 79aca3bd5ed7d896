"""
The fake provider HTTP server: routing, knobs, flow-controlled responses, observation of what
clients sent and when they went away, and the entry points that run it.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, NoReturn, Optional, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.task import react
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from smoltbot.fakeprovider import anthropic, gemini, openai
from smoltbot.fakeprovider.reply import Knobs, Reply, count_tokens
from smoltbot.fakeprovider.wire import JSONObject, ProviderFormat

log = Logger()


@dataclass(frozen=True)
class ReceivedRequest:
    """
    A request as the fake provider received it.

    @ivar method: e.g. C{"POST"}.
    @ivar path: the path, without the query string.
    @ivar query: the raw query string, without C{?}.
    @ivar headers: header values by lower-case name (repeated headers joined by C{", "}).
    @ivar body: the whole body, de-chunked.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class _Route:
    provider: ProviderFormat
    action: str
    model: Optional[str] = None
    streaming: Optional[bool] = None


class _Refusal(Exception):
    """
    Answer with this status and message in the provider's error shape.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _guess(path: str, headers: Headers) -> ProviderFormat:
    """
    The provider a request is meant for, judged by its headers and path.
    """
    if headers.hasHeader(b"anthropic-version") or headers.hasHeader(b"x-api-key"):
        return anthropic
    if headers.hasHeader(b"x-goog-api-key") or "/v1beta/" in path + "/":
        return gemini
    return openai


def _route(method: bytes, path: str, headers: Headers) -> Optional[_Route]:
    """
    The route of a request; any prefix may precede the provider's own path.
    """
    if method == b"POST" and path.endswith("/v1/messages"):
        return _Route(anthropic, "generate")
    if method == b"POST" and path.endswith("/v1/chat/completions"):
        return _Route(openai, "generate")
    if method == b"GET" and path.endswith("/v1/models"):
        return _Route(_guess(path, headers), "models")
    if method == b"GET" and path.endswith("/v1beta/models"):
        return _Route(gemini, "models")
    head, _, call = path.rpartition(":")
    folder, _, model = head.rpartition("/")
    if method == b"POST" and folder.endswith("/models") and call in ("generateContent", "streamGenerateContent"):
        return _Route(gemini, "generate", model, call == "streamGenerateContent")
    return None


def _knobs(defaults: Knobs, headers: Headers) -> Knobs:
    try:
        return defaults.with_headers(headers)
    except ValueError as error:
        raise _Refusal(400, str(error)) from error


def _json_object(body: bytes) -> JSONObject:
    try:
        value = json.loads(body)
    except ValueError as error:
        raise _Refusal(400, f"Invalid JSON body: {error}") from error
    if not isinstance(value, dict):
        raise _Refusal(400, "The request body must be a JSON object")
    return value


@dataclass(frozen=True)
class _Answer:
    """
    A response to write: its status, content type, body events and, for a whole body, its length.
    """

    status: int
    content_type: bytes
    chunks: Iterator[bytes]
    length: Optional[int] = None
    stream_error: Optional[bytes] = None

    @classmethod
    def whole(cls, status: int, content_type: bytes, body: bytes) -> _Answer:
        return cls(status, content_type, iter([body]), len(body))


class _QuietSite(Site):
    """
    A L{Site} without an access log: the fake provider records requests itself, and a
    benchmark should not pay for a log line per request.
    """

    noisy = False

    def log(self, request: Request) -> None:
        """
        Write no access log line.
        """


class _ConnectionTracker(WrappingFactory):
    """
    Counts the open connections of a site and says when none is left.
    """

    noisy = False

    def __init__(self, site: Site) -> None:
        super().__init__(site)
        self.made = 0
        self._idle_waiters: list[Deferred[None]] = []

    def logPrefix(self) -> str:
        """
        How the listening port names this factory in its log lines.
        """
        return "FakeProvider"

    def registerProtocol(self, protocol: ProtocolWrapper) -> None:
        self.made += 1
        super().registerProtocol(protocol)

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        super().unregisterProtocol(protocol)
        if not self.protocols:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_idle(self) -> Deferred[None]:
        """
        Fires once no connection is open.
        """
        if not self.protocols:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


@implementer(IPushProducer)
class EventStream:
    """
    Writes one response to its request an event at a time, only while the transport wants
    data: it is the request's streaming producer, and generates nothing while paused.

    A JSON body is written as a single event.

    @ivar request: what the client sent.
    @ivar events_written: events written so far (SSE events, or the one JSON body).
    @ivar bytes_written: body bytes written so far.
    @ivar paused: whether the transport has paused it.
    @ivar pauses: how many times the transport paused it.
    @ivar outcome: L{None} while the response runs; then C{"complete"}, C{"error-event"}
        (ended after the provider's mid-stream error), C{"dropped"} (connection aborted by
        C{x-fake-drop-after}) or C{"client-gone"} (the client went away first).
    """

    def __init__(
        self,
        request: Request,
        received: ReceivedRequest,
        answer: _Answer,
        knobs: Knobs,
        clock: IReactorTime,
        on_client_gone: Callable[[EventStream], None],
    ) -> None:
        self.request = received
        self.events_written = 0
        self.bytes_written = 0
        self.paused = False
        self.pauses = 0
        self.outcome: Optional[str] = None
        self._request = request
        self._answer = answer
        self._knobs = knobs
        self._clock = clock
        self._on_client_gone = on_client_gone
        self._call: Optional[IDelayedCall] = None
        self._pumping = False

    def start(self) -> None:
        """
        Send the headers (after C{ttfb_ms}) and begin writing.
        """
        self._request.notifyFinish().addErrback(self._lost)
        if self._knobs.ttfb_ms:
            self._call = self._clock.callLater(self._knobs.ttfb_ms / 1000, self._begin)
        else:
            self._begin()

    def _begin(self) -> None:
        self._call = None
        self._request.registerProducer(self, True)
        self._request.write(b"")
        self._pump()

    def _pump(self) -> None:
        self._call = None
        self._pumping = True
        try:
            while not self.paused and self.outcome is None:
                if self.events_written == self._knobs.drop_after:
                    self._drop()
                elif self._answer.stream_error and self.events_written == self._knobs.error_after:
                    self._write(self._answer.stream_error)
                    self._end("error-event")
                elif (chunk := next(self._answer.chunks, None)) is None:
                    self._end("complete")
                else:
                    self._write(chunk)
                    if self._knobs.delay_ms:
                        self._call = self._clock.callLater(self._knobs.delay_ms / 1000, self._pump)
                        return
        finally:
            self._pumping = False

    def _write(self, chunk: bytes) -> None:
        self.events_written += 1
        self.bytes_written += len(chunk)
        self._request.write(chunk)

    def _end(self, outcome: str) -> None:
        self.outcome = outcome
        self._request.unregisterProducer()
        self._request.finish()

    def _drop(self) -> None:
        self.outcome = "dropped"
        self._request.unregisterProducer()
        self._request.transport.abortConnection()

    def _lost(self, reason: Failure) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if self.outcome is None:
            self.outcome = "client-gone"
            self._on_client_gone(self)

    def pauseProducing(self) -> None:
        """
        The transport's buffer is full: stop generating events.
        """
        if not self.paused:
            self.paused = True
            self.pauses += 1

    def resumeProducing(self) -> None:
        """
        The transport wants data again: carry on, unless a delay is already pending.
        """
        self.paused = False
        if self._call is None and not self._pumping and self.outcome is None:
            self._pump()

    def stopProducing(self) -> None:
        """
        The connection is going away: write nothing more.
        """
        self.paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None


class FakeProvider(Resource):
    """
    An HTTP resource answering as the Anthropic, OpenAI and Gemini APIs do, shaped by L{Knobs}
    (server-wide defaults, overridden per request by C{x-fake-*} headers).

    @ivar defaults: the knobs in force when a request sets none.
    @ivar requests: the latest received requests (L{ReceivedRequest}), oldest first.
    @ivar streams: the latest responses (L{EventStream}), oldest first, to watch their progress.
    @ivar disconnects: how many clients went away before their response was complete.

    Listen with L{factory}; L{open_connections} and L{when_idle} tell when clients have
    closed their connections.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, clock: IReactorTime, defaults: Knobs = Knobs(), max_requests: int = 100) -> None:
        """
        @param clock: drives every delay.
        @param defaults: the server-wide knobs.
        @param max_requests: how many requests and responses to keep for observation.
        """
        super().__init__()
        self.defaults = defaults
        self.requests: deque[ReceivedRequest] = deque(maxlen=max_requests)
        self.streams: deque[EventStream] = deque(maxlen=max_requests)
        self.disconnects = 0
        self._clock = clock
        self._count = 0
        self._waiters: list[Deferred[ReceivedRequest]] = []
        self._tracker = _ConnectionTracker(_QuietSite(self, reactor=clock))

    def factory(self) -> IProtocolFactory:
        """
        The factory to listen with (or to build an in-memory connection from): a L{Site}
        serving this resource, its timeouts on the server's clock, its connections counted.
        """
        return self._tracker

    @property
    def connections_made(self) -> int:
        """
        How many connections clients have opened so far.
        """
        return self._tracker.made

    @property
    def open_connections(self) -> int:
        """
        How many connections are open now.
        """
        return len(self._tracker.protocols)

    def when_idle(self) -> Deferred[None]:
        """
        A Deferred that fires once no connection is open (at once if none is): wait on it
        before a test ends, so no server-side socket outlives it.
        """
        return self._tracker.when_idle()

    def next_disconnect(self) -> Deferred[ReceivedRequest]:
        """
        A Deferred that fires with the request whose client next goes away mid-response.
        """
        waiter: Deferred[ReceivedRequest] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def render(self, request: Request) -> int:
        """
        Record the request, then answer it through an L{EventStream}.
        """
        self._count += 1
        path = request.path.decode("utf-8", "replace")
        received = ReceivedRequest(
            method=request.method.decode("ascii", "replace"),
            path=path,
            query=request.uri.partition(b"?")[2].decode("utf-8", "replace"),
            headers={
                name.decode("latin-1").lower(): ", ".join(value.decode("latin-1") for value in values)
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            body=request.content.read() if request.content is not None else b"",
        )
        self.requests.append(received)
        route = _route(request.method, path, request.requestHeaders)
        provider = route.provider if route else _guess(path, request.requestHeaders)
        knobs = self.defaults
        try:
            knobs = _knobs(self.defaults, request.requestHeaders)
            answer = self._answer(route, knobs, received)
        except _Refusal as refusal:
            answer = _Answer.whole(refusal.status, provider.JSON_TYPE, provider.error(refusal.status, refusal.message))
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", answer.content_type)
        for name, value in provider.headers(self._count):
            request.setHeader(name, value)
        if answer.length is None:
            request.setHeader(b"cache-control", b"no-cache")
        else:
            request.setHeader(b"content-length", b"%d" % (answer.length,))
        stream = EventStream(request, received, answer, knobs, self._clock, self._client_gone)
        self.streams.append(stream)
        stream.start()
        return NOT_DONE_YET

    def _answer(self, route: Optional[_Route], knobs: Knobs, received: ReceivedRequest) -> _Answer:
        if route is None:
            raise _Refusal(404, f"No fake route for {received.method} {received.path}")
        if knobs.status >= 400:
            raise _Refusal(knobs.status, f"Fake error with status {knobs.status}")
        provider = route.provider
        if route.action == "models":
            return _Answer.whole(200, provider.JSON_TYPE, provider.models())
        body = _json_object(received.body)
        try:
            thinking, tool_name = provider.features(body)
        except (AttributeError, TypeError, KeyError, IndexError) as error:
            raise _Refusal(400, "Malformed thinking or tools") from error
        reply = Reply(
            number=self._count,
            model=route.model or str(body.get("model", "fake-model")),
            knobs=knobs,
            prompt_tokens=count_tokens(len(received.body)),
            thinking=thinking,
            tool_name=tool_name,
            created=int(self._clock.seconds()),
        )
        streaming = route.streaming if route.streaming is not None else body.get("stream") is True
        if streaming:
            events = provider.stream(reply, body)
            return _Answer(200, provider.STREAM_TYPE, events, stream_error=provider.stream_error())
        return _Answer.whole(200, provider.JSON_TYPE, provider.message(reply, body))

    def _client_gone(self, stream: EventStream) -> None:
        self.disconnects += 1
        self.log.info(
            "Client went away from {method} {path} after {events} events",
            method=stream.request.method,
            path=stream.request.path,
            events=stream.events_written,
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(stream.request)


def run_fake_provider(
    reactor: IReactorTCP, port: int, host: str = "127.0.0.1", defaults: Knobs = Knobs()
) -> Deferred[None]:
    """
    Serve a L{FakeProvider} on C{host:port} and log one line saying where.

    @param reactor: provides L{IReactorTCP} and L{IReactorTime}.
    @return: a Deferred that never fires by itself: the server runs until the reactor stops,
        or until the Deferred is cancelled, which stops listening. It fails at once if the
        port cannot be bound.
    """
    server = FakeProvider(reactor, defaults)  # type: ignore[arg-type]
    try:
        listening = reactor.listenTCP(port, server.factory(), interface=host)
    except Exception:
        return fail()
    log.info("Fake provider listening on http://{host}:{port}", host=host, port=listening.getHost().port)
    return Deferred(lambda _: listening.stopListening())


class FakeProviderOptions(usage.Options):
    """
    The fake provider's command line: where to listen, and the default knobs.
    """

    synopsis = "Usage: smoltbot fake-provider [options]"
    optParameters = [
        ["port", "p", 8788, "TCP port to listen on.", int],
        ["host", None, "127.0.0.1", "Interface to listen on."],
        ["delay-ms", None, Knobs.delay_ms, "Default delay between streamed events, in milliseconds.", int],
        ["events", None, Knobs.events, "Default number of text events per response.", int],
        ["event-size", None, Knobs.event_size, "Default characters of text per event.", int],
    ]

    def postOptions(self) -> None:
        """
        Refuse negative numbers.
        """
        for name in ("port", "delay-ms", "events", "event-size"):
            if self[name] < 0:
                raise usage.UsageError(f"--{name} must not be negative")

    def knobs(self) -> Knobs:
        """
        The server-wide knobs these options give.
        """
        return Knobs(events=self["events"], event_size=self["event-size"], delay_ms=self["delay-ms"])


def main(argv: Sequence[str]) -> NoReturn:
    """
    Run the fake provider from a command line (C{--port}, C{--host}, C{--delay-ms}, C{--events},
    C{--event-size}), logging to stdout, until interrupted; exits the process.
    """
    options = FakeProviderOptions()
    try:
        options.parseOptions(argv)
    except usage.UsageError as error:
        sys.stderr.write(f"{options}\nfake-provider: {error}\n")
        raise SystemExit(2)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    react(run_fake_provider, (options["port"], options["host"], options.knobs()))
