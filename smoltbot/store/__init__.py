"""
PostgreSQL and the KV store: `pool` (the non-blocking connection pool), `kv` (Redis or memory),
`migrate` (the migration runner).
"""
