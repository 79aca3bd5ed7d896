"""
Tests for smoltbot.store.kv: the in-memory store on a fake clock, the Redis store against the real
server (directly, and through a FaultProxy that refuses, hangs or cuts connections).
"""

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase

import smoltbot
from smoltbot.store.kv import MemoryKV, RedisAddress, RedisKV, make_kv, parse_redis_url
from smoltbot.metrics import Metrics
from tests.faultproxy import FaultProxy
from tests.support import REDIS_PREFIX, REDIS_URL

_REDIS = parse_redis_url(REDIS_URL)


def _count(metrics: Metrics, operation: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "gateway_cache_operations_total", {"operation": operation, "result": result}
    )
    return value or 0.0


class MemoryKVTests(SynchronousTestCase):
    """MemoryKV on a fake clock."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.metrics = Metrics("test")
        self.kv = MemoryKV(self.clock, self.metrics, max_entries=3)

    def test_put_get_delete(self) -> None:
        """A stored value reads back until it is deleted, then reads as None."""
        self.kv.put("a", "1")
        self.assertEqual(self.successResultOf(self.kv.get("a")), "1")
        self.kv.delete("a")
        self.assertIsNone(self.successResultOf(self.kv.get("a")))
        self.assertEqual(self.kv.mode, "memory")

    def test_ttl_expires_lazily(self) -> None:
        """A value put with a ttl reads back until ttl seconds have passed, then is gone."""
        self.kv.put("a", "1", ttl=10)
        self.clock.advance(9.9)
        self.assertEqual(self.successResultOf(self.kv.get("a")), "1")
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(self.kv.get("a")))
        self.assertNotIn("a", self.kv._entries)

    def test_absolute_expiration(self) -> None:
        """An absolute expiration holds until that unix time, and one in the past still lasts one second."""
        now = self.clock.seconds()
        self.kv.put("a", "1", expiration=now + 5)
        self.kv.put("b", "2", expiration=now - 100)
        self.clock.advance(0.9)
        self.assertEqual(self.successResultOf(self.kv.get("b")), "2")
        self.clock.advance(0.1)
        self.assertIsNone(self.successResultOf(self.kv.get("b")))
        self.assertEqual(self.successResultOf(self.kv.get("a")), "1")
        self.clock.advance(4)
        self.assertIsNone(self.successResultOf(self.kv.get("a")))

    def test_bad_ttl_arguments(self) -> None:
        """A non-positive ttl, or a ttl together with an expiration, is a programming error."""
        self.assertRaises(ValueError, self.kv.put, "a", "1", ttl=0)
        self.assertRaises(ValueError, self.kv.put, "a", "1", ttl=5, expiration=self.clock.seconds() + 5)

    def test_list_prefix_limit_and_expiry(self) -> None:
        """list returns live keys under the prefix, at most limit of them, dropping expired ones."""
        self.kv.put("q:1", "x", ttl=5)
        self.kv.put("q:2", "x")
        self.kv.put("other", "x")
        self.assertEqual(self.successResultOf(self.kv.list("q:")), ["q:1", "q:2"])
        self.assertEqual(len(self.successResultOf(self.kv.list("q:", limit=1))), 1)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(self.kv.list("q:")), ["q:2"])
        self.assertNotIn("q:1", self.kv._entries)

    def test_bounded_evicts_oldest_written(self) -> None:
        """Past max_entries the least recently written key is evicted."""
        for key in ("a", "b", "c"):
            self.kv.put(key, key)
        self.kv.put("a", "again")
        self.kv.put("d", "d")
        self.assertEqual(self.successResultOf(self.kv.list("")), ["c", "a", "d"])

    def test_get_json(self) -> None:
        """get_json decodes JSON and turns absent keys and invalid JSON into None."""
        self.kv.put("j", '{"a": [1]}')
        self.kv.put("bad", "{not json")
        self.assertEqual(self.successResultOf(self.kv.get_json("j")), {"a": [1]})
        self.assertIsNone(self.successResultOf(self.kv.get_json("bad")))
        self.assertIsNone(self.successResultOf(self.kv.get_json("absent")))

    def test_ping_and_metrics(self) -> None:
        """ping answers 0 ms and every operation is counted with its result."""
        self.assertEqual(self.successResultOf(self.kv.ping()), 0.0)
        self.kv.put("a", "1")
        self.kv.get("a")
        self.kv.get("b")
        self.kv.delete("a")
        self.kv.list("")
        for operation, result in [("put", "ok"), ("get", "hit"), ("get", "miss"), ("delete", "ok"), ("list", "ok")]:
            self.assertEqual(_count(self.metrics, operation, result), 1, (operation, result))


class ParseRedisUrlTests(SynchronousTestCase):
    """parse_redis_url and make_kv."""

    def test_urls(self) -> None:
        """Host, port, database, credentials and TLS come from the URL, with Redis's defaults."""
        cases = {
            "redis://localhost": RedisAddress("localhost"),
            "redis://:p%40ss@db.example:6380/2": RedisAddress("db.example", 6380, 2, None, "p@ss"),
            "redis://app:pw@10.0.0.1/": RedisAddress("10.0.0.1", 6379, 0, "app", "pw"),
            "rediss://cache.example:6390/0": RedisAddress("cache.example", 6390, 0, tls=True),
        }
        for url, expected in cases.items():
            self.assertEqual(parse_redis_url(url), expected, url)

    def test_invalid_urls(self) -> None:
        """Other schemes, a missing host, or a non-numeric port or database are errors."""
        for url in ("http://localhost", "localhost:6379", "redis://", "redis://h:port/0", "redis://h/one"):
            self.assertRaises(ValueError, parse_redis_url, url)

    def test_password_never_shown(self) -> None:
        """Neither the address's str (used in logs) nor its repr shows the password."""
        address = parse_redis_url("rediss://user:hunter2@h:1/3")
        self.assertEqual(str(address), "rediss://h:1/3")
        self.assertNotIn("hunter2", repr(address))

    def test_make_kv(self) -> None:
        """make_kv gives a MemoryKV without a URL (None or empty) and an unstarted RedisKV with one."""
        metrics = Metrics("test")
        self.assertEqual(make_kv(None, reactor=Clock(), metrics=metrics).mode, "memory")
        self.assertEqual(make_kv("", reactor=Clock(), metrics=metrics).mode, "memory")
        kv = make_kv("redis://h/1", reactor=Clock(), metrics=metrics, prefix="p:")
        assert isinstance(kv, RedisKV)
        self.assertEqual((kv.mode, kv.address.db, kv.running), ("redis", 1, 0))
        self.assertRaises(ValueError, make_kv, "memcached://h", reactor=Clock(), metrics=metrics)


class ImportTests(TestCase):
    """Importing the module."""

    async def test_no_reactor_installed(self) -> None:
        """Importing smoltbot.store.kv imports neither txredisapi nor the global reactor."""
        code = "import sys, smoltbot.store.kv; print(sorted({'txredisapi', 'twisted.internet.reactor'} & set(sys.modules)))"
        root = os.path.dirname(os.path.dirname(smoltbot.__file__))
        out, err, status = await getProcessOutputAndValue(sys.executable, ["-c", code], env={}, path=root)
        self.assertEqual((out, status), (b"[]\n", 0), err)


class RedisKVTests(TestCase):
    """RedisKV against the real Redis server."""

    def setUp(self) -> None:
        self.prefix = f"{REDIS_PREFIX}{self._testMethodName}:"
        self.metrics = Metrics("test")

    def _store(self, url: str = REDIS_URL, op_timeout: float = 0.2, events: list | None = None) -> RedisKV:
        """A started RedisKV under this test's prefix, stopped at the end; its log goes to `events` if given."""
        kv = RedisKV(url, reactor=reactor, metrics=self.metrics, prefix=self.prefix, op_timeout=op_timeout)
        if events is not None:
            kv.log = Logger(observer=events.append)
        kv.startService()
        self.addCleanup(kv.stopService)
        return kv

    async def _raw(self, db: int = _REDIS.db):
        """A plain txredisapi connection that removes this test's keys when the test ends."""
        import txredisapi

        raw = await txredisapi.Connection(_REDIS.host, _REDIS.port, dbid=db, reconnect=False, convertNumbers=False)

        async def clean() -> None:
            _, keys = await raw.scan(0, self.prefix.replace("[", "\\[") + "*", 10_000)
            if keys:
                await raw.delete(keys)
            await raw.disconnect()

        self.addCleanup(lambda: Deferred.fromCoroutine(clean()))
        return raw

    async def _proxy(self, mode: str = "relay") -> tuple[FaultProxy, str]:
        proxy = FaultProxy(reactor, _REDIS.host, _REDIS.port)
        port = await proxy.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(proxy.stop()))
        proxy.mode = mode
        return proxy, f"redis://127.0.0.1:{port}/{_REDIS.db}"

    async def test_round_trip_under_prefix(self) -> None:
        """put/get/delete work, and the real Redis key is the store prefix plus the key."""
        raw = await self._raw()
        kv = self._store()
        await kv.when_connected()
        self.assertEqual(kv.mode, "redis")
        await kv.put("k", "v")
        self.assertEqual(await kv.get("k"), "v")
        self.assertEqual(await raw.get(self.prefix + "k"), "v")
        self.assertEqual(await raw.ttl(self.prefix + "k"), -1)
        await kv.delete("k")
        self.assertIsNone(await kv.get("k"))
        self.assertEqual(await raw.exists(self.prefix + "k"), 0)

    async def test_ttl_and_expiration(self) -> None:
        """A ttl sets SETEX seconds; an absolute expiration sets the time left, at least one second."""
        raw = await self._raw()
        kv = self._store()
        await kv.when_connected()
        now = reactor.seconds()
        await kv.put("ttl", "v", ttl=30)
        await kv.put("abs", "v", expiration=now + 100)
        await kv.put("past", "v", expiration=now - 100)
        self.assertEqual(await raw.ttl(self.prefix + "ttl"), 30)
        self.assertIn(await raw.ttl(self.prefix + "abs"), range(98, 101))
        self.assertEqual(await raw.ttl(self.prefix + "past"), 1)

    async def test_list(self) -> None:
        """list returns keys under the prefix without the store prefix, at most limit of them."""
        await self._raw()
        kv = self._store()
        await kv.when_connected()
        for i in range(25):
            await kv.put(f"q:{i}", "x")
        await kv.put("q*other", "x")
        await kv.put("r:1", "x")
        self.assertEqual(sorted(await kv.list("q:")), sorted(f"q:{i}" for i in range(25)))
        self.assertEqual(len(await kv.list("q:", limit=5)), 5)
        self.assertEqual(await kv.list("q*"), ["q*other"])

    async def test_get_json_and_metrics(self) -> None:
        """get_json parses JSON, invalid JSON reads as None, and each operation counts its result."""
        await self._raw()
        kv = self._store()
        await kv.when_connected()
        await kv.put("j", '{"plan": "free"}')
        await kv.put("bad", "{oops")
        self.assertEqual(await kv.get_json("j"), {"plan": "free"})
        self.assertIsNone(await kv.get_json("bad"))
        self.assertIsNone(await kv.get("absent"))
        await kv.delete("j")
        await kv.list("")
        expected = {("put", "ok"): 2, ("get", "hit"): 2, ("get", "miss"): 1, ("delete", "ok"): 1, ("list", "ok"): 1}
        for (operation, result), count in expected.items():
            self.assertEqual(_count(self.metrics, operation, result), count, (operation, result))
        self.assertGreater(await kv.ping(), 0.0)

    async def test_password_and_database(self) -> None:
        """Credentials from the URL authenticate, the URL's database is selected, and no log shows the password."""
        raw = await self._raw(db=3)
        events: list[dict] = []
        kv = self._store(f"redis://default:s3cret@{_REDIS.host}:{_REDIS.port}/3", events=events)
        await kv.when_connected()
        await kv.put("k", "v")
        self.assertEqual(await raw.get(self.prefix + "k"), "v")
        self.assertTrue(events)
        self.assertNotIn("s3cret", repr(events))

    async def test_redis_down(self) -> None:
        """With Redis refusing connections every call returns its empty value at once, counted as error, and ping fails."""
        import txredisapi

        _, url = await self._proxy("refuse")
        kv = self._store(url)
        with self.assertRaises((TimeoutError, txredisapi.ConnectionError)):
            await kv.ping(timeout=0.3)
        self.assertIsNone(self.successResultOf(kv.get("k")))
        self.assertIsNone(self.successResultOf(kv.get_json("k")))
        self.assertIsNone(self.successResultOf(kv.put("k", "v", ttl=5)))
        self.assertIsNone(self.successResultOf(kv.delete("k")))
        self.assertEqual(self.successResultOf(kv.list("")), [])
        for operation, count in [("get", 2), ("put", 1), ("delete", 1), ("list", 1)]:
            self.assertEqual(_count(self.metrics, operation, "error"), count, operation)

    async def test_redis_hung(self) -> None:
        """With Redis hung each call returns its empty value within op_timeout, counted as timeout, and ping fails."""
        _, url = await self._proxy("hang")
        kv = self._store(url, op_timeout=0.2)
        await kv.when_connected()
        for call in (lambda: kv.get("k"), lambda: kv.list("")):
            started = reactor.seconds()
            self.assertFalse(await call())
            self.assertLess(reactor.seconds() - started, 0.2 + 0.1)
        self.assertEqual(_count(self.metrics, "get", "timeout"), 1)
        self.assertEqual(_count(self.metrics, "list", "timeout"), 1)
        with self.assertRaises(TimeoutError):
            await kv.ping(timeout=0.2)

    async def test_hung_connection_replaced(self) -> None:
        """After repeated timeouts the hung connection is dropped, so a recovered Redis is reached again."""
        await self._raw()
        proxy, url = await self._proxy("hang")
        kv = self._store(url, op_timeout=0.1)
        await kv.when_connected()
        for _ in range(3):
            await kv.put("k", "v")
        self.assertEqual(_count(self.metrics, "put", "timeout"), 3)
        proxy.mode = "relay"
        await kv.when_connected()
        await kv.put("k", "v")
        self.assertEqual(await kv.get("k"), "v")

    async def test_reconnects_after_cut(self) -> None:
        """When the connection is cut, calls fail fast until the store reconnects by itself and succeeds again."""
        await self._raw()
        proxy, url = await self._proxy()
        kv = self._store(url)
        await kv.when_connected()
        await kv.put("k", "v")
        proxy.mode = "refuse"
        proxy.cut()
        self.assertIsNone(await kv.get("k"))
        self.assertIsNone(self.successResultOf(kv.get("k")))
        self.assertEqual(_count(self.metrics, "get", "error"), 2)
        proxy.mode = "relay"
        await kv.when_connected()
        self.assertEqual(await kv.get("k"), "v")
        self.assertEqual(_count(self.metrics, "get", "hit"), 1)

    async def test_failures_logged_on_state_change_only(self) -> None:
        """Many failed calls log one warning, and the first success after them logs one line with their count."""
        events: list[dict] = []
        proxy, url = await self._proxy()
        kv = self._store(url, events=events)
        await kv.when_connected()
        proxy.mode = "refuse"
        proxy.cut()
        await kv.delete("k")
        for _ in range(50):
            self.successResultOf(kv.get("k"))
        proxy.mode = "relay"
        await kv.when_connected()
        await kv.get("k")
        await kv.get("k")
        formats = [event["log_format"] for event in events]
        self.assertEqual(
            formats,
            [
                "Connected to Redis at {address}",
                "Lost the Redis connection to {address}; reconnecting",
                formats[2],
                "Connected to Redis at {address}",
                "Redis calls succeed again after {failures} failed",
            ],
        )
        self.assertTrue(formats[2].startswith("Redis {operation} failed"))
        self.assertEqual((events[2]["operation"], events[-1]["failures"]), ("delete", 51))

    async def test_tls(self) -> None:
        """rediss:// speaks TLS, so a plaintext server is never taken for a working connection."""
        _, url = await self._proxy()
        kv = self._store(url.replace("redis://", "rediss://"))
        with self.assertRaises(TimeoutError):
            await kv.ping(timeout=0.5)
        self.assertIsNone(await kv.get("k"))
