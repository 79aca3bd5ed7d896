"""
How many request records a second the recorder sustains, on this machine's PostgreSQL.

    python -m bench.recorder [--records 50000] [--batch-size 500]      (from the project root)

Creates a private, migrated database (`bench.database`, dropped at the end) and measures three
paths of one Recorder with its real worker thread: live writes into PostgreSQL (records fed as
fast as the queue drains, without overflowing it), writes into the spool while PostgreSQL is
unreachable, and the replay of that spool into PostgreSQL. Prints records/second and the process CPU per record of each.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
import uuid
from typing import Any, Callable

from twisted.internet import defer, task

from bench.database import private_database
from smoltbot.store.pool import Database
from smoltbot.metrics import Metrics
from smoltbot.records.writer import Recorder, WorkerThread
from smoltbot.records.row import RequestRecord
from smoltbot.records.spool import Spool


def _records(count: int, tag: str) -> list[RequestRecord]:
    now = time.time()
    return [
        RequestRecord(
            request_id=f"{tag}-{n:08d}-{uuid.uuid4().hex[:12]}",
            agent_id=f"smolt-{n % 97:08x}",
            session_id=f"{n % 97:016x}-{int(now * 1000) // 3_600_000}",
            provider=("anthropic", "openai", "gemini")[n % 3],
            model="claude-sonnet-4-5",
            method="POST",
            path="/v1/messages",
            status=200,
            streaming=n % 2 == 0,
            ttfb_ms=312.5,
            duration_ms=4210.75,
            bytes_in=2048,
            bytes_out=16384,
            input_tokens=1200,
            output_tokens=640,
            cache_read_tokens=800,
            cache_creation_tokens=0,
            stop_reason="end_turn",
            tool_calls=1,
            thinking_present=True,
            thinking_sha256="ab" * 32,
            gateway_version="0.1.0",
            instance_id="bench-1-000000",
            created_at=now + n / 1000,
        )
        for n in range(count)
    ]


async def _until(reactor: Any, condition: Callable[[], bool]) -> None:
    while not condition():
        await task.deferLater(reactor, 0.001)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _run(reactor: Any, count: int, batch_size: int, dsn: str, spool_dir: str) -> None:
    def metric(metrics: Metrics, name: str) -> float:
        return metrics.registry.get_sample_value(name) or 0.0

    async def recorder_on(target: str) -> tuple[Recorder, Database, Metrics]:
        db = Database(target, reactor=reactor, pool_size=4, connect_timeout=1)
        db.startService()
        metrics = Metrics("bench")
        recorder = Recorder(db, Spool(spool_dir), clock=reactor, metrics=metrics, worker=WorkerThread(reactor), batch_size=batch_size)
        recorder.startService()
        return recorder, db, metrics

    def report(label: str, started: float, cpu: float) -> None:
        seconds = time.perf_counter() - started
        print(f"{label:<34} {count / seconds:>10,.0f} records/s   {(_cpu() - cpu) / count * 1e6:>6.1f} µs CPU/record   ({count} in {seconds:.2f} s)")

    # 1. Live: into PostgreSQL, fed as fast as it drains (never overflowing to the spool).
    recorder, db, metrics = await recorder_on(dsn)
    await db.when_connected()
    records = _records(count, "live")
    started, cpu = time.perf_counter(), _cpu()
    fed = 0
    while fed < count:
        if recorder.spool_backlog.queued < 4 * batch_size:
            for record in records[fed : fed + batch_size]:
                recorder.record(record)
            fed += batch_size
        await task.deferLater(reactor, 0)
    await _until(reactor, lambda: metric(metrics, "gateway_traces_written_total") >= count)
    report("live into PostgreSQL", started, cpu)
    spooled = recorder.spool_backlog.spool_bytes
    await recorder.stopService()
    await db.stopService()
    if spooled:
        print(f"  (note: {spooled} bytes overflowed to the spool)")

    # 2. PostgreSQL unreachable: everything goes to the spool.
    recorder, db, metrics = await recorder_on("postgresql://postgres@127.0.0.1:1/none")
    records = _records(count, "spool")
    started, cpu = time.perf_counter(), _cpu()
    for start in range(0, count, batch_size):
        for record in records[start : start + batch_size]:
            recorder.record(record)
        await task.deferLater(reactor, 0)
        await _until(reactor, lambda: recorder.spool_backlog.queued < 10 * batch_size)
    await _until(reactor, lambda: recorder.spool_backlog.queued == 0)
    report("into the spool (PostgreSQL down)", started, cpu)
    spool_bytes = recorder.spool_backlog.spool_bytes
    dropped = metric(metrics, "gateway_traces_dropped_total")
    await recorder.stopService()
    await db.stopService()
    print(f"  spool: {spool_bytes / count:.0f} bytes/record, {dropped:.0f} dropped")

    # 3. Replay of that spool once PostgreSQL is back.
    started, cpu = time.perf_counter(), _cpu()
    recorder, db, metrics = await recorder_on(dsn)
    await _until(reactor, lambda: metric(metrics, "gateway_traces_written_total") >= count)
    report("spool replayed into PostgreSQL", started, cpu)
    await recorder.stopService()
    await db.stopService()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=500)
    args = parser.parse_args()
    spool_dir = tempfile.mkdtemp(prefix="smoltbot-bench-spool-")
    try:
        with private_database("recorder") as dsn:
            print(f"{args.records} records, batches of {args.batch_size}, PostgreSQL at 127.0.0.1:5432, spool in {spool_dir}")
            task.react(lambda reactor: defer.ensureDeferred(_run(reactor, args.records, args.batch_size, dsn, spool_dir)))
    except SystemExit as exit:
        return int(exit.code or 0)
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
