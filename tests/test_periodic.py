"""Tests for PeriodicService: runs at start and on schedule, survives failures, skips while pending."""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.util.periodic import PeriodicService


class _Task(PeriodicService):
    def __init__(self, clock, behaviour):
        super().__init__(clock=clock, interval=10)
        self.behaviour = behaviour
        self.runs = 0
        self.skips = 0
        self.pending = []

    def tick(self):
        self.runs += 1
        if self.behaviour == "raise":
            raise RuntimeError("tick failed")
        if self.behaviour == "pending":
            d = Deferred()
            self.pending.append(d)
            return d
        if self.behaviour == "fail":
            d = Deferred()
            d.errback(ValueError("async failure"))
            return d
        return None

    def skipped(self):
        self.skips += 1


class PeriodicServiceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()

    def test_runs_at_start_and_every_interval(self):
        """The task runs when the service starts and once per interval after."""
        task = _Task(self.clock, "ok")
        task.startService()
        self.clock.pump([10, 10, 5])
        self.assertEqual(task.runs, 3)

    def test_raising_run_does_not_stop_the_loop(self):
        """A tick that raises is logged and the next one still runs."""
        task = _Task(self.clock, "raise")
        task.startService()
        self.clock.advance(10)
        self.assertEqual(task.runs, 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    def test_failing_deferred_does_not_stop_the_loop(self):
        """A tick whose Deferred fails is logged and the loop goes on."""
        task = _Task(self.clock, "fail")
        task.startService()
        self.clock.advance(10)
        self.assertEqual(task.runs, 2)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

    def test_pending_run_makes_next_skip(self):
        """While a run is pending, due runs are skipped; once it fires, runs resume."""
        task = _Task(self.clock, "pending")
        task.startService()
        self.clock.pump([10, 10])
        self.assertEqual((task.runs, task.skips), (1, 2))
        task.pending[0].callback(None)
        self.clock.advance(10)
        self.assertEqual(task.runs, 2)

    def test_stop_cancels_pending_run_quietly(self):
        """Stopping cancels a pending run without logging an error, and no run follows."""
        task = _Task(self.clock, "pending")
        task.startService()
        task.stopService()
        self.assertTrue(task.pending[0].called)
        self.clock.advance(30)
        self.assertEqual(task.runs, 1)
        self.assertEqual(self.flushLoggedErrors(), [])
