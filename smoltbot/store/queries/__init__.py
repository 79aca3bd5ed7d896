"""
The SQL smoltbot runs, one module per table: `request_records`, `agents`, `schema_migrations`.

Each module holds the statements of its table and the small functions that fill in their
variable parts (row counts, optional filters). Callers run them through the pool
(`smoltbot.store.pool`); nothing here does I/O.
"""
