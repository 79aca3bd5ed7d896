"""Tests for smoltbot.health.license: the judgement, the monitor and the `smoltbot license` report."""

import base64
import json
from functools import cache

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.health import license as license_module
from smoltbot.health.license import LicenseJudgement, LicenseMonitor, judge_license, license_report

NOW = 1_800_000_000.0
SECRET = "a-shared-secret-that-is-long-enough-for-hs256"
CLAIMS = {"license_id": "lic_123", "org": "Acme", "exp": NOW + 3600, "iat": NOW - 86400}


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict, claims: dict) -> str:
    return f"{_segment(json.dumps(header).encode())}.{_segment(json.dumps(claims).encode())}.c2ln"


@cache
def _key_pair(kind: str) -> tuple[str, object]:
    """A (PEM public key, private key) pair made at test time; RSA is slow, so keep each one."""
    private = {
        "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
    }[kind]()
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem.decode(), private


def _signed(kind: str) -> str:
    algorithm = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}[kind]
    return jwt.encode(CLAIMS, _key_pair(kind)[1], algorithm=algorithm)


class JudgeLicenseTests(SynchronousTestCase):
    """`judge_license` maps a token, a moment and the configured key to a judgement."""

    def test_no_token(self) -> None:
        """A missing or empty license is fine and carries no warning."""
        for token in (None, "", "  "):
            self.assertEqual(judge_license(token, now=NOW), LicenseJudgement(ok=True))

    def test_malformed(self) -> None:
        """Two segments, bad base64, a non-JSON or non-object payload, or a string exp are parse errors."""
        good = _segment(json.dumps({"alg": "HS256"}).encode())
        for token in (
            f"{good}.{_segment(b'{}')}",
            f"{good}.!!!not-base64!!!.sig",
            f"{good}.{_segment(b'{}')[:-1]}x=.sig",
            f"{good}.{_segment(b'not json')}.sig",
            f"{good}.{_segment(b'[1, 2]')}.sig",
            _unsigned({"alg": "HS256"}, {"exp": "tomorrow"}),
        ):
            self.assertEqual(
                judge_license(token, now=NOW), LicenseJudgement(ok=False, warning="license_parse_error"), token
            )

    def test_unverified_claims(self) -> None:
        """Without a key or secret the payload is decoded unverified, for information."""
        judgement = judge_license(_unsigned({"alg": "RS256"}, CLAIMS), now=NOW)
        self.assertEqual(judgement, LicenseJudgement(ok=True, claims=CLAIMS, expires_at=NOW + 3600))

    def test_expiry_and_leeway(self) -> None:
        """An `exp` passed by more than the leeway is expired; within the leeway it is still ok."""
        token = _unsigned({"alg": "HS256"}, {"license_id": "lic_1", "exp": NOW - 30})
        self.assertTrue(judge_license(token, now=NOW, leeway=60).ok)
        expired = judge_license(token, now=NOW, leeway=10)
        self.assertEqual((expired.ok, expired.warning, expired.expires_at), (False, "license_expired", NOW - 30))

    def test_hs256(self) -> None:
        """An HS256 license verifies with the right secret and is rejected with a wrong one."""
        token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
        self.assertEqual(judge_license(token, now=NOW, secret=SECRET).warning, None)
        wrong = judge_license(token, now=NOW, secret=SECRET + "-other")
        self.assertEqual((wrong.ok, wrong.warning, wrong.claims), (False, "license_invalid_signature", CLAIMS))

    def test_rs256(self) -> None:
        """An RS256 license verifies with its PEM public key and is rejected with another one."""
        token = _signed("rsa")
        self.assertTrue(judge_license(token, now=NOW, public_key=_key_pair("rsa")[0]).ok)
        other_pem = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        self.assertEqual(judge_license(token, now=NOW, public_key=other_pem).warning, "license_invalid_signature")

    def test_algorithm_follows_key_type(self) -> None:
        """EC keys verify ES256 and Ed25519 keys verify EdDSA; a token in another algorithm is rejected."""
        for kind in ("ec", "ed25519"):
            self.assertTrue(judge_license(_signed(kind), now=NOW, public_key=_key_pair(kind)[0]).ok, kind)
        hs_token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
        self.assertEqual(
            judge_license(hs_token, now=NOW, public_key=_key_pair("rsa")[0]).warning, "license_invalid_signature"
        )

    def test_none_algorithm_rejected(self) -> None:
        """An unsigned (`alg: none`) license is rejected whenever a key or secret is configured."""
        token = _unsigned({"alg": "none", "typ": "JWT"}, CLAIMS).rsplit(".", 1)[0] + "."
        self.assertTrue(judge_license(token, now=NOW).ok)
        for key in ({"secret": SECRET}, {"public_key": _key_pair("rsa")[0]}):
            self.assertEqual(judge_license(token, now=NOW, **key).warning, "license_invalid_signature", key)

    def test_unusable_public_key(self) -> None:
        """A public key that is not a usable PEM key verifies nothing."""
        judgement = judge_license(_signed("rsa"), now=NOW, public_key="not a pem key")
        self.assertEqual(judgement.warning, "license_invalid_signature")

    def test_bad_signature_outranks_expiry(self) -> None:
        """A license that is both expired and badly signed is reported as badly signed."""
        token = jwt.encode({**CLAIMS, "exp": NOW - 7200}, SECRET, algorithm="HS256")
        self.assertEqual(judge_license(token, now=NOW, secret="wrong-" + SECRET).warning, "license_invalid_signature")
        self.assertEqual(judge_license(token, now=NOW, secret=SECRET).warning, "license_expired")

    def test_token_not_in_judgement(self) -> None:
        """The token appears nowhere in a judgement's repr, whatever the verdict."""
        token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
        for secret in (None, SECRET, "wrong-" + SECRET):
            self.assertNotIn(token, repr(judge_license(token, now=NOW, secret=secret)))


class LicenseMonitorTests(SynchronousTestCase):
    """`LicenseMonitor` keeps the judgement current on a clock and logs its changes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.events = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def _monitor(self, token: str, **options) -> LicenseMonitor:
        monitor = LicenseMonitor(
            token, clock=self.clock, leeway=60, public_key=None, secret=options.get("secret"), interval=60
        )
        monitor.startService()
        self.addCleanup(monitor.stopService)
        return monitor

    def _messages(self) -> list[str]:
        return [formatEvent(event) for event in self.events if event.get("log_namespace", "").startswith("smoltbot")]

    def test_flips_to_expired_without_restart(self) -> None:
        """Once the clock passes `exp` plus leeway, the next tick reports `license_expired`, logged once."""
        monitor = self._monitor(jwt.encode({**CLAIMS, "exp": NOW + 100}, SECRET, algorithm="HS256"), secret=SECRET)
        self.assertTrue(monitor.current.ok)
        self.clock.advance(120)
        self.assertTrue(monitor.current.ok)
        self.clock.advance(60)
        self.assertEqual(monitor.current.warning, "license_expired")
        self.clock.pump([60] * 5)
        self.assertEqual(self._messages(), ["[license] License check failed: license_expired"])

    def test_bad_at_start_and_recovery(self) -> None:
        """A license bad at start is warned about at once, and its recovery is logged as info."""
        monitor = self._monitor(_unsigned({"alg": "HS256"}, {"exp": NOW - 3600}))
        self.assertEqual(monitor.current.warning, "license_expired")
        self.patch(license_module, "judge_license", lambda token, **k: LicenseJudgement(ok=True))
        self.clock.advance(60)
        self.assertTrue(monitor.current.ok)
        self.assertEqual(
            self._messages(), ["[license] License check failed: license_expired", "[license] License is valid again"]
        )

    def test_failing_run_keeps_looping(self) -> None:
        """A tick that raises is logged and the next tick still judges."""
        monitor = self._monitor(_unsigned({"alg": "HS256"}, CLAIMS))
        real = license_module.judge_license
        self.patch(license_module, "judge_license", lambda *a, **k: 1 / 0)
        self.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.patch(license_module, "judge_license", lambda token, **k: real(token, **{**k, "now": NOW + 7200}))
        self.clock.advance(60)
        self.assertEqual(monitor.current.warning, "license_expired")

    def test_token_never_logged(self) -> None:
        """No log event carries the token, in its text or its fields."""
        token = jwt.encode({**CLAIMS, "exp": NOW + 30}, SECRET, algorithm="HS256")
        self._monitor(token, secret="wrong-" + SECRET)
        self._monitor(token, secret=SECRET)
        self.clock.advance(600)
        self.assertTrue(self.events)
        for event in self.events:
            self.assertNotIn(token, formatEvent(event) + repr(event))


class LicenseReportTests(SynchronousTestCase):
    """`license_report` is the text and exit status of `smoltbot license`."""

    def _report(self, token: str | None, **options) -> tuple[str, int]:
        return license_report(
            token, now=NOW, leeway=60, public_key=options.get("public_key"), secret=options.get("secret")
        )

    def test_no_license(self) -> None:
        """Without a license the report says so and exits 0."""
        self.assertEqual(self._report(None), ("no license configured\n", 0))

    def test_valid(self) -> None:
        """A verified license shows its id first, times as ISO 8601, other claims as JSON, and exits 0."""
        token = jwt.encode({"org": "Acme", **CLAIMS}, SECRET, algorithm="HS256")
        text, status = self._report(token, secret=SECRET)
        self.assertEqual(
            text,
            "claims:\n"
            "  license_id: lic_123\n"
            '  org: "Acme"\n'
            "  exp: 2027-01-15T09:00:00Z\n"
            "  iat: 2027-01-14T08:00:00Z\n"
            "signature: verified (HS256 secret)\n"
            "status: ok\n",
        )
        self.assertEqual(status, 0)

    def test_bad_licenses(self) -> None:
        """Expired, badly signed and unparsable licenses exit 1 with their warning, never printing the token."""
        expired = _unsigned({"alg": "RS256"}, {**CLAIMS, "exp": NOW - 3600})
        forged = _signed("rsa")
        cases = [
            (expired, {}, "signature: not checked", "status: license_expired"),
            (forged, {"secret": SECRET}, "signature: not verified (HS256 secret)", "status: license_invalid_signature"),
            ("abc.def", {}, "claims: (none could be decoded)", "status: license_parse_error"),
        ]
        for token, options, *expected in cases:
            text, status = self._report(token, **options)
            self.assertEqual(status, 1, text)
            for line in expected:
                self.assertIn(line, text)
            self.assertNotIn(token, text)
