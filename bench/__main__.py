"""
The proxy benchmark: `python -m bench` (or `bench/run.sh`) from the project root.

It creates a private, migrated database (`bench.database`), starts two identical fake providers
and the gateway (`twistd -n smoltbot`, pointed at one of them and at that database) as separate
processes on loopback, checks that the gateway changes no byte, then runs each workload through
the gateway and directly against the other fake provider:

  1. 1 KB non-streaming POST, 32 connections (wrk)
  2. 50-event SSE stream, 32 connections (wrk)
  3. 256 concurrent 1 s streams: time to first event (bench.streams)
  4. 1,000 slow streams held open at once: memory per stream (bench.streams)

and reports requests/s, latency p50/p99 and what the gateway adds to them, the gateway's CPU
time per request (utime+stime from /proc), its peak RSS and its RSS per held stream.

BENCH_RECORDING=on|off|both (default both) chooses the gateways: one with RECORDER_ENABLED=true,
one with false, or both side by side. Workloads 1 and 2 run through each, so the CPU cost of
recording shows; with recording on, the request_records rows written during each run are counted
once the recorder has flushed, and compared with the requests the gateway served (exactly) and
those wrk completed (wrk abandons up to one per connection when it stops). Workloads 3 and 4 use the
recording gateway when there is one. The database, the gateways' state folders and every process
go at the end. Bounded: about two minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.database import private_database, query
from bench.processes import Process, start_fake, start_gateway
from bench.streams import hold, request_bytes, steady_ttfe

DURATION = float(os.environ.get("BENCH_SECONDS", "10"))
HELD_STREAMS = int(os.environ.get("BENCH_HELD_STREAMS", "1000"))
RECORDING = {"on": ("on",), "off": ("off",), "both": ("on", "off")}
HEADERS = {"x-api-key": "sk-bench-0000", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def _message(stream: bool, size: int = 0) -> bytes:
    """An Anthropic Messages request body, padded to `size` bytes when given."""
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 1024, "messages": [{"role": "user", "content": ""}], "stream": stream}
    if size:
        body["messages"][0]["content"] = "x" * (size - len(json.dumps(body, separators=(",", ":"))))
    return json.dumps(body, separators=(",", ":")).encode()


def ensure_wrk() -> str:
    """The path of wrk, installed from Debian when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk (apt-get install -y wrk) ...", flush=True)
    if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, stdout=subprocess.DEVNULL)
    return shutil.which("wrk") or "wrk"


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = %s
%s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d,\\"non2xx\\":%%d,\\"p50\\":%%d,\\"p99\\":%%d}\\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_run(wrk: str, url: str, body: bytes, headers: dict[str, str], connections: int, seconds: float) -> dict[str, Any]:
    """One bounded wrk run; its requests/s, latency percentiles (µs) and error counts."""
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % (json.dumps(body.decode()), lines))
    try:
        out = subprocess.run(
            [wrk, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", script.name, url],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
    finally:
        os.unlink(script.name)
    result = json.loads(out.split("RESULT ", 1)[1].splitlines()[0])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


def check_bytes(direct: Process, gateway: Process) -> str:
    """Compare raw responses (JSON and SSE, each provider) from twin fakes: direct and through the gateway."""
    import http.client

    cases = [
        ("/anthropic", "/v1/messages", {"x-api-key": "k"}, _message(False)),
        ("/anthropic", "/v1/messages", {"x-api-key": "k"}, _message(True)),
        ("/openai", "/v1/chat/completions", {"authorization": "Bearer k"}, b'{"model":"gpt-5","messages":[]}'),
        ("/openai", "/v1/chat/completions", {"authorization": "Bearer k"}, b'{"model":"gpt-5","messages":[],"stream":true}'),
        ("/gemini", "/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "k"}, b'{"contents":[]}'),
        ("/gemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", {"x-goog-api-key": "k"}, b'{"contents":[]}'),
    ]

    def fetch(port: int, path: str, headers: dict[str, str], body: bytes) -> bytes:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", path, body, headers)
        data = connection.getresponse().read()
        connection.close()
        return data

    checked = 0
    for prefix, path, headers, body in cases:
        for _ in range(3):  # `created` timestamps may straddle a second: then both counters move on
            if fetch(direct.port, path, headers, body) == fetch(gateway.port, prefix + path, headers, body):
                checked += 1
                break
        else:
            return f"MISMATCH on {prefix}{path}"
    return f"{checked}/{len(cases)} identical (JSON and SSE, 3 providers)"


def settled_records(url: str, gateway: Process) -> tuple[int, int, float]:
    """
    Rows in request_records and requests the gateway has served (`gateway_requests_total`), once
    none is in flight and the recorder has caught up (rows = served), or after 30 s; and how long
    that took.
    """
    started = time.monotonic()
    while True:
        metrics = gateway.metrics()
        served = sum(v for k, v in metrics.items() if k.startswith("gateway_requests_total{"))
        in_flight = sum(v for k, v in metrics.items() if k.startswith("gateway_requests_in_flight{"))
        rows = query(url, "SELECT count(*) FROM request_records")[0][0]
        if (rows == served and not in_flight) or time.monotonic() - started > 30:
            return rows, int(served), time.monotonic() - started
        time.sleep(0.1)


def run_wrk_workload(
    wrk: str, name: str, body: bytes, headers: dict[str, str], direct: Process, gateways: dict[str, Process], url: str
) -> dict[str, Any]:
    """
    Warm up, then measure through each gateway (with its CPU time, and with recording on the rows
    it wrote during the run) and directly.
    """
    path = "/v1/messages"
    result: dict[str, Any] = {"name": name}
    for mode, gateway in gateways.items():
        gateway_url = f"http://127.0.0.1:{gateway.port}/anthropic{path}"
        wrk_run(wrk, gateway_url, body, headers, 32, 2)
        before = settled_records(url, gateway) if mode == "on" else None
        cpu = gateway.cpu_seconds()
        through = wrk_run(wrk, gateway_url, body, headers, 32, DURATION)
        if before is not None:  # the CPU time includes the flush of the run's last records
            rows, served, waited = settled_records(url, gateway)
            through.update(rows=rows - before[0], served=served - before[1], flushed_after=waited)
        through["cpu_ms_per_request"] = (gateway.cpu_seconds() - cpu) * 1000 / max(through["requests"], 1)
        result[mode] = through
    direct_url = f"http://127.0.0.1:{direct.port}{path}"
    wrk_run(wrk, direct_url, body, headers, 32, 2)
    result["direct"] = wrk_run(wrk, direct_url, body, headers, 32, DURATION)
    return result


def main() -> None:
    """Run the benchmark (see the module docstring) and print its report."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a TERM cleans up like Ctrl-C
    choice = os.environ.get("BENCH_RECORDING", "both")
    if choice not in RECORDING:
        raise SystemExit(f"BENCH_RECORDING must be one of {', '.join(RECORDING)}, not {choice!r}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wrk = ensure_wrk()
    out = Path(tempfile.mkdtemp(prefix="smoltbot-bench-"))
    report: dict[str, Any] = {"cpus": os.cpu_count(), "open_files_limit": hard}
    with ExitStack() as cleanup:
        url = cleanup.enter_context(private_database("proxy"))
        direct = start_fake("fake provider (direct)")
        cleanup.callback(direct.stop)
        behind = start_fake("fake provider (behind the gateway)")
        cleanup.callback(behind.stop)
        gateways: dict[str, Process] = {}
        for mode in RECORDING[choice]:
            state = out / f"state-{mode}"
            state.mkdir()
            cleanup.callback(shutil.rmtree, state, True)
            enabled = "true" if mode == "on" else "false"
            gateways[mode] = start_gateway(behind, out / f"gateway-{mode}.log", url, state, RECORDER_ENABLED=enabled)
            cleanup.callback(gateways[mode].stop)
        gateway = next(iter(gateways.values()))
        report["bytes"] = check_bytes(direct, gateway)

        # 4 first, on a fresh gateway (after a short warm-up), so freed memory is not reused.
        wrk_run(wrk, f"http://127.0.0.1:{gateway.port}/anthropic/v1/messages", _message(False, 1024), HEADERS, 32, 1)
        slow = request_bytes("/v1/messages", {**HEADERS, "x-fake-events": "600", "x-fake-delay-ms": "1000"}, _message(True))
        held: dict[str, Any] = {}
        for target, prefix in ((gateway, "/anthropic"), (direct, "")):
            before = target.memory_kb("VmRSS")

            async def measure(target: Process = target) -> None:
                await asyncio.sleep(1.0)
                held[target.name] = target.memory_kb("VmRSS")

            count = asyncio.run(hold(target.port, slow.replace(b"POST /v1", b"POST " + prefix.encode() + b"/v1", 1), HELD_STREAMS, measure))
            held[target.name + " per stream"] = (held[target.name] - before) / max(count, 1)
            held[target.name + " streams"] = count
        report["held"] = held

        json_headers, sse_headers = {**HEADERS, "x-fake-events": "8"}, {**HEADERS, "x-fake-events": "50"}
        report["json"] = run_wrk_workload(wrk, "1 KB JSON POST, 32 connections", _message(False, 1024), json_headers, direct, gateways, url)
        report["sse"] = run_wrk_workload(wrk, "50-event SSE, 32 connections", _message(True), sse_headers, direct, gateways, url)

        stream = request_bytes("/v1/messages", {**HEADERS, "x-fake-events": "10", "x-fake-delay-ms": "100"}, _message(True))
        ttfe: dict[str, Any] = {}
        cpu = gateway.cpu_seconds()
        through = asyncio.run(steady_ttfe(gateway.port, stream.replace(b"POST /v1", b"POST /anthropic/v1", 1), 256, 4.0))
        ttfe["gateway_cpu_ms_per_stream"] = (gateway.cpu_seconds() - cpu) * 1000 / max(len(through), 1)
        plain = asyncio.run(steady_ttfe(direct.port, stream, 256, 4.0))
        ttfe.update(gateway=through, direct=plain)
        report["ttfe"] = ttfe
        report["peak_rss_kb"] = gateway.memory_kb("VmHWM")
        report["gateway"] = f"recording {next(iter(gateways))}"
    print_report(report, out, tuple(gateways))


def print_report(report: dict[str, Any], out: Path, modes: tuple[str, ...]) -> None:
    """Print the benchmark's figures as tables."""
    logs = ", ".join(f"gateway-{mode}.log" for mode in modes)
    print(f"smoltbot proxy benchmark: {report['cpus']} CPUs, open files limit {report['open_files_limit']}, logs in {out}: {logs}")
    print(f"bytes changed by the gateway: {report['bytes']}")
    print()
    print(f"{'workload':<32}{'target':<18}{'req/s':>7}{'p50 ms':>8}{'p99 ms':>8}{'+p50 ms':>9}{'+p99 ms':>9}{'errors':>8}{'CPU ms/req':>12}")
    for key in ("json", "sse"):
        run = report[key]
        d = run["direct"]
        for target in ("direct", *modes):
            r = run[target]
            label = "direct" if target == "direct" else f"gateway, rec {target}"
            added = "" if target == "direct" else f"{(r['p50'] - d['p50']) / 1000:>9.2f}{(r['p99'] - d['p99']) / 1000:>9.2f}"
            cpu = f"{r['cpu_ms_per_request']:>12.3f}" if target != "direct" else ""
            name = run["name"] if target == "direct" else ""
            print(f"{name:<32}{label:<18}{r['rps']:>7.0f}{r['p50'] / 1000:>8.2f}{r['p99'] / 1000:>8.2f}{added or ' ' * 18}{r['errors'] + r['non2xx']:>8}{cpu}")
    if "on" in modes:
        print()
        print("request_records rows written during each recording-on run, against the requests the gateway served")
        print("(gateway_requests_total) and those wrk completed (it abandons up to one in flight per connection when it stops):")
        for key in ("json", "sse"):
            r = report[key]["on"]
            verdict = "equal" if r["rows"] == r["served"] else f"DIFFERENT by {r['rows'] - r['served']:+d}"
            in_flight = r["served"] - r["requests"]
            wrk_check = "ok" if 0 <= in_flight <= 32 else "UNEXPECTED"
            print(
                f"  {report[key]['name']:<32} {r['rows']} rows, {r['served']} served ({verdict}), flushed {r['flushed_after']:.1f} s after the run; "
                f"wrk completed {r['requests']} + {in_flight} in flight at its stop ({wrk_check})"
            )
    if modes == ("on", "off"):
        costs = ", ".join(
            f"{report[key]['on']['cpu_ms_per_request'] - report[key]['off']['cpu_ms_per_request']:+.3f} ms ({key.upper()})" for key in ("json", "sse")
        )
        print(f"gateway CPU per request, recording on minus off: {costs}")
    t = report["ttfe"]
    g50, g99, d50, d99 = (percentile(t[k], q) * 1000 for k, q in (("gateway", 50), ("gateway", 99), ("direct", 50), ("direct", 99)))
    print()
    print(f"256 concurrent 1 s streams, time to first event ({len(t['gateway'])} gateway / {len(t['direct'])} direct streams), gateway {report['gateway']}:")
    print(f"  direct  p50 {d50:.2f} ms  p99 {d99:.2f} ms")
    print(f"  gateway p50 {g50:.2f} ms  p99 {g99:.2f} ms   added p50 {g50 - d50:.2f} ms  p99 {g99 - d99:.2f} ms")
    print(f"  gateway CPU per 1 s stream (10 events): {t['gateway_cpu_ms_per_stream']:.3f} ms")
    h = report["held"]
    print()
    print(f"{HELD_STREAMS} slow streams held at once, gateway {report['gateway']}:")
    for name in ("gateway", "fake provider (direct)"):
        print(f"  {name:<24} {h[name + ' streams']} held, RSS {h[name] / 1024:.1f} MB, {h[name + ' per stream']:.1f} KB per held stream")
    print()
    print(f"gateway peak RSS (VmHWM), {report['gateway']}: {report['peak_rss_kb'] / 1024:.1f} MB")


if __name__ == "__main__":
    main()
