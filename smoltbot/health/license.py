"""
The enterprise license (`MNEMOM_LICENSE_JWT`): judging it, watching it, reporting on it.

The license is informational only (DESIGN §5): a bad or expired license shows up in readiness
and the logs, never in traffic. `judge_license` is the pure judgement; `LicenseMonitor` re-judges
it on a timer so an expiry is noticed without a restart; `license_report` is the text of
`smoltbot license`. The token itself is secret: it never appears in a judgement, a log line or
a report.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from smoltbot.util.episodes import FailureEpisode
from smoltbot.util.periodic import PeriodicService

PARSE_ERROR = "license_parse_error"
EXPIRED = "license_expired"
INVALID_SIGNATURE = "license_invalid_signature"

_SEGMENT = re.compile(r"[A-Za-z0-9_-]+\Z")
_EC_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_TIME_CLAIMS = ("exp", "iat", "nbf")


@dataclass(frozen=True)
class LicenseJudgement:
    """
    The verdict on one license token at one moment.

    `warning` is None when ok, else one of `license_parse_error`, `license_expired`,
    `license_invalid_signature`. `claims` is the decoded payload (empty when there is none or it
    could not be decoded); `expires_at` is its `exp` as a Unix time, if any.
    """

    ok: bool
    warning: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


def judge_license(
    token: str | None,
    *,
    now: float,
    leeway: float = 60,
    public_key: str | None = None,
    secret: str | None = None,
) -> LicenseJudgement:
    """
    Judge a license JWT at Unix time `now`.

    No token is fine. With a PEM `public_key` (RSA, EC or Ed25519/Ed448; the algorithm follows
    from the key, never `none`) or an HS256 `secret`, the signature must verify; the public key
    wins when both are given. Without either the payload is read unverified. `exp` may be
    passed by at most `leeway` seconds. A bad signature outranks expiry.
    """
    token = (token or "").strip()
    if not token:
        return LicenseJudgement(ok=True)
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three segments")
        header, claims = (_decode_segment(part) for part in parts[:2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("header or payload is not a JSON object")
        exp = claims.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, (int, float))):
            raise ValueError("exp is not a number")
    except ValueError:
        return LicenseJudgement(ok=False, warning=PARSE_ERROR)
    expires_at = None if exp is None else float(exp)

    def verdict(warning: str | None) -> LicenseJudgement:
        return LicenseJudgement(ok=warning is None, warning=warning, claims=claims, expires_at=expires_at)

    if public_key or secret:
        try:
            key, algorithm = _verification_key(public_key) if public_key else (secret, "HS256")
            jwt.PyJWS().decode(token, key=key, algorithms=[algorithm])
        except jwt.InvalidSignatureError:
            return verdict(INVALID_SIGNATURE)
        except jwt.DecodeError:
            return verdict(PARSE_ERROR)
        except (jwt.PyJWTError, UnsupportedAlgorithm, ValueError):
            # Algorithm not allowed (`none`, or one that does not match the key) or a key that
            # cannot be loaded: either way the signature is not verified.
            return verdict(INVALID_SIGNATURE)
    if expires_at is not None and now > expires_at + leeway:
        return verdict(EXPIRED)
    return verdict(None)


def _decode_segment(segment: str) -> Any:
    """Decode one base64url JWT segment holding JSON; ValueError when it does not."""
    if not _SEGMENT.match(segment):
        raise ValueError("not base64url")
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _verification_key(pem: str) -> tuple[Any, str]:
    """Load a PEM public key and name the one JWS algorithm it verifies; ValueError otherwise."""
    key = load_pem_public_key(pem.encode())
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        return key, _EC_ALGORITHMS[key.curve.name]
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, "EdDSA"
    raise ValueError(f"unsupported public key type {type(key).__name__}")


class LicenseMonitor(PeriodicService):
    """
    Keeps `current` up to date: judges the license at start and every `interval` seconds.

    Logs a warning when the judgement turns bad (once per change of warning, however long it
    lasts) and an info line when it recovers. The token is never logged.
    """

    log = Logger()

    def __init__(
        self,
        token: str | None,
        *,
        clock: IReactorTime,
        leeway: float,
        public_key: str | None,
        secret: str | None,
        interval: float = 60,
    ) -> None:
        super().__init__(clock=clock, interval=interval)
        self._token = token
        self._leeway = leeway
        self._public_key = public_key
        self._secret = secret
        self._bad = FailureEpisode(clock)  # from the first bad judgement to the next good one
        self.current: LicenseJudgement = self._judge()
        """The latest judgement (made at construction, then at start and on every tick)."""

    def _judge(self) -> LicenseJudgement:
        return judge_license(
            self._token,
            now=self._clock.seconds(),
            leeway=self._leeway,
            public_key=self._public_key,
            secret=self._secret,
        )

    def tick(self) -> None:
        """Re-judge, and log the change if the judgement changed."""
        self.current = judgement = self._judge()
        if judgement.ok:
            self._bad.recovered(self.log, "[license] License is valid again")
        else:
            self._bad.failed(
                self.log,
                "[license] License check failed: {license_warning}",
                key=judgement.warning,
                license_warning=judgement.warning,
                license_id=judgement.claims.get("license_id"),
            )


def license_report(
    token: str | None,
    *,
    now: float,
    leeway: float,
    public_key: str | None,
    secret: str | None,
) -> tuple[str, int]:
    """
    The text and exit status of `smoltbot license`: the claims and the judgement.

    `license_id` is printed as is, time claims as ISO 8601 UTC, the rest as JSON. Exit status 0
    when the license is ok or none is configured, 1 otherwise. The token is never printed.
    """
    if not (token or "").strip():
        return "no license configured\n", 0
    judgement = judge_license(token, now=now, leeway=leeway, public_key=public_key, secret=secret)
    lines = ["claims:" if judgement.claims else "claims: (none could be decoded)"]
    for name, value in sorted(judgement.claims.items(), key=lambda item: item[0] != "license_id"):
        lines.append(f"  {name}: {_claim_text(name, value)}")
    if public_key or secret:
        checked = "public key" if public_key else "HS256 secret"
        failed = judgement.warning in (INVALID_SIGNATURE, PARSE_ERROR)
        lines.append(f"signature: {'not verified' if failed else 'verified'} ({checked})")
    else:
        lines.append("signature: not checked (no public key or secret configured)")
    lines.append(f"status: {'ok' if judgement.ok else judgement.warning}")
    return "\n".join(lines) + "\n", 0 if judgement.ok else 1


def _claim_text(name: str, value: Any) -> str:
    """One claim as text: a printable `license_id` verbatim, times as ISO 8601, else JSON."""
    if name == "license_id" and isinstance(value, str) and value.isprintable():
        return value
    if name in _TIME_CLAIMS and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            pass
    return json.dumps(value)
