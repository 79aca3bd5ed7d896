"""Tests for configuration loading: required variables, invalid values, overrides, defaults."""

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.config import ConfigError, EnvValidationError, load_config

BASE = {"DATABASE_URL": "postgresql://smoltbot:pw@db:5432/smoltbot", "ANTHROPIC_API_KEY": "sk-test"}


def env(**changes):
    values = dict(BASE)
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return values


class RequiredVariablesTests(SynchronousTestCase):
    def test_every_missing_variable_listed_in_exact_message(self):
        """With nothing set, the error lists DATABASE_URL and ANTHROPIC_API_KEY in the contract's exact words."""
        with self.assertRaises(EnvValidationError) as raised:
            load_config({})
        self.assertEqual(
            str(raised.exception),
            "Missing required environment variables:\n  DATABASE_URL\n  ANTHROPIC_API_KEY\n\n"
            "Set them in your .env or deployment configuration.",
        )
        self.assertEqual(raised.exception.missing, ["DATABASE_URL", "ANTHROPIC_API_KEY"])

    def test_empty_string_counts_as_unset(self):
        """An empty DATABASE_URL is reported missing."""
        with self.assertRaises(EnvValidationError) as raised:
            load_config(env(DATABASE_URL=""))
        self.assertEqual(raised.exception.missing, ["DATABASE_URL"])

    def test_anthropic_key_not_required_without_aip_or_with_hybrid(self):
        """ANTHROPIC_API_KEY is required only while AIP is on and no analyze URL is set."""
        self.assertFalse(load_config(env(ANTHROPIC_API_KEY=None, AIP_ENABLED="false")).aip_enabled)
        config = load_config(env(ANTHROPIC_API_KEY=None, MNEMOM_ANALYZE_URL="https://api.example/v1/analyze"))
        self.assertEqual(config.integrity.analyze_url, "https://api.example/v1/analyze")

    def test_supabase_url_alias(self):
        """SUPABASE_URL holding a PostgreSQL DSN stands in for DATABASE_URL."""
        config = load_config(env(DATABASE_URL=None, SUPABASE_URL="postgres://u@h/d"))
        self.assertEqual(config.database.url, "postgres://u@h/d")

    def test_supabase_http_url_is_not_a_dsn(self):
        """A SUPABASE_URL that is an HTTP URL does not satisfy DATABASE_URL."""
        with self.assertRaises(EnvValidationError):
            load_config(env(DATABASE_URL=None, SUPABASE_URL="https://x.supabase.co"))


class InvalidValueTests(SynchronousTestCase):
    def assertInvalid(self, name, value, fragment):
        with self.assertRaises(ConfigError) as raised:
            load_config(env(**{name: value}))
        self.assertNotIsInstance(raised.exception, EnvValidationError)
        self.assertIn(name, str(raised.exception))
        self.assertIn(fragment, str(raised.exception))
        return str(raised.exception)

    def test_port(self):
        """Non-numeric and out-of-range ports are refused, naming PORT."""
        self.assertInvalid("PORT", "http", "whole number")
        self.assertInvalid("PORT", "70000", "between 1 and 65535")
        self.assertInvalid("PORT", "0", "between 1 and 65535")

    def test_role(self):
        """An unknown SMOLTBOT_ROLE is an error, not silently `all`."""
        self.assertInvalid("SMOLTBOT_ROLE", "worker", "gateway, scheduler, all")

    def test_log_level(self):
        """An unknown LOG_LEVEL is an error."""
        self.assertInvalid("LOG_LEVEL", "verbose", "debug, info, warn, error")

    def test_redis_url_scheme(self):
        """REDIS_URL must be redis:// or rediss://, and the password is not echoed."""
        message = self.assertInvalid("REDIS_URL", "http://:hunter2@cache:6379", "redis://")
        self.assertNotIn("hunter2", message)

    def test_database_url_not_postgres(self):
        """A DATABASE_URL that is not a PostgreSQL DSN is refused without echoing it."""
        message = self.assertInvalid("DATABASE_URL", "mysql://root:s3cret@db/app", "PostgreSQL DSN")
        self.assertNotIn("s3cret", message)

    def test_libpq_keyword_dsn_accepted(self):
        """A libpq key=value DSN is a valid DATABASE_URL."""
        config = load_config(env(DATABASE_URL="host=127.0.0.1 dbname=smoltbot user=postgres"))
        self.assertEqual(config.database.url, "host=127.0.0.1 dbname=smoltbot user=postgres")

    def test_every_problem_reported_at_once(self):
        """Several invalid values are listed together."""
        with self.assertRaises(ConfigError) as raised:
            load_config(env(PORT="x", LOG_LEVEL="loud", UPSTREAM_IDLE_TIMEOUT_SECONDS="-1"))
        message = str(raised.exception)
        for name in ("PORT", "LOG_LEVEL", "UPSTREAM_IDLE_TIMEOUT_SECONDS"):
            self.assertIn(name, message)

    def test_upstream_url(self):
        """Upstream URLs must be http(s) without a query string."""
        self.assertInvalid("OPENAI_UPSTREAM_URL", "ftp://x", "http")
        self.assertInvalid("OPENAI_UPSTREAM_URL", "https://x/?key=1", "query")


class DefaultsAndOverridesTests(SynchronousTestCase):
    def test_defaults(self):
        """Defaults match DESIGN §1.1."""
        config = load_config(env(HOSTNAME="box1"))
        self.assertEqual((config.http.port, config.http.host, config.role, config.logging.level), (8787, "0.0.0.0", "all", "info"))
        self.assertTrue(config.aip_enabled)
        self.assertIsNone(config.kv.redis_url)
        self.assertEqual(config.kv.mode, "memory")
        self.assertEqual(config.heartbeat.url, "https://api.mnemom.ai/v1/deployments/heartbeat")
        self.assertEqual(config.heartbeat.deployment_id, "selfhosted-box1")
        self.assertEqual(config.proxy.upstreams["anthropic"], "https://api.anthropic.com")
        self.assertEqual(config.health.probe_interval, 5.0)

    def test_recorder_knobs(self):
        """Recorder knobs have their documented defaults, the spool lives in the state folder unless moved, and bad values are named."""
        config = load_config(env(SMOLTBOT_STATE_DIR="/srv/state"))
        self.assertEqual(config.recorder.spool_dir, "/srv/state/spool")
        self.assertEqual(
            (config.recorder.queue_size, config.recorder.batch_size, config.recorder.flush_interval), (10_000, 500, 1.0)
        )
        self.assertEqual((config.recorder.agent_last_seen_interval, config.recorder.agent_pending_max), (60.0, 10_000))
        config = load_config(env(RECORDER_SPOOL_DIR="/mnt/spool", RECORDER_BATCH_SIZE="50", RECORDER_FLUSH_INTERVAL_SECONDS="0.2"))
        self.assertEqual((config.recorder.spool_dir, config.recorder.batch_size, config.recorder.flush_interval), ("/mnt/spool", 50, 0.2))
        with self.assertRaises(ConfigError) as raised:
            load_config(env(RECORDER_QUEUE_SIZE="0", RECORDER_SPOOL_SEGMENT_BYTES="10"))
        self.assertIn("RECORDER_QUEUE_SIZE", str(raised.exception))
        self.assertIn("RECORDER_SPOOL_SEGMENT_BYTES", str(raised.exception))

    def test_empty_heartbeat_url_disables(self):
        """HEARTBEAT_URL set to the empty string disables the heartbeat."""
        self.assertIsNone(load_config(env(HEARTBEAT_URL="")).heartbeat.url)

    def test_options_override_environment(self):
        """twistd's --role, --port and --host win over the environment."""
        config = load_config(env(PORT="9000", SMOLTBOT_ROLE="gateway"), {"port": "9100", "role": "scheduler", "host": "127.0.0.1"})
        self.assertEqual((config.http.port, config.role, config.http.host), (9100, "scheduler", "127.0.0.1"))
        self.assertFalse(config.runs_gateway)

    def test_invalid_override_named_by_variable(self):
        """A bad --port is reported against PORT."""
        with self.assertRaises(ConfigError) as raised:
            load_config(env(), {"port": "abc"})
        self.assertIn("PORT", str(raised.exception))

    def test_secrets_not_in_repr(self):
        """The config's repr holds no key, DSN or license."""
        config = load_config(env(MNEMOM_LICENSE_JWT="a.b.c", REDIS_URL="redis://:pw@h:6379/0"))
        text = repr(config)
        for secret in ("sk-test", "smoltbot:pw", "a.b.c", ":pw@"):
            self.assertNotIn(secret, text)


class ListenTests(SynchronousTestCase):
    def test_default_endpoint_from_host_and_port(self):
        """Without LISTEN the listener is TCP on HOST and PORT, with the ':'s of an IPv6 address escaped."""
        self.assertEqual(load_config(env()).http.endpoint, "tcp:8787:interface=0.0.0.0:backlog=1024")
        config = load_config(env(HOST="::", PORT="9000"))
        self.assertEqual(config.http.endpoint, "tcp:9000:interface=\\:\\::backlog=1024")
        self.assertEqual(config.http.listen_variable, "PORT")

    def test_listen_wins_over_host_and_port(self):
        """LISTEN, and the --listen option over it, take any endpoint description; PORT and HOST are then unused."""
        config = load_config(env(LISTEN="unix:/run/smoltbot/http.sock", PORT="9000"))
        self.assertEqual((config.http.endpoint, config.http.listen_variable), ("unix:/run/smoltbot/http.sock", "LISTEN"))
        config = load_config(env(LISTEN="unix:/x.sock"), {"listen": "tcp:0:interface=127.0.0.1"})
        self.assertEqual(config.http.endpoint, "tcp:0:interface=127.0.0.1")

    def test_bad_endpoint_named(self):
        """An endpoint description Twisted cannot parse is a configuration error naming LISTEN."""
        for description in ("bogus:1", "tcp:http", "tcp"):
            with self.assertRaises(ConfigError) as raised:
                load_config(env(LISTEN=description))
            self.assertIn("LISTEN: must be a server endpoint such as tcp:8787", str(raised.exception))

    def test_systemd_without_socket_activation(self):
        """A systemd: endpoint without sockets passed by systemd (no LISTEN_FDS) is refused with the reason."""
        with self.assertRaises(ConfigError) as raised:
            load_config(env(LISTEN="systemd:domain=INET:index=0"))
        self.assertIn("LISTEN: names a socket systemd did not pass", str(raised.exception))

    def test_systemd_with_socket_activation(self):
        """With a socket passed by systemd, systemd:domain=INET:index=0 is accepted."""
        from twisted.internet.endpoints import _SystemdParser
        from twisted.python.systemd import ListenFDs

        self.patch(_SystemdParser, "_sddaemon", ListenFDs([3], ("smoltbot.socket",)))
        config = load_config(env(LISTEN="systemd:domain=INET:index=0"))
        self.assertEqual(config.http.endpoint, "systemd:domain=INET:index=0")


class SecretsTests(SynchronousTestCase):
    def test_no_secret_in_repr(self):
        """No section's repr holds a key, secret, license or DSN password."""
        config = load_config(
            env(
                MNEMOM_LICENSE_JWT="jwt-marker",
                MNEMOM_LICENSE_PUBLIC_KEY="pem-marker",
                MNEMOM_LICENSE_SECRET="hs-marker",
                MNEMOM_API_KEY="mnemom-marker",
                REDIS_URL="redis://:redis-marker@h:6379/0",
            )
        )
        text = repr(config)
        for secret in ("sk-test", "smoltbot:pw", "jwt-marker", "pem-marker", "hs-marker", "mnemom-marker", "redis-marker"):
            self.assertNotIn(secret, text)

    def test_one_line_pem(self):
        """A PEM public key written on one line with literal \\n gets its newlines back."""
        config = load_config(env(MNEMOM_LICENSE_PUBLIC_KEY="-----BEGIN PUBLIC KEY-----\\nAAA\\n-----END PUBLIC KEY-----"))
        self.assertEqual(config.license.public_key, "-----BEGIN PUBLIC KEY-----\nAAA\n-----END PUBLIC KEY-----")
