"""Tests of smoltbot.util.backoff: exponential delays with a hard cap, and the retry counter."""

from twisted.trial.unittest import SynchronousTestCase

from smoltbot.util.backoff import Backoff, backoff_policy


class PolicyTests(SynchronousTestCase):
    def test_doubles_up_to_the_cap(self):
        """Without jitter the delays are exact: initial, doubled per failure, then the cap for ever."""
        policy = backoff_policy(0.5, 5.0)
        self.assertEqual([policy(n) for n in range(7)], [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0])
        self.assertEqual(policy(10_000), 5.0)

    def test_cap_below_initial(self):
        """A maximum below the initial delay means no growth, never a shorter first wait."""
        self.assertEqual([backoff_policy(2.0, 1.0)(n) for n in range(3)], [2.0, 2.0, 2.0])

    def test_jitter_is_proportional_and_capped(self):
        """Jitter scales each delay within ±jitter, and the cap still holds after it."""
        draws = []

        def uniform(low, high):
            draws.append((low, high))
            return high

        policy = backoff_policy(1.0, 4.0, jitter=0.2, uniform=uniform)
        self.assertEqual([policy(n) for n in range(4)], [1.2, 2.4, 4.0, 4.0])
        self.assertEqual(set(draws), {(0.8, 1.2)})
        low = backoff_policy(1.0, 4.0, jitter=0.2, uniform=lambda low, high: low)
        self.assertEqual([low(n) for n in range(4)], [0.8, 1.6, 3.2, 4.0])

    def test_invalid(self):
        """A policy that could not back off is refused."""
        for kw in (dict(initial=0, maximum=1), dict(initial=1, maximum=2, factor=0.5), dict(initial=1, maximum=2, jitter=1)):
            self.assertRaises(ValueError, backoff_policy, **kw)


class BackoffTests(SynchronousTestCase):
    def test_counts_and_resets(self):
        """Each failure waits longer; a success starts over from the initial delay."""
        backoff = Backoff(backoff_policy(1.0, 8.0))
        self.assertEqual([backoff.failed() for _ in range(5)], [1.0, 2.0, 4.0, 8.0, 8.0])
        self.assertEqual(backoff.failures, 5)
        backoff.succeeded()
        self.assertEqual((backoff.failures, backoff.failed()), (0, 1.0))
