"""
The proxy benchmark: `python -m bench` (or `bench/run.sh`) from the project root.

It starts two identical fake providers and the gateway (`twistd -n smoltbot`, pointed at one
of them) as separate processes on loopback, checks that the gateway changes no byte, then runs
each workload through the gateway and directly against the other fake provider:

  1. 1 KB non-streaming POST, 32 connections (wrk)
  2. 50-event SSE stream, 32 connections (wrk)
  3. 256 concurrent 1 s streams: time to first event (bench.streams)
  4. 1,000 slow streams held open at once: memory per stream (bench.streams)

and reports requests/s, latency p50/p99 and what the gateway adds to them, the gateway's CPU
time per request (utime+stime from /proc), its peak RSS and its RSS per held stream. Bounded:
about two minutes.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.streams import hold, request_bytes, steady_ttfe

ROOT = Path(__file__).resolve().parent.parent
DURATION = float(os.environ.get("BENCH_SECONDS", "10"))
HELD_STREAMS = int(os.environ.get("BENCH_HELD_STREAMS", "1000"))
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
HEADERS = {"x-api-key": "sk-bench-0000", "anthropic-version": "2023-06-01", "content-type": "application/json"}


def _message(stream: bool, size: int = 0) -> bytes:
    """An Anthropic Messages request body, padded to `size` bytes when given."""
    body = {"model": "claude-sonnet-4-20250514", "max_tokens": 1024, "messages": [{"role": "user", "content": ""}], "stream": stream}
    if size:
        body["messages"][0]["content"] = "x" * (size - len(json.dumps(body, separators=(",", ":"))))
    return json.dumps(body, separators=(",", ":")).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{name} did not listen on port {port}")


@dataclass
class Process:
    """A server process of the benchmark, with its CPU time and memory read from /proc."""

    name: str
    popen: subprocess.Popen
    port: int

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

    def memory_kb(self, key: str) -> int:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def start_fake(name: str) -> Process:
    """A fake provider in its own process."""
    port = _free_port()
    code = "import sys; from smoltbot.fakeprovider import main; main(sys.argv[1:])"
    popen = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
    )
    _wait_for_port(port, popen, name)
    return Process(name, popen, port)


def start_gateway(upstream: Process, log: Path) -> Process:
    """The gateway as operators run it: `twistd -n smoltbot`, configured by environment variables."""
    port = _free_port()
    base = f"http://127.0.0.1:{upstream.port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres",
        "AIP_ENABLED": "false",
        "HEARTBEAT_URL": "",
        "SMOLTBOT_ROLE": "gateway",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "info",
        "SMOLTBOT_STATE_DIR": tempfile.mkdtemp(prefix="smoltbot-bench-"),
        "ANTHROPIC_UPSTREAM_URL": base,
        "OPENAI_UPSTREAM_URL": base,
        "GEMINI_UPSTREAM_URL": base,
    }
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    popen = subprocess.Popen(
        [sys.executable, "-c", code, "-n", "--pidfile=", "smoltbot"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    _wait_for_port(port, popen, "gateway")
    return Process("gateway", popen, port)


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


def run_wrk_workload(wrk: str, name: str, body: bytes, headers: dict[str, str], direct: Process, gateway: Process) -> dict[str, Any]:
    """Warm up, then measure through the gateway (with its CPU time) and directly."""
    path = "/v1/messages"
    gateway_url = f"http://127.0.0.1:{gateway.port}/anthropic{path}"
    direct_url = f"http://127.0.0.1:{direct.port}{path}"
    wrk_run(wrk, gateway_url, body, headers, 32, 2)
    cpu = gateway.cpu_seconds()
    through = wrk_run(wrk, gateway_url, body, headers, 32, DURATION)
    through["cpu_ms_per_request"] = (gateway.cpu_seconds() - cpu) * 1000 / max(through["requests"], 1)
    wrk_run(wrk, direct_url, body, headers, 32, 2)
    plain = wrk_run(wrk, direct_url, body, headers, 32, DURATION)
    return {"name": name, "gateway": through, "direct": plain}


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wrk = ensure_wrk()
    out = Path(tempfile.mkdtemp(prefix="smoltbot-bench-"))
    direct = start_fake("fake provider (direct)")
    behind = start_fake("fake provider (behind the gateway)")
    gateway = start_gateway(behind, out / "gateway.log")
    processes = [gateway, direct, behind]
    report: dict[str, Any] = {"cpus": os.cpu_count(), "open_files_limit": hard}
    try:
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

        report["json"] = run_wrk_workload(wrk, "1 KB JSON POST, 32 connections", _message(False, 1024), {**HEADERS, "x-fake-events": "8"}, direct, gateway)
        report["sse"] = run_wrk_workload(wrk, "50-event SSE, 32 connections", _message(True), {**HEADERS, "x-fake-events": "50"}, direct, gateway)

        stream = request_bytes("/v1/messages", {**HEADERS, "x-fake-events": "10", "x-fake-delay-ms": "100"}, _message(True))
        ttfe: dict[str, Any] = {}
        cpu = gateway.cpu_seconds()
        through = asyncio.run(steady_ttfe(gateway.port, stream.replace(b"POST /v1", b"POST /anthropic/v1", 1), 256, 4.0))
        ttfe["gateway_cpu_ms_per_stream"] = (gateway.cpu_seconds() - cpu) * 1000 / max(len(through), 1)
        plain = asyncio.run(steady_ttfe(direct.port, stream, 256, 4.0))
        ttfe.update(gateway=through, direct=plain)
        report["ttfe"] = ttfe
        report["peak_rss_kb"] = gateway.memory_kb("VmHWM")
    finally:
        for process in processes:
            process.stop()
    print_report(report, out)


def print_report(report: dict[str, Any], out: Path) -> None:
    print(f"smoltbot proxy benchmark: {report['cpus']} CPUs, open files limit {report['open_files_limit']}, gateway log {out}/gateway.log")
    print(f"bytes changed by the gateway: {report['bytes']}")
    print()
    print(f"{'workload':<34}{'target':<9}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'gw CPU ms/req':>15}")
    for key in ("json", "sse"):
        run = report[key]
        for target in ("direct", "gateway"):
            r = run[target]
            cpu = f"{r['cpu_ms_per_request']:.3f}" if target == "gateway" else ""
            errors = r["errors"] + r["non2xx"]
            print(f"{run['name']:<34}{target:<9}{r['rps']:>9.0f}{r['p50'] / 1000:>9.2f}{r['p99'] / 1000:>9.2f}{errors:>8}{cpu:>15}")
        g, d = run["gateway"], run["direct"]
        print(f"{'':<34}{'added':<9}{'':>9}{(g['p50'] - d['p50']) / 1000:>9.2f}{(g['p99'] - d['p99']) / 1000:>9.2f}")
    t = report["ttfe"]
    g50, g99, d50, d99 = (percentile(t[k], q) * 1000 for k, q in (("gateway", 50), ("gateway", 99), ("direct", 50), ("direct", 99)))
    print()
    print(f"256 concurrent 1 s streams, time to first event ({len(t['gateway'])} gateway / {len(t['direct'])} direct streams):")
    print(f"  direct  p50 {d50:.2f} ms  p99 {d99:.2f} ms")
    print(f"  gateway p50 {g50:.2f} ms  p99 {g99:.2f} ms   added p50 {g50 - d50:.2f} ms  p99 {g99 - d99:.2f} ms")
    print(f"  gateway CPU per 1 s stream (10 events): {t['gateway_cpu_ms_per_stream']:.3f} ms")
    h = report["held"]
    print()
    print(f"{HELD_STREAMS} slow streams held at once:")
    for name in ("gateway", "fake provider (direct)"):
        print(f"  {name:<24} {h[name + ' streams']} held, RSS {h[name] / 1024:.1f} MB, {h[name + ' per stream']:.1f} KB per held stream")
    print()
    print(f"gateway peak RSS (VmHWM): {report['peak_rss_kb'] / 1024:.1f} MB")


if __name__ == "__main__":
    main()
