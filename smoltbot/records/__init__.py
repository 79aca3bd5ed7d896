"""
Request records, from proxied exchange to PostgreSQL: `sink` (exchange -> record), `row` (the validated
record), `writer` (batches to PostgreSQL or the spool), `spool` (the on-disk fallback), `agents` (agent rows).
"""
