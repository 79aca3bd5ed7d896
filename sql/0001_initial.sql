-- Initial schema: agents and one metadata record per proxied request (DESIGN §1.3, §3).
-- Applied once by `smoltbot migrate`, inside a transaction; never holds prompts, responses,
-- thinking text or keys.

-- An agent is identified by the hash of its provider key: id = 'smolt-' || agent_hash[1:8].
CREATE TABLE agents (
    id          text PRIMARY KEY CHECK (id ~ '^smolt-[0-9a-f]{8}$'),
    agent_hash  text NOT NULL UNIQUE CHECK (agent_hash ~ '^[0-9a-f]{16}$'),
    first_seen  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz
);

-- No foreign key to agents: a record must insert even when its agent row is written later.
-- `path` is the request path without its query string (which may carry `key=`).
CREATE TABLE request_records (
    request_id             text PRIMARY KEY,
    agent_id               text,
    session_id             text,
    provider               text NOT NULL,
    model                  text,
    method                 text NOT NULL,
    path                   text NOT NULL,
    status                 integer,
    streaming              boolean NOT NULL DEFAULT false,
    ttfb_ms                double precision,
    duration_ms            double precision,
    bytes_in               bigint,
    bytes_out              bigint,
    input_tokens           integer,
    output_tokens          integer,
    cache_read_tokens      integer,
    cache_creation_tokens  integer,
    reasoning_tokens       integer,
    stop_reason            text,
    tool_calls             integer,
    thinking_present       boolean,
    thinking_sha256        text,
    error_type             text,
    gateway_version        text,
    instance_id            text,
    created_at             timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX request_records_agent_created_idx ON request_records (agent_id, created_at DESC);
CREATE INDEX request_records_created_idx ON request_records (created_at DESC);
