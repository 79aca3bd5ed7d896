"""
PostgreSQL connection strings (DSNs): telling one apart, parsing one for libpq, and keeping its
password out of every message (DESIGN §1.4).

A DSN is a `postgresql://`/`postgres://` URL or a libpq `key=value` string; either may carry a
password (or an `sslpassword`) in several spellings, and a message about a failed connection may
quote any of them. `redact_dsn` masks them in the DSN itself; `dsn_secrets` lists them, so that
`smoltbot.util.errors.describe` can mask them in any error text.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import psycopg2
from psycopg2.extensions import parse_dsn

from smoltbot.util.errors import MASK, describe

# Where a DSN keeps a password (or an sslpassword): URL userinfo (up to the last "@", to be safe
# when the password holds an unescaped "@"), a URL query parameter, or a key=value pair (maybe quoted).
_SECRET_PATTERNS = (
    re.compile(r"^[a-z][a-z0-9+.-]*://[^:@/?#]*:(?P<secret>.*)@", re.IGNORECASE | re.DOTALL),
    re.compile(r"[?&](?:ssl)?password=(?P<secret>[^&#]*)", re.IGNORECASE),
    re.compile(r"(?:^|\s)(?:ssl)?password\s*=\s*(?P<secret>'(?:[^'\\]|\\.)*(?:'|$)|\S*)", re.IGNORECASE),
)
_LIBPQ_KEYWORD = re.compile(r"^\s*(\w+)\s*=")


def is_postgres_dsn(raw: str) -> bool:
    """Whether `raw` is a PostgreSQL URL (postgres:// or postgresql://) or a libpq key=value DSN."""
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("postgres", "postgresql"):
            return False
        try:
            parts.port
        except ValueError:
            return False
        return bool(parts.hostname or "host=" in parts.query)
    return bool(_LIBPQ_KEYWORD.match(raw)) and all("=" in token for token in raw.split() if token.strip())


def redact_dsn(dsn: str) -> str:
    """Return `dsn` (URL or key=value form) with any password replaced by `***`."""
    for pattern in _SECRET_PATTERNS:
        dsn = pattern.sub(_mask, dsn)
    return dsn


def dsn_secrets(dsn: str) -> list[str]:
    """Every spelling of the DSN's password(s) that could turn up in a message, longest first."""
    found = {m.group("secret") for pattern in _SECRET_PATTERNS for m in pattern.finditer(dsn)}
    found |= {unquote(s) for s in found} | {s.strip("'") for s in found}
    try:
        params = parse_dsn(dsn)
    except psycopg2.Error:
        params = {}
    found |= {params.get("password", ""), params.get("sslpassword", "")}
    return sorted((s for s in found if s), key=len, reverse=True)


def libpq_params(dsn: str) -> dict[str, str]:
    """
    The DSN's connection parameters, as libpq reads them; a DSN libpq cannot parse raises
    ValueError naming it with its password masked.
    """
    try:
        return parse_dsn(dsn)
    except psycopg2.Error as error:
        reason = describe(error, dsn_secrets(dsn))
        raise ValueError(f"invalid database URL {redact_dsn(dsn)}: {reason}") from None


def _mask(match: re.Match[str]) -> str:
    start, end = match.start("secret") - match.start(), match.end("secret") - match.start()
    return match.group(0)[:start] + MASK + match.group(0)[end:]
