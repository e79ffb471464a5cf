"""Batch sizing: how many claims a worker takes at once, and when it claims again.

Short tasks are claimed in batches of about ``batch_seconds`` of work, reported and claimed again
in one push; while pushes lose races to other workers, batches grow. :class:`Pace` is plain
arithmetic on what it is told (task times, lost races): it calls nothing.
"""

from __future__ import annotations

import time

from gitqueue.worker.options import Options


class Pace:
    """The batch a worker claims next, from the moving average of its tasks' times."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.seconds_per_task: float | None = None  # moving average: sizes the next batch
        self.batch_seconds = options.batch_seconds  # grows while our pushes lose races
        self.lost_tries, self.retry_at = 0, 0.0  # one-try flushes lost in a row; next try not before
        self.batch, self.drained = 0, False  # runs in hand after the last claim; it got fewer than asked

    def size(self, *, ran: int) -> int:
        """How many claims to take next (``ran`` tasks so far): about ``batch_seconds`` of work, 1 for long tasks."""
        limit = self.options.max_batch
        if self.options.max_tasks is not None:
            limit = min(limit, self.options.max_tasks - ran)
        if self.seconds_per_task is None:
            return 1
        return max(1, min(limit, int(self.batch_seconds / max(self.seconds_per_task, 1e-3))))

    def due(self, *, held: int, reported: bool) -> bool:
        """Time to report and claim: nothing left in hand, or half a batch run with more to
        claim, so the next claims land while the rest of this batch still runs."""
        if not held:
            return True
        if self.drained or time.monotonic() < self.retry_at:  # lost the last try: give others a moment
            return False
        return reported and held * 2 <= self.batch

    def adapt(self, lost_races: int) -> None:
        """Many workers on one branch: when our pushes lose races, push less often (bigger
        batches), and drift back once they land first time."""
        base = self.options.batch_seconds
        if lost_races:
            self.batch_seconds = min(base * 8, self.batch_seconds * 2)
        else:
            self.batch_seconds = max(base, self.batch_seconds * 0.8)

    def took(self, seconds: float) -> None:
        """A run took this long: it weighs in the next batch's size."""
        average = self.seconds_per_task
        self.seconds_per_task = seconds if average is None else 0.7 * average + 0.3 * seconds
