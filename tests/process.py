"""
Run the real daemon (`twistd -n smoltbot`) or the `smoltbot` command as a child process and
watch its JSON log lines, for end-to-end tests of startup, health and shutdown.
"""

import json
import os
import socket
import sys
from pathlib import Path

import treq
from twisted.internet import defer, error, protocol, reactor

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    """A minimal environment for the daemon: this test run's database, no heartbeat, no AIP key needed."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AIP_ENABLED": "false",
        "HEARTBEAT_URL": "",
        "HOST": "127.0.0.1",
        "HEALTH_PROBE_INTERVAL_SECONDS": "0.5",
    }
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


class _Output(protocol.ProcessProtocol):
    def __init__(self, owner):
        self.owner = owner
        self.buffer = b""

    def outReceived(self, data):
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            self.owner._line(line.decode("utf-8", "replace"))

    def errReceived(self, data):
        self.owner.stderr += data.decode("utf-8", "replace")

    def processEnded(self, reason):
        if self.buffer:
            self.owner._line(self.buffer.decode("utf-8", "replace"))
        code = reason.value.exitCode if isinstance(reason.value, (error.ProcessDone, error.ProcessTerminated)) else None
        self.owner._ended(code, getattr(reason.value, "signal", None))


class ChildProcess:
    """A child process whose stdout lines are kept (raw and, when JSON, parsed) and can be awaited."""

    def __init__(self, argv, env, cwd=None):
        self.lines: list[str] = []
        self.stderr = ""
        self.exit_code = None
        self.exit_signal = None
        self._waiters: list = []
        self._exit = defer.Deferred()
        self.transport = reactor.spawnProcess(_Output(self), argv[0], argv, env=env, path=cwd or str(ROOT))

    @property
    def records(self) -> list:
        """Stdout lines parsed as JSON (a line that is not JSON raises, failing the test)."""
        return [json.loads(line) for line in self.lines if line.strip()]

    def _line(self, line):
        self.lines.append(line)
        for waiter in list(self._waiters):
            predicate, d = waiter
            if _matches(predicate, line):
                self._waiters.remove(waiter)
                d.callback(line)

    def _ended(self, code, sig):
        self.exit_code, self.exit_signal = code, sig
        for _, d in self._waiters:
            d.errback(AssertionError(f"process ended (code {code}) before the expected line; stderr: {self.stderr[-2000:]}"))
        self._waiters = []
        self._exit.callback(code)

    def wait_for(self, predicate, timeout=30.0):
        """Fire with the first line (already seen or to come) for which `predicate(record)` holds."""
        for line in self.lines:
            if _matches(predicate, line):
                return defer.succeed(line)
        d = defer.Deferred()
        if self._exit.called:
            d.errback(AssertionError(f"process already ended; stderr: {self.stderr[-2000:]}"))
            return d
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def wait_exit(self, timeout=30.0):
        """Fire with the exit code once the process ends."""
        if self._exit.called:
            return defer.succeed(self.exit_code)
        d = defer.Deferred()
        self._exit.addBoth(lambda result: (d.callback(result), result)[1])
        return d.addTimeout(timeout, reactor)

    def signal(self, name="TERM"):
        self.transport.signalProcess(name)

    def kill(self):
        """Make sure the process is gone (test cleanup)."""
        if not self._exit.called:
            try:
                self.transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
            return self._exit
        return defer.succeed(None)


def _matches(predicate, line):
    try:
        record = json.loads(line)
    except ValueError:
        return False
    try:
        return bool(predicate(record))
    except (KeyError, TypeError):
        return False


def start_daemon(test, env, args=()):
    """Start `twistd -n smoltbot` with `env`; the test's cleanup kills it if still running."""
    argv = [str(BIN / "twistd"), "--nodaemon", "--pidfile=", "smoltbot", *args]
    child = ChildProcess(argv, env)
    test.addCleanup(child.kill)
    return child


def run_command(test, argv, env):
    """Run the `smoltbot` console command; the returned child can be awaited with wait_exit()."""
    child = ChildProcess([str(BIN / "python"), "-m", "smoltbot.cli", *argv], env)
    test.addCleanup(child.kill)
    return child


async def get_json(port, path):
    """GET a path on the daemon and return (status, parsed body)."""
    response = await treq.get(f"http://127.0.0.1:{port}{path}", persistent=False).addTimeout(10, reactor)
    body = await response.content()
    return response.code, json.loads(body) if body.startswith((b"{", b"[")) else body
