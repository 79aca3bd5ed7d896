"""
`FailureEpisode`: how the daemon logs something that keeps failing.

A dependency that is down fails on every call, every tick, every reconnect attempt. Logging each
failure floods the log and hides everything else; logging none hides the outage. An episode is
the run of failures between two successes, and it is logged as a story: the first failure with
its reason, then nothing but a count while the same failure repeats (optionally one reminder
every N seconds, carrying how many were held back), and one line when it recovers, saying how
many failures there were and for how long. A failure whose `key` differs from the last one logged
(another reason, another kind of trouble) is logged at once.

Every line carries these fields, so a JSON log line has them even where the text does not:
`failures` (failures in the episode so far), `suppressed` (failures not logged since the last
line) on failure lines; `failures` and `failing_for` (seconds) on the recovery line.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel


class FailureEpisode:
    """
    The failures of one thing, from the first to the recovery, on `clock`.

    `failed` and `recovered` take the logger to write to (the owner's `self.log`, so a test that
    replaces it sees the lines). Failure lines go out at `level`; with `repeat_every`, a failure
    that is still going on is logged again once that many seconds have passed since its last line.
    """

    def __init__(self, clock: IReactorTime, *, level: LogLevel = LogLevel.warn, repeat_every: float | None = None) -> None:
        self._clock = clock
        self._level = level
        self._repeat_every = repeat_every
        self._since: float | None = None
        self._logged_at: float | None = None
        self._logged_key: Hashable = None
        self._held = 0
        self.failures = 0
        """Failures in the episode under way (0 when there is none)."""

    @property
    def failing(self) -> bool:
        """Whether an episode is under way: a failure has happened and no recovery since."""
        return self._since is not None

    def failed(self, log: Logger, format: str, *, key: Hashable = None, **fields: Any) -> bool:
        """
        Count a failure, and log `format` with `fields` when it starts the episode, when `key`
        differs from the last logged failure's, or when the repeat interval has passed; otherwise
        hold it back. Returns whether it was logged.
        """
        now = self._clock.seconds()
        if self._since is None:
            self._since = now
        self.failures += 1
        due = (
            self._logged_at is None
            or key != self._logged_key
            or (self._repeat_every is not None and now - self._logged_at >= self._repeat_every)
        )
        if not due:
            self._held += 1
            return False
        log.emit(self._level, format, failures=self.failures, suppressed=self._held, **fields)
        self._logged_at, self._logged_key, self._held = now, key, 0
        return True

    def recovered(self, log: Logger, format: str | None = None, **fields: Any) -> bool:
        """
        End the episode under way, logging `format` (at info, with `fields`, `failures` and
        `failing_for`) if one is given. Returns False, logging nothing, when there was no episode.
        """
        if self._since is None:
            return False
        failures, failing_for = self.failures, self._clock.seconds() - self._since
        self._since = self._logged_at = self._logged_key = None
        self._held = self.failures = 0
        if format is not None:
            log.info(format, failures=failures, failing_for=round(failing_for, 3), **fields)
        return True
