"""Tests for `smoltbot.identity`: key extraction and the agent and session ids (DESIGN §1.3)."""

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.identity import agent_hash, agent_id, bearer_token, identify, provider_key, query_key, session_id


class IdTests(SynchronousTestCase):
    """The ids match the original gateway's algorithm."""

    def test_agent_hash_is_sha256_prefix(self) -> None:
        """The agent hash is the first 16 hex characters of SHA-256 of the key's UTF-8 bytes."""
        self.assertEqual(agent_hash("sk-ant-é"), hashlib.sha256("sk-ant-é".encode()).hexdigest()[:16])
        self.assertEqual(agent_hash(b"sk-1"), agent_hash("sk-1"))

    def test_agent_and_session_ids(self) -> None:
        """Agent id is smolt- and 8 hash characters; the session is the hash and the UTC hour number."""
        hash16 = agent_hash("sk-test")
        self.assertEqual(agent_id(hash16), "smolt-" + hash16[:8])
        self.assertEqual(session_id(hash16, 3600 * 472222 + 3599.999), f"{hash16}-472222")
        self.assertEqual(session_id(hash16, 3600 * 472223), f"{hash16}-472223")
        self.assertEqual(identify("sk-test", 3600 * 10), (hash16, agent_id(hash16), f"{hash16}-10"))


class KeyTests(SynchronousTestCase):
    """Where each provider's key is found."""

    def test_bearer_token(self) -> None:
        """The Bearer scheme is matched case-insensitively after any whitespace; other schemes are not keys."""
        table = {
            b"Bearer sk-1": b"sk-1",
            b"bearer  sk-1": b"sk-1",
            b"BEARER\tsk 1": b"sk 1",
            b"Basic eDp5": None,
            b"Bearer": None,
            b"Bearer ": None,
            b"Bearersk-1": None,
            b"": None,
            None: None,
        }
        for value, expected in table.items():
            self.assertEqual(bearer_token(value), expected, value)

    def test_query_key(self) -> None:
        """`key=` is read from the query, percent-decoded; other parameters are ignored."""
        self.assertEqual(query_key(b"alt=sse&key=AIza%2Bx"), b"AIza+x")
        self.assertEqual(query_key(b"apikey=x&key=&key=y"), b"y")
        self.assertIsNone(query_key(b"monkey=x"))

    def test_provider_sources(self) -> None:
        """Each provider reads its key from its own headers (and Gemini from the query)."""
        table = [
            ("anthropic", {b"x-api-key": b"a"}, b"", b"a"),
            ("anthropic", {b"authorization": b"Bearer b"}, b"", b"b"),
            ("anthropic", {b"x-api-key": b"a", b"authorization": b"Bearer b"}, b"", b"a"),
            ("anthropic", {b"x-goog-api-key": b"g"}, b"key=q", None),
            ("openai", {b"authorization": b"Bearer o"}, b"", b"o"),
            ("openai", {b"x-api-key": b"a"}, b"", None),
            ("gemini", {b"x-goog-api-key": b"g"}, b"key=q", b"g"),
            ("gemini", {}, b"alt=sse&key=q", b"q"),
            ("gemini", {b"authorization": b"Bearer b"}, b"", None),
        ]
        for provider, headers, query, expected in table:
            self.assertEqual(provider_key(provider, headers.get, query), expected, (provider, headers, query))
