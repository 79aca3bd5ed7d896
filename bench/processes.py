"""
The server processes of the benchmarks: fake providers and the gateway (`twistd -n smoltbot`),
each started as a child process on loopback and stopped by its own pid, with its CPU time and
memory read from /proc.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition as {name with its labels: value}."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _wait_for_port(port: int, process: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{name} did not listen on port {port}")


@dataclass
class Process:
    """A server process of a benchmark, with its CPU time and memory read from /proc."""

    name: str
    popen: subprocess.Popen
    port: int

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (all its threads) so far."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICK

    def memory_kb(self, key: str) -> int:
        """A memory figure of /proc/<pid>/status in KB: `VmRSS` (resident now) or `VmHWM` (peak)."""
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def metrics(self) -> dict[str, float]:
        """The process's `/metrics` (Prometheus text), as {name with its labels: value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode())

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; waits for the exit either way."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def start_fake(name: str) -> Process:
    """A fake provider in its own process."""
    port = free_port()
    code = "import sys; from smoltbot.fakeprovider import main; main(sys.argv[1:])"
    popen = subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL
    )
    _wait_for_port(port, popen, name)
    return Process(name, popen, port)


def start_gateway(upstream: Process, log: Path, database_url: str, state_dir: Path, **env: str) -> Process:
    """
    The gateway as operators run it: `twistd -n smoltbot`, configured by environment variables,
    every provider pointed at `upstream`, its log in `log`; `env` adds or overrides variables.
    """
    port = free_port()
    base = f"http://127.0.0.1:{upstream.port}"
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "AIP_ENABLED": "false",
        "HEARTBEAT_URL": "",
        "SMOLTBOT_ROLE": "gateway",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "info",
        "SMOLTBOT_STATE_DIR": str(state_dir),
        "ANTHROPIC_UPSTREAM_URL": base,
        "OPENAI_UPSTREAM_URL": base,
        "GEMINI_UPSTREAM_URL": base,
        **env,
    }
    code = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    popen = subprocess.Popen(
        [sys.executable, "-c", code, "-n", "--pidfile=", "smoltbot"], cwd=ROOT, env=environment, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    _wait_for_port(port, popen, "gateway")
    return Process("gateway", popen, port)
