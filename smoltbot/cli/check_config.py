"""
`smoltbot check-config`: validate the environment and reach every dependency, with timeouts,
and report what is wrong in words an operator can act on.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from smoltbot.config import Config, ConfigError, load_config
from smoltbot.util.errors import describe


async def _until_answers(reactor: Any, ping: Any, timeout: float) -> float:
    """Ping until the first success or until `timeout` has passed; raise the last error then."""
    deadline = reactor.seconds() + timeout
    while True:
        attempt: Deferred[float] = ping()
        attempt.addTimeout(max(0.1, deadline - reactor.seconds()), reactor)
        try:
            return await attempt
        except Exception:
            if reactor.seconds() >= deadline:
                raise
        await deferLater(reactor, 0.1)


async def _check_database(reactor: Any, config: Config) -> tuple[dict[str, Any], dict[str, Any]]:
    from smoltbot.store.dsn import redact_dsn
    from smoltbot.store.pool import Database
    from smoltbot.store.migrate import pending_migrations

    database = Database(
        config.database.url,
        reactor=reactor,
        pool_size=1,
        connect_timeout=config.database.connect_timeout,
        query_timeout=config.database.query_timeout,
    )
    database.startService()
    target = redact_dsn(config.database.url)
    try:
        try:
            latency = await _until_answers(reactor, database.ping, config.database.connect_timeout + 1)
        except Exception as e:
            failed = {"ok": False, "target": target, "error": describe(e)}
            return failed, {"ok": False, "error": "database unreachable"}
        postgres = {"ok": True, "target": target, "latencyMs": round(latency, 1)}
        try:
            pending = await pending_migrations(database)
        except Exception as e:
            return postgres, {"ok": False, "error": describe(e)}
        migrations: dict[str, Any] = {"ok": not pending, "pending": pending}
        if pending:
            migrations["fix"] = "run: smoltbot migrate"
        return postgres, migrations
    finally:
        await database.stopService()


async def _check_redis(reactor: Any, config: Config) -> dict[str, Any]:
    from smoltbot.store.kv import make_kv, parse_redis_url
    from smoltbot.metrics import Metrics

    if config.kv.redis_url is None:
        return {"ok": True, "mode": "memory", "note": "REDIS_URL unset: each process keeps its own in-memory KV"}
    kv = make_kv(
        config.kv.redis_url,
        reactor=reactor,
        metrics=Metrics(config.gateway_version),
        op_timeout=config.kv.op_timeout,
        connect_timeout=config.kv.connect_timeout,
    )
    kv.startService()
    target = str(parse_redis_url(config.kv.redis_url))
    try:
        latency = await _until_answers(reactor, kv.ping, config.kv.connect_timeout + 1)
        return {"ok": True, "mode": "redis", "target": target, "latencyMs": round(latency, 1)}
    except Exception as e:
        return {"ok": False, "mode": "redis", "target": target, "error": describe(e)}
    finally:
        await kv.stopService()


def _check_license(config: Config) -> dict[str, Any]:
    from smoltbot.health.license import judge_license

    if not config.license.jwt:
        return {"ok": True, "note": "no license configured"}
    judgement = judge_license(
        config.license.jwt,
        now=time.time(),
        leeway=config.license.leeway,
        public_key=config.license.public_key,
        secret=config.license.secret,
    )
    result: dict[str, Any] = {"ok": judgement.ok}
    if judgement.warning:
        result["warning"] = judgement.warning
    if "license_id" in judgement.claims:
        result["license_id"] = str(judgement.claims["license_id"])
    return result


async def check_config(reactor: Any, environ: Mapping[str, str]) -> dict[str, Any]:
    """
    The report: `{"ok", "checks": {"config", "postgresql", "migrations", "redis", "license"}}`.

    `ok` is false when the configuration is invalid, PostgreSQL or a configured Redis cannot be
    reached, or migrations are pending. A license problem is reported but never fails the check:
    the license never blocks traffic.
    """
    try:
        config = load_config(environ)
    except ConfigError as e:
        return {"ok": False, "checks": {"config": {"ok": False, "error": f"{type(e).__name__}: {e}"}}}
    checks: dict[str, Any] = {
        "config": {
            "ok": True,
            "role": config.role,
            "port": config.http.port,
            "listen": config.http.endpoint,
            "kv_mode": config.kv.mode,
            "aip_enabled": config.aip_enabled,
        }
    }
    checks["postgresql"], checks["migrations"] = await _check_database(reactor, config)
    checks["redis"] = await _check_redis(reactor, config)
    checks["license"] = _check_license(config)
    required = ("config", "postgresql", "migrations", "redis")
    return {"ok": all(checks[name]["ok"] for name in required), "checks": checks}


def format_report(report: Mapping[str, Any]) -> str:
    """The report as aligned text lines, one per check, then a verdict."""
    lines = []
    for name, check in report["checks"].items():
        status = "ok" if check.get("ok") else ("WARN" if name == "license" else "FAIL")
        details = [f"{key}={value}" for key, value in check.items() if key not in ("ok", "error", "note", "fix", "pending")]
        if check.get("pending"):
            details.insert(0, "pending: " + ", ".join(check["pending"]))
        for key in ("error", "note", "fix"):
            if check.get(key):
                details.append(str(check[key]))
        lines.append(f"{name:<11} {status:<5} {'  '.join(details)}".rstrip())
    lines.append("configuration OK" if report["ok"] else "configuration has problems (see FAIL lines)")
    return "\n".join(lines)
