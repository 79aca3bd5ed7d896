"""Tests of smoltbot.util.episodes: a lasting failure logged as first line, held count, reminders and recovery."""

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from smoltbot.util.episodes import FailureEpisode


class EpisodeTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.events = []
        self.log = Logger(namespace="test", observer=self.events.append)

    def lines(self):
        return [(event["log_level"], formatEvent(event)) for event in self.events]

    def test_first_failure_logged_repeats_held(self):
        """The first failure is logged with its reason; identical repeats are only counted."""
        episode = FailureEpisode(self.clock)
        self.assertTrue(episode.failed(self.log, "down: {error}", error="refused"))
        for _ in range(5):
            self.clock.advance(30)
            self.assertFalse(episode.failed(self.log, "down: {error}", error="refused"))
        self.assertEqual(self.lines(), [(LogLevel.warn, "down: refused")])
        self.assertEqual((self.events[0]["failures"], self.events[0]["suppressed"]), (1, 0))
        self.assertEqual((episode.failing, episode.failures), (True, 6))

    def test_recovery_says_how_many_and_how_long(self):
        """Recovery logs one info line with the episode's failure count and duration, and ends the episode."""
        episode = FailureEpisode(self.clock)
        episode.failed(self.log, "down")
        self.clock.advance(12.5)
        episode.failed(self.log, "down")
        self.assertTrue(episode.recovered(self.log, "back after {failures} failures", what="db"))
        self.assertEqual(self.lines()[-1], (LogLevel.info, "back after 2 failures"))
        self.assertEqual((self.events[-1]["failing_for"], self.events[-1]["what"]), (12.5, "db"))
        self.assertEqual((episode.failing, episode.failures), (False, 0))

    def test_recovery_without_episode_is_silent(self):
        """Without a failure since the last recovery, recovered logs nothing and says so."""
        episode = FailureEpisode(self.clock)
        self.assertFalse(episode.recovered(self.log, "back"))
        episode.failed(self.log, "down")
        self.assertTrue(episode.recovered(self.log))  # ended without a line
        self.assertEqual(self.lines(), [(LogLevel.warn, "down")])

    def test_next_episode_logged_at_once(self):
        """After a recovery, the next failure starts a new episode and is logged at once."""
        episode = FailureEpisode(self.clock, repeat_every=60)
        episode.failed(self.log, "down")
        episode.recovered(self.log, "back")
        self.clock.advance(1)
        self.assertTrue(episode.failed(self.log, "down"))
        self.assertEqual([text for _, text in self.lines()], ["down", "back", "down"])

    def test_reminders_carry_the_held_count(self):
        """With repeat_every, a lasting failure is logged again once that much time has passed, with how many were held."""
        episode = FailureEpisode(self.clock, level=LogLevel.error, repeat_every=60)
        for _ in range(13):
            episode.failed(self.log, "still down")
            self.clock.advance(10)
        self.assertEqual([level for level, _ in self.lines()], [LogLevel.error] * 3)
        self.assertEqual([e["suppressed"] for e in self.events], [0, 5, 5])
        self.assertEqual([e["failures"] for e in self.events], [1, 7, 13])

    def test_new_key_logged_at_once(self):
        """A failure with another key than the last logged one is logged at once, even inside the repeat interval."""
        episode = FailureEpisode(self.clock, repeat_every=60)
        episode.failed(self.log, "bad: {why}", key="expired", why="expired")
        episode.failed(self.log, "bad: {why}", key="expired", why="expired")
        episode.failed(self.log, "bad: {why}", key="forged", why="forged")
        self.assertEqual([text for _, text in self.lines()], ["bad: expired", "bad: forged"])
        self.assertEqual(self.events[1]["suppressed"], 1)
