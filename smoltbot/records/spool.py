"""
The recorder's on-disk spool: request records that PostgreSQL could not take, kept in
append-only segment files until they are replayed.

A segment is a file `<creation time ns>-<pid>-<n>.jsonl` holding one `RequestRecord.to_json`
line per record; names sort oldest first. A process appends to one segment of its own at a time,
fsyncs each batch, and seals it (closes it) at a size bound, on replay, or when it stops. Several
processes may share one folder (DESIGN §4): a segment is held under an exclusive `flock` by its
writer, then by the one process replaying it, so no segment is ever read while written or
replayed twice at once; a crashed writer's lock goes with it. Replay reads a segment in batches
from a byte offset (never the whole file), skips and counts lines that are not valid records,
and deletes the file once every line has been committed.

`Spool`'s methods block (file I/O, fsync). The recorder calls them on its one worker thread only;
`bytes`, `segments` and `error` are plain attributes it may read from the reactor thread.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from typing import BinaryIO, Sequence

from smoltbot.records.row import RecordFormatError, RequestRecord
from smoltbot.util.errors import describe

SUFFIX = ".jsonl"
MAX_LINE = 64 * 1024  # a longer line is no record of ours: skipped as corrupt without holding it whole


@dataclass(frozen=True)
class ReplayBatch:
    """Records read from a claimed segment: `end` is the byte offset after them; `finished` when nothing follows."""

    segment: str
    records: list[RequestRecord]
    corrupt: int
    end: int
    finished: bool


@dataclass
class _Active:
    name: str
    fd: int
    size: int


@dataclass
class _Claim:
    name: str
    file: BinaryIO
    size: int
    offset: int = 0


class Spool:
    """The segment files in `directory` as seen by one process; see the module docstring."""

    def __init__(self, directory: str, *, segment_bytes: int = 16 * 1024 * 1024) -> None:
        self.directory = directory
        self._segment_bytes = segment_bytes
        self._active: _Active | None = None
        self._claim: _Claim | None = None
        self._opened = False
        self._serial = 0
        #: Bytes and files of segments in the folder (as of the last scan, plus appends and deletions since).
        self.bytes = 0
        self.segments = 0
        #: Why the folder cannot be written (None while it can).
        self.error: str | None = None

    def open(self) -> None:
        """Create the folder if need be, prove it writable, and count what earlier runs left; raises OSError."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            probe = os.path.join(self.directory, f".probe-{os.getpid()}")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
            os.unlink(probe)
            self._scan()
        except OSError as error:
            self.error = describe(error)
            raise
        self._opened, self.error = True, None

    def append(self, records: Sequence[RequestRecord]) -> None:
        """
        Append `records` to this process's segment and fsync it. On OSError (disk full, folder gone)
        the segment is cut back to where it was, so the batch is either wholly spooled or not at all.
        """
        data = "".join(record.to_json() + "\n" for record in records).encode("utf-8")
        try:
            if not self._opened:
                self.open()
            active = self._active or self._start_segment()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(active.fd, view) :]
                os.fsync(active.fd)
            except OSError:
                try:
                    os.ftruncate(active.fd, active.size)
                except OSError:
                    self.seal()  # a torn line may stay behind: replay skips it as corrupt
                raise
        except OSError as error:
            self.error = describe(error)
            raise
        self.error = None
        active.size += len(data)
        self.bytes += len(data)
        if active.size >= self._segment_bytes:
            self.seal()

    def seal(self) -> None:
        """Close this process's segment (releasing its lock, so it can be replayed); the next append starts another."""
        active, self._active = self._active, None
        if active is not None:
            os.close(active.fd)

    def read(self, limit: int) -> ReplayBatch | None:
        """
        Up to `limit` lines from the segment being replayed (claiming the oldest one free first,
        sealing this process's own when nothing else is), from its last committed offset; None
        when no segment can be claimed.
        """
        claim = self._claim or self._claim_oldest()
        if claim is None:
            return None
        file = claim.file
        file.seek(claim.offset)
        records: list[RequestRecord] = []
        corrupt = 0
        while len(records) + corrupt < limit:
            line = file.readline(MAX_LINE + 1)
            if not line:
                break
            if not line.endswith(b"\n") and len(line) > MAX_LINE:
                while line and not line.endswith(b"\n"):  # skip the rest of an overlong line
                    line = file.readline(MAX_LINE)
                corrupt += 1
                continue
            try:
                records.append(RequestRecord.from_json(line))
            except RecordFormatError:
                corrupt += 1
        end = file.tell()
        return ReplayBatch(claim.name, records, corrupt, end, finished=end >= os.fstat(file.fileno()).st_size)

    def commit(self, batch: ReplayBatch) -> None:
        """Mark `batch` as stored; delete its segment when it was the last of it."""
        claim = self._claim
        if claim is None or claim.name != batch.segment:
            return
        claim.offset = batch.end
        if batch.finished:
            os.unlink(os.path.join(self.directory, claim.name))
            self._release()
            self.bytes = max(0, self.bytes - claim.size)
            self.segments = max(0, self.segments - 1)

    def close(self) -> None:
        """Seal this process's segment and let go of the one being replayed (replay restarts it from the top)."""
        self.seal()
        self._release()

    # -- internals

    def _start_segment(self) -> _Active:
        self._serial += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._serial}{SUFFIX}"
        path = os.path.join(self.directory, name)
        # Created under a name replay ignores and renamed once locked: nobody can claim it empty.
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(path + ".new", path)
            _fsync_directory(self.directory)
        except OSError:
            os.close(fd)
            _unlink_quietly(path + ".new")
            raise
        self._active = _Active(name, fd, 0)
        self.segments += 1
        return self._active

    def _scan(self) -> list[str]:
        """Names of the segments in the folder, oldest first; refreshes `bytes` and `segments`."""
        names, total = [], 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                    try:
                        total += entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    names.append(entry.name)
        self.bytes, self.segments = total, len(names)
        return sorted(names)

    def _claim_oldest(self) -> _Claim | None:
        if not self._opened:
            self.open()
        own = self._active.name if self._active is not None else None
        for name in self._scan():
            if name != own and (claim := self._try_claim(name)) is not None:
                return claim
        if self._active is not None and self._active.size > 0:
            self.seal()
            return self._try_claim(own)  # type: ignore[arg-type]
        return None

    def _try_claim(self, name: str) -> _Claim | None:
        try:
            file = open(os.path.join(self.directory, name), "rb")
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            status = os.fstat(file.fileno())
        except BlockingIOError:  # being written, or replayed by another process
            file.close()
            return None
        except OSError:
            file.close()
            raise
        if status.st_nlink == 0:  # replayed and deleted by another process since we listed it
            file.close()
            return None
        self._claim = _Claim(name, file, status.st_size)
        return self._claim

    def _release(self) -> None:
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.file.close()


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
