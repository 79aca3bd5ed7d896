"""
The gateway through a PostgreSQL outage under steady load: `python -m bench.outage` (or
`bench/run.sh outage`) from the project root; `--help` lists the knobs.

It creates a private, migrated database (`bench.database`), starts a fake provider and the gateway
(`twistd -n smoltbot`, default recorder settings) as processes on loopback, the gateway's
DATABASE_URL going through a TCP relay of this process (`bench.relay`). A bounded client sends a
fixed number of requests a second (default 200: each provider's JSON and SSE call, seven agents;
at most 64 in flight, a request due beyond that is counted as skipped, never queued) through five
phases: a 5 s warm-up, 20 s before, 60 s during which the relay cuts every PostgreSQL connection
and refuses new ones, 40 s after. Every second it samples the gateway's RSS, the recorder's
metrics (`/metrics`) and `/health/ready`. Then it waits (at most 120 s) for the spool to drain,
stops the gateway with SIGTERM (which flushes its queue) and compares the request ids the gateway
returned with the rows of request_records (and counts the agent rows).

It reports per phase: requests sent, failed, skipped and their latency, RSS min/median/max, queue
and spool peaks, records written, readiness; then the spool's peak, how long it took to drain once
PostgreSQL came back, and the checks: no failed request, one row per request (none missing, extra
or twice), no drop. Exits 1 when a check fails. The samples go to samples.jsonl beside the gateway
log; the database, the state folder and every process go at the end. Bounded: about 2.5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.database import private_database, query
from bench.processes import Process, parse_metrics, start_fake, start_gateway
from bench.relay import Relay
from bench.streams import request_bytes

WARM_UP = 5.0
AGENTS = 7
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def _catalogue() -> list[bytes]:
    """The requests the load cycles through: each provider's JSON and SSE call, for each agent."""
    requests = []
    for agent in range(AGENTS):
        key = f"sk-bench-outage-{agent}"
        for stream in (False, True):
            anthropic = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            openai = {"model": "gpt-5", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            gemini = "streamGenerateContent?alt=sse" if stream else "generateContent"
            requests += [
                request_bytes("/anthropic/v1/messages", {"x-api-key": key, "anthropic-version": "2023-06-01"}, json.dumps(anthropic).encode()),
                request_bytes("/openai/v1/chat/completions", {"authorization": f"Bearer {key}"}, json.dumps(openai).encode()),
                request_bytes(f"/gemini/v1beta/models/gemini-2.5-flash:{gemini}", {"x-goog-api-key": key}, json.dumps(GEMINI_BODY).encode()),
            ]
    return requests


def _dechunk(data: bytes) -> bytes:
    """The content of a chunked body; ValueError unless it ends with its last (empty) chunk."""
    parts, position = [], 0
    while True:
        end = data.index(b"\r\n", position)
        size = int(data[position:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(parts)
        position = end + 2 + size + 2
        if position > len(data):
            raise ValueError("chunked body cut short")
        parts.append(data[end + 2 : end + 2 + size])


async def http(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; status, headers and the whole body (ValueError when it is cut short)."""

    async def exchange() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            return await reader.read()
        finally:
            writer.close()

    raw = await asyncio.wait_for(exchange(), timeout)
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("no complete response head")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
    if headers.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    elif len(body) != int(headers.get("content-length", len(body))):
        raise ValueError("body shorter than its Content-Length")
    return int(status_line.split()[1]), headers, body


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode()


@dataclass
class PhaseLoad:
    """What the load did in one phase."""

    sent: int = 0
    failed: int = 0
    skipped: int = 0
    latencies: list[float] = field(default_factory=list)


class Load:
    """
    Requests through the gateway at a fixed rate, at most `max_in_flight` at once: a request due
    while that many are in flight is skipped (and counted), never queued.
    """

    def __init__(self, port: int, rate: float, max_in_flight: int) -> None:
        self.port = port
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.phase = "warm-up"
        self.phases: dict[str, PhaseLoad] = defaultdict(PhaseLoad)
        self.request_ids: list[str] = []
        self.errors: Counter[str] = Counter()
        self._catalogue = _catalogue()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> None:
        """Send for `seconds`, then wait for the requests still in flight."""
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while (due := start + n / self.rate) < start + seconds:
            await asyncio.sleep(max(0.0, due - loop.time()))
            phase = self.phases[self.phase]
            if len(self._in_flight) >= self.max_in_flight:
                phase.skipped += 1
            else:
                task = asyncio.create_task(self._send(self._catalogue[n % len(self._catalogue)], phase))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            n += 1
        if self._in_flight:
            await asyncio.wait(self._in_flight)

    async def _send(self, request: bytes, phase: PhaseLoad) -> None:
        phase.sent += 1
        started = time.perf_counter()
        try:
            status, headers, _ = await http(self.port, request)
            if status != 200:
                raise ValueError(f"status {status}")
            self.request_ids.append(headers["x-smoltbot-request-id"])
        except (OSError, ValueError, KeyError, asyncio.TimeoutError) as error:
            phase.failed += 1
            self.errors[f"{type(error).__name__}: {error}"] += 1
            return
        phase.latencies.append(time.perf_counter() - started)


@dataclass
class Sample:
    """The gateway at one moment: `t` seconds into the run, during `phase`."""

    t: float
    phase: str
    rss_kb: int
    queue: float
    spool_bytes: float
    written: float
    dropped: float
    ready: int
    failing: list[str]


class Sampler:
    """Once a second: the gateway's RSS, the recorder's metrics and `/health/ready`."""

    def __init__(self, gateway: Process, load: Load, start: float) -> None:
        self.gateway = gateway
        self.load = load
        self.start = start
        self.samples: list[Sample] = []

    async def run(self) -> None:
        """Sample until cancelled."""
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            self.samples.append(await self._sample(loop.time() - self.start))
            n += 1
            await asyncio.sleep(max(0.0, self.start + n - loop.time()))

    async def _sample(self, t: float) -> Sample:
        phase, rss = self.load.phase, self.gateway.memory_kb("VmRSS")
        metrics = parse_metrics((await http(self.gateway.port, _get("/metrics")))[2].decode())
        status, _, body = await http(self.gateway.port, _get("/health/ready"))
        checks = json.loads(body).get("checks", {})
        return Sample(
            t=round(t, 2),
            phase=phase,
            rss_kb=rss,
            queue=metrics["gateway_trace_queue_depth"],
            spool_bytes=metrics["gateway_trace_spool_bytes"],
            written=metrics["gateway_traces_written_total"],
            dropped=metrics["gateway_traces_dropped_total"],
            ready=status,
            failing=sorted(name for name, check in checks.items() if not check.get("ok")),
        )


async def _ready(gateway: Process) -> None:
    """Wait (at most 30 s) for `/health/ready` to answer 200: the gateway reaches PostgreSQL."""
    deadline = time.monotonic() + 30
    while (await http(gateway.port, _get("/health/ready")))[0] != 200:
        if time.monotonic() > deadline:
            raise SystemExit("the gateway did not become ready within 30 s")
        await asyncio.sleep(0.2)


async def _measure(args: argparse.Namespace, gateway: Process, relay: Relay) -> dict[str, Any]:
    """Drive the load through the phases, taking PostgreSQL away and back; then wait for the spool to drain."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    load = Load(gateway.port, args.rate, args.max_in_flight)
    sampler = Sampler(gateway, load, start)
    sampling = asyncio.create_task(sampler.run())
    phases = (("warm-up", WARM_UP), ("before", args.before), ("outage", args.outage), ("after", args.after))
    driving = asyncio.create_task(load.run(sum(seconds for _, seconds in phases)))
    marks: dict[str, float] = {}
    try:
        for name, seconds in phases:
            load.phase, marks[name] = name, loop.time() - start
            if name == "outage":
                relay.refuse()
            elif name == "after":
                relay.restore()
            await asyncio.sleep(max(0.0, start + marks[name] + seconds - loop.time()))
        await driving
        load.phase, marks["drain"] = "drain", loop.time() - start
        deadline = loop.time() + args.drain_timeout
        while loop.time() < deadline:
            if sampling.done():
                await sampling  # raises why sampling stopped
            last = sampler.samples[-1]
            if last.t > marks["drain"] and last.spool_bytes == last.queue == 0:
                break
            await asyncio.sleep(0.25)
        marks["end"] = loop.time() - start
    finally:
        driving.cancel()
        sampling.cancel()
    return {"load": load, "samples": sampler.samples, "marks": marks}


def _log_lines(log: Path) -> dict[str, Counter[str]]:
    """The gateway's warn and error log lines, counted by message."""
    found: dict[str, Counter[str]] = {"warn": Counter(), "error": Counter()}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            found["error"][line[:160]] += 1  # not a log line of ours: a traceback, say
            continue
        if entry.get("level") in found:
            found[entry["level"]][entry.get("message", "")[:160]] += 1
    return found


def _verify(url: str, load: Load, spool_dir: Path) -> dict[str, Any]:
    """Compare the request ids the gateway returned with the rows of request_records; count the agent rows."""
    rows = [request_id for (request_id,) in query(url, "SELECT request_id FROM request_records")]
    stored, returned = set(rows), set(load.request_ids)
    return {
        "rows": len(rows),
        "missing": len(returned - stored),
        "extra": len(stored - returned),
        "duplicate_rows": len(rows) - len(stored),
        "duplicate_ids": len(load.request_ids) - len(returned),
        "agents": query(url, "SELECT count(*) FROM agents")[0][0],
        "spool_left": sum(path.stat().st_size for path in spool_dir.glob("*")) if spool_dir.exists() else 0,
    }


async def _run(args: argparse.Namespace, url: str, fake: Process, state: Path, out: Path, cleanup: ExitStack) -> dict[str, Any]:
    """Start the relay and the gateway behind it, measure, then stop the gateway while the relay still relays its flush."""
    parts = urlsplit(url)
    relay = Relay(parts.hostname or "127.0.0.1", parts.port or 5432)
    port = await relay.start()
    relayed = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}").geturl()
    try:
        gateway = await asyncio.to_thread(start_gateway, fake, out / "gateway.log", relayed, state)
        cleanup.callback(gateway.stop)
        await _ready(gateway)
        result = await _measure(args, gateway, relay)
        final = parse_metrics((await http(gateway.port, _get("/metrics")))[2].decode())
        result.update(dropped=final["gateway_traces_dropped_total"], rss_peak_kb=gateway.memory_kb("VmHWM"))
        await asyncio.to_thread(gateway.stop)  # SIGTERM: the recorder flushes its queue, through the relay
        result["exit_status"] = gateway.popen.returncode
    finally:
        await relay.close()
    return result


def _ready_summary(samples: list[Sample]) -> str:
    counts = Counter((s.ready, ",".join(s.failing)) for s in samples)
    return "; ".join(f"{status}×{n}" + (f" ({failing} failing)" if failing else "") for (status, failing), n in sorted(counts.items()))


def report(args: argparse.Namespace, result: dict[str, Any], checks: dict[str, Any], out: Path) -> bool:
    """Print the figures and the checks; whether every check passed."""
    load: Load = result["load"]
    samples: list[Sample] = result["samples"]
    marks = result["marks"]
    print(f"smoltbot outage benchmark: {args.rate:g} requests/s (JSON and SSE, 3 providers, {AGENTS} agents), at most {args.max_in_flight} in flight")
    print(f"PostgreSQL cut and refused through the relay from {marks['outage']:.1f} s to {marks['after']:.1f} s; gateway log and samples in {out}")
    print()
    print(f"{'phase':<9}{'s':>5}{'sent':>7}{'failed':>7}{'skipped':>8}{'p50 ms':>8}{'p99 ms':>8}  {'RSS MB min/med/max':<20}{'queue max':>10}{'spool max MB':>13}{'written':>9}  /health/ready")
    written_before = 0.0
    bounds = list(marks.items())
    for (name, begin), (_, end) in zip(bounds, bounds[1:]):
        phase = [s for s in samples if s.phase == name]
        if not phase:
            continue
        work = load.phases.get(name, PhaseLoad())
        latencies = sorted(work.latencies)
        p50, p99 = (latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan") for q in (0.5, 0.99))
        rss = [s.rss_kb / 1024 for s in phase]
        written = phase[-1].written - written_before
        written_before = phase[-1].written
        print(
            f"{name:<9}{end - begin:>5.0f}{work.sent:>7}{work.failed:>7}{work.skipped:>8}{p50:>8.1f}{p99:>8.1f}  "
            f"{f'{min(rss):.1f}/{statistics.median(rss):.1f}/{max(rss):.1f}':<20}{max(s.queue for s in phase):>10.0f}"
            f"{max(s.spool_bytes for s in phase) / 2**20:>13.2f}{written:>9.0f}  {_ready_summary(phase)}"
        )
    after = [s for s in samples if s.t >= marks["after"]]
    drained = next((s.t - marks["after"] for s in after if s.spool_bytes == 0), None)
    writing = next((s.t - marks["after"] for s in after if s.written > after[0].written), None)
    peak = max(samples, key=lambda s: s.spool_bytes)
    sent = sum(phase.sent for phase in load.phases.values())
    failed = sum(phase.failed for phase in load.phases.values())
    skipped = sum(phase.skipped for phase in load.phases.values())
    print()
    print(f"spool peak: {peak.spool_bytes / 2**20:.2f} MB at {peak.t:.0f} s; once PostgreSQL was back, records were written again after")
    print(f"{_seconds(writing)} and the spool was empty after {_seconds(drained)} (samples 1 s apart)")
    print(f"gateway peak RSS (VmHWM): {result['rss_peak_kb'] / 1024:.1f} MB; exit status after SIGTERM: {result['exit_status']}")
    print(f"requests: {sent} sent, {failed} failed, {skipped} skipped")
    for error, count in load.errors.most_common(5):
        print(f"  {count}× {error}")
    print(
        f"request_records: {checks['rows']} rows for {len(load.request_ids)} request ids returned: {checks['missing']} missing, {checks['extra']} extra, "
        f"{checks['duplicate_rows']} duplicate rows, {checks['duplicate_ids']} ids returned twice; spool left after stop: {checks['spool_left']} bytes"
    )
    print(f"agents: {checks['agents']} rows for {AGENTS} agent keys; gateway_traces_dropped_total: {result['dropped']:.0f}")
    logs = _log_lines(out / "gateway.log")
    for level in ("warn", "error"):
        print(f"gateway log, {level} lines: {sum(logs[level].values())}")
        for message, count in logs[level].most_common(6):
            print(f"  {count}× {message}")
    verdicts = {
        "no failed request": failed == 0,
        "no skipped request": skipped == 0,
        "rows = requests sent": checks["rows"] == sent == len(load.request_ids),
        "no missing, extra or duplicate row": not (checks["missing"] or checks["extra"] or checks["duplicate_rows"] or checks["duplicate_ids"]),
        "one row per agent": checks["agents"] == AGENTS,
        "no drop": result["dropped"] == 0,
        "spool drained": drained is not None and checks["spool_left"] == 0,
    }
    print("checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in verdicts.items()))
    return all(verdicts.values())


def _seconds(value: float | None) -> str:
    return "never (within the run)" if value is None else f"{value:.0f} s"


def main() -> int:
    """Run the benchmark (see the module docstring); 0 when every check passed."""
    parser = argparse.ArgumentParser(prog="python -m bench.outage", description="The gateway through a PostgreSQL outage under steady load.")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (default 200)")
    parser.add_argument("--before", type=float, default=20.0, help="seconds of load before the outage (default 20)")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds without PostgreSQL (default 60)")
    parser.add_argument("--after", type=float, default=40.0, help="seconds of load after it (default 40)")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds to wait for the spool to drain after the load (default 120)")
    parser.add_argument("--max-in-flight", type=int, default=64, help="requests in flight at most (default 64)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a TERM cleans up like Ctrl-C
    out = Path(tempfile.mkdtemp(prefix="smoltbot-outage-"))
    state = out / "state"
    state.mkdir()
    with ExitStack() as cleanup:
        url = cleanup.enter_context(private_database("outage"))
        cleanup.callback(shutil.rmtree, state, True)
        fake = start_fake("fake provider")
        cleanup.callback(fake.stop)
        result = asyncio.run(_run(args, url, fake, state, out, cleanup))
        checks = _verify(url, result["load"], state / "spool")
    with (out / "samples.jsonl").open("w") as samples:
        samples.writelines(json.dumps(asdict(sample)) + "\n" for sample in result["samples"])
    return 0 if report(args, result, checks, out) else 1


if __name__ == "__main__":
    raise SystemExit(main())
