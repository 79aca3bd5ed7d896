"""
How long to wait before trying a failing dependency again: the one backoff every retry loop of
the daemon uses (the recorder, the agent registry, the database pool's reconnects).

The growth is Twisted's `backoffPolicy` (`twisted.application.internet`). Two things are added
on top of it. The configured maximum is a hard cap, applied after the jitter: an operator who
sets a maximum delay of 5 s never waits longer. And the jitter is proportional (±`jitter` of the
delay), so that many connections failing together spread their retries instead of hitting a
recovering server in step, at every size of delay. Without jitter the delays are exact, which is
what tests on a fake clock need.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from twisted.application.internet import backoffPolicy

Policy = Callable[[int], float]
"""Seconds to wait after the failure numbered `attempt` (0 for the first one)."""


def backoff_policy(
    initial: float,
    maximum: float,
    *,
    factor: float = 2.0,
    jitter: float = 0.0,
    uniform: Callable[[float, float], float] = random.uniform,
) -> Policy:
    """
    `initial * factor ** attempt`, scaled by a random factor within `1 ± jitter`, never above
    `maximum` (nor below `initial` when `maximum` is smaller: a cap under the first delay means
    no growth). `uniform` is the random source, replaceable in tests.
    """
    if initial <= 0 or factor < 1 or not 0 <= jitter < 1:
        raise ValueError("initial must be positive, factor at least 1, jitter in [0, 1)")
    cap = max(maximum, initial)
    # Uncapped here: the cap must come after the jitter, or the jitter would push delays past it.
    grow = backoffPolicy(initialDelay=initial, maxDelay=math.inf, factor=factor, jitter=lambda: 0.0)

    def policy(attempt: int) -> float:
        delay = grow(attempt)
        if jitter:
            delay *= uniform(1 - jitter, 1 + jitter)
        return min(delay, cap)

    return policy


class Backoff:
    """
    The retry state of one thing that can fail: how many times in a row it has, and so how long
    to wait now. `failed()` counts a failure and says how long to wait before the next try;
    `succeeded()` starts over from the initial delay.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.failures = 0
        """Consecutive failures since the last success."""

    def failed(self) -> float:
        """Count one more failure; return the seconds to wait before trying again."""
        delay = self._policy(self.failures)
        self.failures += 1
        return delay

    def succeeded(self) -> None:
        """Forget the failures: the next one waits the initial delay again."""
        self.failures = 0
