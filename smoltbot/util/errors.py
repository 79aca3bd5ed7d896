"""
Error text that is safe to log, show and store: `describe` turns an exception or a Failure into
one short line, and `redact` masks secrets in any text.

Every one-line reason the daemon reports (a log line, a readiness check's `error`, a CLI's
`error:` line, `Database.last_error`) goes through `describe`, so there is one place that
decides what such a line may say. It never carries a traceback or a second line, it shows a
file error as `<reason>: <path>`, and it never carries a secret: the caller's own (a DSN's
password, a license, a URL's query) and, whatever the caller knows, a password written in a URL's
`user:password@` part.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from twisted.python.failure import Failure

MASK = "***"
"""What a secret is replaced with."""

MAX_REASON = 500
"""Characters kept of a reason: one line in a log or a health body, never a dump."""

# `scheme://user:password@`: the password part, wherever it appears in a message.
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^\s:@/?#]*:)(?P<secret>[^\s@/?#]+)(?=@)", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """
    `text` with each of `secrets` replaced by `***` (longest first, so a secret containing
    another is masked whole), and with the password of any `scheme://user:password@` masked too.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(lambda match: match.group("head") + MASK, text)


def unwrap(error: BaseException | Failure) -> BaseException:
    """
    The exception that explains `error`: a Failure's value, and behind twisted.web's wrappers
    (`ResponseFailed`, `ResponseNeverReceived`, ...), which only list other failures in
    `reasons`, the first of those.
    """
    value = error.value if isinstance(error, Failure) else error
    for _ in range(10):  # wrappers nest at most a level or two; the bound only guards against cycles
        reasons = getattr(value, "reasons", None)
        if not reasons or not isinstance(reasons, (list, tuple)):
            break
        first = reasons[0]
        value = first.value if isinstance(first, Failure) else first
    return value


def describe(error: BaseException | Failure, secrets: Iterable[str] = (), *, typed: bool = False) -> str:
    """
    One line saying why `error` happened, for reports and logs, with `secrets` masked (see `redact`).

    The line is the first non-blank line of the exception's message, or its class name when it
    has none; an `OSError` about a file reads `<reason>: <path>`. With `typed`, the class name
    comes first (`TimeoutError: no response within 10 s`), for errors whose message alone does
    not say what went wrong (network errors). Cut to `MAX_REASON` characters.
    """
    value = unwrap(error)
    name = type(value).__name__
    if isinstance(value, OSError) and value.filename:
        text = f"{value.strerror or name}: {value.filename}"
    else:
        lines = [line.strip() for line in str(value).splitlines() if line.strip()]
        text = lines[0] if lines else name
    if typed and text != name:
        text = f"{name}: {text}"
    text = redact(text, secrets)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"
