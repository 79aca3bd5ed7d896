"""Tests of smoltbot.util.errors: one-line reasons that never carry a secret."""

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web._newclient import ResponseNeverReceived

from smoltbot.util.errors import MAX_REASON, describe, redact, unwrap


class DescribeTests(SynchronousTestCase):
    def test_first_line_or_class_name(self):
        """A reason is the message's first non-blank line, or the class name of an error without a message."""
        self.assertEqual(describe(ValueError("\n  bad value  \nDETAIL: more\n")), "bad value")
        self.assertEqual(describe(TimeoutError()), "TimeoutError")
        self.assertEqual(describe(Failure(KeyError("k"))), "'k'")

    def test_typed(self):
        """With typed, the class name leads, once: network errors say what kind they are."""
        self.assertEqual(describe(TimeoutError("no response within 10 s"), typed=True), "TimeoutError: no response within 10 s")
        self.assertEqual(describe(TimeoutError(), typed=True), "TimeoutError")

    def test_file_errors_name_the_file(self):
        """An OSError about a file reads `<reason>: <path>`, without errno noise."""
        error = NotADirectoryError(20, "Not a directory", "/var/lib/smoltbot/spool")
        self.assertEqual(describe(error), "Not a directory: /var/lib/smoltbot/spool")

    def test_wrapped_failures_unwrapped(self):
        """twisted.web's wrappers, which only list other failures, are described by the first of them."""
        wrapped = ResponseNeverReceived([Failure(ConnectionRefusedError("Connection refused"))])
        self.assertEqual(describe(Failure(wrapped), typed=True), "ConnectionRefusedError: Connection refused")
        self.assertIsInstance(unwrap(ResponseNeverReceived([Failure(CancelledError())])), CancelledError)

    def test_secrets_masked(self):
        """The caller's secrets are masked, longest first, and so is any URL's password, secrets given or not."""
        error = ValueError("auth failed for key sk-abc123 (prefix sk-abc) at redis://u:hunter2@cache:6379/0")
        text = describe(error, ["sk-abc", "sk-abc123"])
        self.assertEqual(text, "auth failed for key *** (prefix ***) at redis://u:***@cache:6379/0")

    def test_cut_after_masking(self):
        """A long reason is cut to MAX_REASON characters, after masking, so no part of a secret survives the cut."""
        secret = "S" * 40
        text = describe(ValueError("x" * (MAX_REASON - 20) + secret), [secret])
        self.assertLessEqual(len(text), MAX_REASON)
        self.assertNotIn("S", text)
        self.assertTrue(text.endswith("…") or text.endswith("***"))


class RedactTests(SynchronousTestCase):
    def test_redact(self):
        """redact masks every given secret (empty ones ignored) and URL passwords; other text is untouched."""
        self.assertEqual(redact("token=abc&x=abcdef", ["abc", "abcdef", ""]), "token=***&x=***")
        self.assertEqual(redact("postgresql://me:pw@db/app and http://host/path"), "postgresql://me:***@db/app and http://host/path")
        self.assertEqual(redact("nothing secret here"), "nothing secret here")
