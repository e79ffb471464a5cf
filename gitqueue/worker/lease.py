"""The lease watch of one run: heartbeats, looks for a cancel, and :class:`TakenAway`.

A :class:`Watch` keeps one run's lease alive by pushing heartbeats to the run's own ref
(``refs/gitqueue/leases/<token>``, never the queue branch) and, between them, fetches the queue
to see that the run still holds its task. It calls the :class:`~gitqueue.queue.Queue`'s public
methods and the store's ``heartbeat``; what it needs of the worker (its signals, whether it holds
a batch, how to give that batch back) it is given as arguments. :class:`BackgroundWatch` beats
for a runner that works in the worker's own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from gitqueue.errors import GitqueueError, TaskNotFound
from gitqueue.pacing import lease_trailers
from gitqueue.queue import Queue, Run
from gitqueue.task import State, Task, now_iso
from gitqueue.worker.signals import Signals, Stop


class TakenAway(GitqueueError):
    """The run's task was cancelled, requeued or reaped while it ran."""


class Watch:
    """Keeps one run's lease alive and tells the runner when to stop.

    ``check()`` is cheap between heartbeats; at each heartbeat it pushes the run's lease
    ref and fetches the queue to see that the run still holds its task. ``batched()`` says
    whether the worker holds more claims; ``give_back()`` reports what ended and returns
    the claims not started.
    """

    def __init__(
        self,
        queue: Queue,
        run: Run,
        *,
        every: float,
        look_every: float,
        signals: Signals,
        batched: Callable[[], bool],
        give_back: Callable[[], None],
        slots: int = 1,
    ) -> None:
        self.queue = queue
        self.slots = slots
        self.run = run
        self.every = every
        self.look_every = min(every, look_every)
        self.signals = signals
        self._batched = batched
        self._give_back = give_back
        now = time.monotonic()
        self.next_beat = now + every
        self.next_look = now + self.look_every
        self.heartbeat: str | None = None

    def check(self) -> None:
        """Raise Stop or TakenAway when the run must end; beat or look when it is time."""
        if self.signals.received is not None:
            raise Stop()
        now = time.monotonic()
        if now >= self.next_beat:
            self.next_beat, self.next_look = now + self.every, now + self.look_every
            self.beat()
        elif now >= self.next_look:
            self.next_look = now + self.look_every
            self.look()

    def beat(self) -> None:
        """Make sure the run still holds its task, then push a heartbeat.

        In that order, so that a run which lost its task never re-creates the lease ref
        that the cancel, requeue or reap deleted. A run this long was no short task: runs
        held in its batch go back to the queue for idle workers, and runs that ended are
        reported now rather than after this one.
        """
        self._give_back()
        self.look()
        self.push_heartbeat()

    def look(self) -> None:
        """TakenAway if the run no longer holds its task (cancelled, requeued, reaped).

        A fetch, no push: cheap enough to do every few seconds between heartbeats, so that
        a cancel stops the run within seconds, not a heartbeat interval.
        """
        try:
            task = self.queue.get(self.run.id)
        except TaskNotFound:
            raise TakenAway("its task file is gone from the queue") from None
        except GitqueueError:
            return  # the remote is away: keep running and beating, the next look tries again
        why = why_taken(task, self.run)
        if why is not None:
            raise TakenAway(why)

    def settle(self, started: float) -> None:
        """At the end of a run, look once more, so that a cancel which landed since the last
        look is told as such, not as done. Not for the short runs of a batch (more claims in
        hand): a fetch each would cost them more than the cancel of one short run is worth."""
        if not self._batched() or time.monotonic() - started >= self.look_every:
            self.look()

    def push_heartbeat(self) -> None:
        """Keep the lease alive; safe from a second thread (writes objects, runs git push)."""
        queue, run = self.queue, self.run
        when = queue.clock()  # the clock every record of this queue is written by
        message = heartbeat_message(run, worker=queue.worker, when=when, slots=self.slots)
        pushed = queue.store.heartbeat(
            run.token, parent=self.heartbeat, message=message, author=queue.identity, when=when
        )
        if pushed is not None:
            self.heartbeat = pushed


class RunCheck:
    """What a run of many slots calls often from its own thread (its ``check``): Stop on a
    signal, TakenAway when ``taken()`` says why the loop saw its task taken away. It never
    speaks to git: the worker's loop looks and beats for all its runs at once."""

    def __init__(self, signals: Signals, *, taken: Callable[[], str | None]) -> None:
        self.signals, self._taken = signals, taken

    def check(self) -> None:
        if self.signals.received is not None:
            raise Stop()
        why = self._taken()
        if why is not None:
            raise TakenAway(why)


def why_taken(task: Task | None, run: Run) -> str | None:
    """Why ``run`` no longer holds its task (``task`` as the queue has it now, None if its file
    is gone): cancelled, requeued, reaped; None while the run still holds it."""
    if task is None:
        return "its task file is gone from the queue"
    if task.state is State.CANCELLED:
        return "cancelled"
    if task.state is State.RUNNING and task.token != run.token:
        holder = (task.run or {}).get("worker")
        return f"its task is held by another run now (of {holder}), no longer by this one"
    if task.state is not State.RUNNING:
        return f"its task is {task.state.value} now, no longer held by this run"
    return None


def heartbeat_message(run: Run, *, worker: str, when: float, slots: int) -> str:
    """A heartbeat commit's message: the run it keeps alive, when, and who beats (with its slots)."""
    trailers = f"Gitqueue-Run: {run.token}\nGitqueue-Time: {now_iso(when)}\n"
    return f"heartbeat {run.id} by {worker}\n\n{trailers}{lease_trailers(worker=worker, slots=slots)}"


class BackgroundWatch:
    """Heartbeats for a function running in this thread (it cannot be stopped from outside)."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.watch.every):
            with contextlib.suppress(GitqueueError):
                self.watch.push_heartbeat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
