"""Tests of the on-disk spool: segments, rotation, batched replay, corrupt lines, shared folders."""

import os

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.records.spool import MAX_LINE, Spool
from tests.test_records import make_record


def segment_files(directory):
    return sorted(name for name in os.listdir(directory) if name.endswith(".jsonl"))


def drain(spool, limit=100):
    """Replay everything claimable, committing each batch; return the request ids and corrupt count."""
    ids, corrupt = [], 0
    while (batch := spool.read(limit)) is not None:
        ids += [record.request_id for record in batch.records]
        corrupt += batch.corrupt
        spool.commit(batch)
    return ids, corrupt


class SpoolTests(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.join(self.mktemp(), "spool")

    def spool(self, **kw):
        spool = Spool(self.directory, **kw)
        spool.open()
        self.addCleanup(spool.close)
        return spool

    def test_append_rotate_and_replay_in_order(self):
        """Appends rotate segments at the size bound; replay returns every record once, oldest first, and deletes each segment."""
        spool = self.spool(segment_bytes=64 * 1024)
        records = [make_record(n) for n in range(600)]
        for start in range(0, 600, 50):
            spool.append(records[start : start + 50])
        self.assertGreater(len(segment_files(self.directory)), 2)
        self.assertEqual(spool.bytes, sum(len(r.to_json()) + 1 for r in records))
        ids, corrupt = drain(spool, limit=70)
        self.assertEqual(ids, [r.request_id for r in records])
        self.assertEqual(corrupt, 0)
        self.assertEqual(segment_files(self.directory), [])
        self.assertEqual((spool.bytes, spool.segments), (0, 0))

    def test_uncommitted_batch_is_read_again(self):
        """A batch that was read but not committed (PostgreSQL failed) is read again from the same offset."""
        spool = self.spool()
        spool.append([make_record(n) for n in range(10)])
        first = spool.read(4)
        again = spool.read(4)
        self.assertEqual(first.records, again.records)
        spool.commit(again)
        self.assertEqual([r.request_id for r in spool.read(100).records], [f"req-{n:06d}" for n in range(4, 10)])

    def test_corrupt_lines_skipped_and_counted(self):
        """Garbage, an overlong line and a torn last line are skipped and counted; the good lines around them are kept."""
        os.makedirs(self.directory)
        good = [make_record(n).to_json().encode() for n in range(3)]
        content = b"\n".join([good[0], b"garbage", b"x" * (MAX_LINE * 3), good[1], b'{"unknown": 1}', good[2], b'{"request_id": "to'])
        with open(os.path.join(self.directory, "00000000000000000001-1-1.jsonl"), "wb") as f:
            f.write(content)
        spool = self.spool()
        ids, corrupt = drain(spool, limit=2)
        self.assertEqual(ids, ["req-000000", "req-000001", "req-000002"])
        self.assertEqual(corrupt, 4)
        self.assertEqual(segment_files(self.directory), [])

    def test_open_counts_what_is_left(self):
        """A new spool over a folder an earlier run left counts its bytes and segments."""
        first = Spool(self.directory)
        first.open()
        first.append([make_record(n) for n in range(5)])
        first.close()
        second = self.spool()
        self.assertEqual((second.bytes, second.segments), (first.bytes, 1))

    def test_processes_never_share_a_segment(self):
        """Two spools on one folder never take the other's open segment, and a sealed one is replayed by one of them only."""
        a, b = self.spool(), self.spool()
        a.append([make_record(1)])
        b.append([make_record(2)])
        batch = b.read(10)  # a's segment is locked by a: b seals and claims its own
        self.assertEqual([r.request_id for r in batch.records], ["req-000002"])
        b.commit(batch)
        self.assertIsNone(b.read(10))
        a.seal()
        claimed = b.read(10)
        self.assertEqual([r.request_id for r in claimed.records], ["req-000001"])
        self.assertIsNone(a.read(10))  # b holds it
        b.commit(claimed)
        self.assertEqual(segment_files(self.directory), [])

    def test_unwritable_folder(self):
        """A folder that cannot be created fails open and append with OSError and reports why."""
        blocker = self.mktemp()
        with open(blocker, "w") as f:
            f.write("a file, not a folder")
        spool = Spool(os.path.join(blocker, "spool"))
        self.assertRaises(OSError, spool.open)
        self.assertIn("Not a directory", spool.error)
        self.assertRaises(OSError, spool.append, [make_record()])
        self.assertIsNotNone(spool.error)
