"""
twistd integration: the `smoltbot` plugin's options and `makeService`.

Heavy imports (Klein, txredisapi, the proxy) happen inside `makeService`, after twistd has
installed the reactor the user asked for.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.python import usage


class Options(usage.Options):
    """Command-line options of `twistd smoltbot`; each overrides its environment variable."""

    optParameters = [
        ["role", "r", None, "gateway, scheduler or all (overrides SMOLTBOT_ROLE)"],
        ["port", "p", None, "TCP port to listen on (overrides PORT)"],
        ["host", None, None, "address to listen on (overrides HOST)"],
        [
            "listen",
            None,
            None,
            "endpoint to listen on, e.g. tcp:8787:interface=127.0.0.1, unix:/run/smoltbot/http.sock or "
            "systemd:domain=INET:index=0 (overrides LISTEN, PORT and HOST)",
        ],
    ]

    longdesc = (
        "smoltbot: a gateway between AI agents and the Anthropic, OpenAI and Gemini APIs. "
        "Configured by environment variables (see docs/CONFIGURATION.md)."
    )


class _TwistdRoot(MultiService):
    """
    The service twistd holds: hands twistd the JSON log observer, and turns a failure to start
    into one clear line on stderr and in the log, and exit status 1.
    """

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon
        daemon.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd starts logging with the ILogObserver component of the application it wraps us in.
        from twisted.logger import ILogObserver
        from twisted.python.components import Componentized

        if isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.daemon.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        from smoltbot.app.lifecycle import StartupError

        try:
            super().privilegedStartService()
        except StartupError as e:
            from twisted.logger import Logger

            Logger(namespace="smoltbot").critical("{reason}", reason=str(e))
            sys.__stderr__.write(f"{e}\n")
            raise SystemExit(1) from None


def makeService(options: Options) -> MultiService:
    """Build the daemon from the environment and options; exit 1 with a clear message on bad config."""
    from smoltbot.config import ConfigError, config_from_environment
    from smoltbot.logs import write_fatal

    overrides: dict[str, Any] = {name: options[name] for name in ("role", "port", "host", "listen")}
    try:
        config = config_from_environment(overrides)
    except ConfigError as e:
        write_fatal(f"{type(e).__name__}: {e}", "smoltbot-gateway")
        raise SystemExit(1) from None

    from twisted.internet import reactor

    from smoltbot.app.compose import build_daemon

    return _TwistdRoot(build_daemon(config, reactor))
