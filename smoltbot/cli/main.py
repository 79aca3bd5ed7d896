"""
The `smoltbot` operator command: `migrate`, `check-config`, `license`, `agents`, `requests`,
`fake-provider`.

It reads the same environment variables as the daemon. Every subcommand that reaches a
dependency does so with a timeout and exits non-zero with a one-line reason when it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable, Sequence

from smoltbot import __version__


def _config_or_exit(write_error: Callable[[str], None]) -> Any:
    from smoltbot.config import ConfigError, config_from_environment

    try:
        return config_from_environment()
    except ConfigError as e:
        write_error(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None


def _react(main: Callable[..., Any], *args: Any) -> int:
    """Run `main(reactor, *args)` (a coroutine) on the reactor and return its exit code."""
    from twisted.internet import defer, task

    code: list[int] = [1]

    async def run(reactor: Any) -> None:
        code[0] = await main(reactor, *args)

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return code[0]


def _database_command(command: Callable[..., Any], **options: Any) -> int:
    """Run one of the commands that read or change the database, with the daemon's DSN and timeouts."""
    config = _config_or_exit(_stderr)

    async def main(reactor: Any) -> int:
        return await command(
            reactor,
            config.database.url,
            write=_stdout,
            connect_timeout=config.database.connect_timeout,
            query_timeout=config.database.query_timeout,
            **options,
        )

    return _react(main)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from smoltbot.store.migrate import migrate_command

    return _database_command(migrate_command, status_only=args.status)


def _cmd_agents(args: argparse.Namespace) -> int:
    from smoltbot.cli.reports import agents_command

    return _database_command(agents_command, as_json=args.json)


def _cmd_requests(args: argparse.Namespace) -> int:
    from smoltbot.cli.reports import requests_command

    return _database_command(requests_command, agent=args.agent, limit=args.limit, as_json=args.json)


def _positive_int(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
        raise argparse.ArgumentTypeError("must be a whole number between 1 and 100000")
    return int(raw)


def _cmd_license(args: argparse.Namespace) -> int:
    from smoltbot.health.license import license_report

    config = _config_or_exit(_stderr)
    text, code = license_report(
        config.license.jwt,
        now=time.time(),
        leeway=config.license.leeway,
        public_key=config.license.public_key,
        secret=config.license.secret,
    )
    _stdout(text)
    return code


def _cmd_check_config(args: argparse.Namespace) -> int:
    from smoltbot.cli.check_config import check_config, format_report

    def emit(report: dict[str, Any]) -> None:
        _stdout(json.dumps(report, indent=2) if args.json else format_report(report))

    async def main(reactor: Any) -> int:
        report = await check_config(reactor, dict(_environ()))
        emit(report)
        return 0 if report["ok"] else 1

    return _react(main)


def _cmd_fake_provider(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from smoltbot.fakeprovider import main as fake_main

    return fake_main(list(rest)) or 0


def _environ() -> dict[str, str]:
    import os

    return dict(os.environ)


def _stdout(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def _stderr(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `smoltbot`."""
    parser = argparse.ArgumentParser(
        prog="smoltbot",
        description="Operate a smoltbot gateway. Run the daemon itself with `twistd -n smoltbot`.",
    )
    parser.add_argument("--version", action="version", version=f"smoltbot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    migrate = commands.add_parser("migrate", help="apply pending SQL migrations to DATABASE_URL")
    migrate.add_argument("--status", action="store_true", help="list applied and pending migrations, change nothing")
    check = commands.add_parser("check-config", help="validate the environment and reach every dependency")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    commands.add_parser("license", help="decode and judge MNEMOM_LICENSE_JWT (never prints the token)")
    agents = commands.add_parser("agents", help="list agents: first and last seen, request count")
    agents.add_argument("--json", action="store_true", help="print JSON")
    requests = commands.add_parser("requests", help="list the latest request records, newest first")
    requests.add_argument("--agent", metavar="ID", help="only this agent's requests (smolt-xxxxxxxx)")
    requests.add_argument("--limit", metavar="N", type=_positive_int, default=20, help="how many (default 20)")
    requests.add_argument("--json", action="store_true", help="print JSON, every recorded field")
    commands.add_parser(
        "fake-provider", help="run a fake Anthropic/OpenAI/Gemini server for tests and demos", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `smoltbot` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["fake-provider"]:
        return _cmd_fake_provider(argparse.Namespace(), argv[1:])
    args = parser.parse_args(argv)
    handlers = {
        "migrate": _cmd_migrate,
        "check-config": _cmd_check_config,
        "license": _cmd_license,
        "agents": _cmd_agents,
        "requests": _cmd_requests,
    }
    if args.command not in handlers:
        parser.print_help()
        return 2
    return handlers[args.command](args)

