#!/usr/bin/env python3
"""
Run a systemd unit's ExecStart the way systemd would, without systemd, inside a chroot.

Used by packaging/test-deb.sh on a Debian root where the smoltbot package is installed. From the
installed unit file it takes ExecStart, User/Group, EnvironmentFile (read from inside the root),
Environment, UMask, StateDirectory and TimeoutStopSec, and it provides a NOTIFY_SOCKET so that
the daemon's sd_notify messages (READY=1, STOPPING=1) are seen as systemd would see them.

Two checks:
  --expect-config-error   the daemon must exit with status 1 and name the missing variables
  (default)               READY=1, then GET each --get URL (200 and {"status": "ok"} for
                          /health/live), then SIGTERM: STOPPING=1 and exit status 0 within
                          TimeoutStopSec

Prints one line per finding, "PASS name: detail" or "FAIL name: detail"; exits 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

FAILED = False


def report(ok: bool, name: str, detail: str) -> None:
    """Print one finding."""
    global FAILED
    FAILED |= not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def read_unit(path: str) -> dict[str, list[str]]:
    """The [Service] settings of a unit file, each name mapped to its values in order."""
    settings: dict[str, list[str]] = {}
    section = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "Service" and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def read_env_file(path: str) -> dict[str, str]:
    """Parse an EnvironmentFile= (KEY=VALUE lines, # and ; comments, optional quotes)."""
    env: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key, value = line.split("=", 1)
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            env[key.strip()] = value
    return env


def build_command(root: str, unit: dict[str, list[str]], instance: str | None) -> tuple[list[str], dict[str, str], int]:
    """The chroot command line and environment for the unit's ExecStart, and its TimeoutStopSec."""

    def expand(value: str) -> str:
        return value.replace("%i", instance or "")

    user = unit.get("User", ["root"])[-1]
    group = unit.get("Group", [user])[-1]
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
        "LANG": "C.UTF-8",
        "USER": user,
        "LOGNAME": user,
        "HOME": "/",
        "SHELL": "/usr/sbin/nologin",
    }
    with open(os.path.join(root, "etc/passwd"), encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(":")
            if fields[0] == user:
                env["HOME"], env["SHELL"] = fields[5], fields[6]
    for value in unit.get("Environment", []):
        for assignment in shlex.split(expand(value)):
            key, val = assignment.split("=", 1)
            env[key] = val
    for value in unit.get("EnvironmentFile", []):
        value = expand(value)
        optional = value.startswith("-")
        path = os.path.join(root, value.lstrip("-").lstrip("/"))
        if optional and not os.path.exists(path):
            continue
        env.update(read_env_file(path))
    state = unit.get("StateDirectory", [])
    if state:
        env["STATE_DIRECTORY"] = ":".join("/var/lib/" + expand(s) for s in " ".join(state).split())
        for s in " ".join(state).split():
            subprocess.run(["chroot", root, "install", "-d", "-o", user, "-g", group, "-m", "0750", "/var/lib/" + expand(s)], check=True)
    exec_start = expand(unit["ExecStart"][-1]).lstrip("@-:+!")
    umask = unit.get("UMask", ["0022"])[-1]
    command = [
        "chroot", f"--userspec={user}:{group}", root,
        "/bin/sh", "-c", f'umask {umask} && exec "$@"', "sh", *shlex.split(exec_start),
    ]
    timeout_stop = float(unit.get("TimeoutStopSec", ["90"])[-1].rstrip("s"))
    return command, env, int(timeout_stop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--unit", required=True, help="path of the unit file inside the root")
    parser.add_argument("--instance", help="value of %%i for a template unit")
    parser.add_argument("--expect-config-error", action="store_true")
    parser.add_argument("--missing", nargs="*", default=["DATABASE_URL", "ANTHROPIC_API_KEY"])
    parser.add_argument("--get", action="append", default=[], help="URL to GET once READY=1 (expects 200)")
    parser.add_argument("--start-timeout", type=float, default=60)
    args = parser.parse_args()

    unit = read_unit(os.path.join(args.root, args.unit.lstrip("/")))
    command, env, timeout_stop = build_command(args.root, unit, args.instance)
    print(f"ExecStart={unit['ExecStart'][-1]} User={unit.get('User')} UMask={unit.get('UMask')}", flush=True)

    # The notify socket lives in the root's /run, writable by the service user.
    sock_dir = tempfile.mkdtemp(prefix="notify.", dir=os.path.join(args.root, "run"))
    os.chmod(sock_dir, 0o755)
    sock_path = os.path.join(sock_dir, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    os.chmod(sock_path, 0o777)
    env["NOTIFY_SOCKET"] = "/" + os.path.relpath(sock_path, args.root)
    notify.settimeout(0.2)
    messages: list[str] = []

    def wait_for(message: str, deadline: float, proc: subprocess.Popen) -> bool:
        while time.monotonic() < deadline:
            try:
                data = notify.recv(4096).decode()
                messages.extend(data.split("\n"))
            except socket.timeout:
                pass
            if message in messages:
                return True
            if proc.poll() is not None:
                return message in messages
        return False

    out = tempfile.TemporaryFile()
    proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        if args.expect_config_error:
            try:
                status = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                status = None
            out.seek(0)
            text = out.read().decode(errors="replace")
            report(status == 1, "unconfigured start exits 1", f"exit status {status}")
            named = [m for m in args.missing if m in text]
            report(
                "EnvValidationError: Missing required environment variables" in text and named == args.missing,
                "unconfigured start names the missing variables",
                text.strip().splitlines()[0] if text.strip() else "no output",
            )
            report("READY=1" not in messages, "unconfigured start never reports READY=1", f"notify messages: {messages}")
            return 1 if FAILED else 0

        started = time.monotonic()
        ready = wait_for("READY=1", started + args.start_timeout, proc)
        report(ready, "READY=1 over NOTIFY_SOCKET", f"after {time.monotonic() - started:.1f}s" if ready else f"not within {args.start_timeout:.0f}s (exit status {proc.poll()})")
        if ready:
            for url in args.get:
                try:
                    with urllib.request.urlopen(url, timeout=5) as response:
                        body = response.read().decode()
                        ok = response.status == 200
                        if url.endswith("/health/live"):
                            ok = ok and json.loads(body).get("status") == "ok"
                        report(ok, f"GET {url}", f"{response.status} {body.strip()[:120]}")
                except Exception as e:  # noqa: BLE001 - any failure is the finding
                    report(False, f"GET {url}", repr(e))
        if proc.poll() is None:
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)  # chroot and sh exec: this is twistd's pid
            stopping = wait_for("STOPPING=1", stop_at + timeout_stop, proc)
            try:
                status = proc.wait(timeout=max(0.1, stop_at + timeout_stop - time.monotonic()))
            except subprocess.TimeoutExpired:
                status = None
            report(stopping, "STOPPING=1 over NOTIFY_SOCKET after SIGTERM", f"notify messages: {[m for m in messages if m]}")
            report(status == 0, f"SIGTERM: exit status 0 within TimeoutStopSec={timeout_stop}s", f"exit status {status} after {time.monotonic() - stop_at:.1f}s")
        else:
            report(False, "daemon still running at SIGTERM", f"it exited early with status {proc.returncode}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        notify.close()
        os.unlink(sock_path)
        os.rmdir(sock_dir)
        out.seek(0)
        log = out.read().decode(errors="replace").strip().splitlines()
        print("daemon output (last lines):", flush=True)
        for line in log[-15:]:
            print("  | " + line[:300], flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
