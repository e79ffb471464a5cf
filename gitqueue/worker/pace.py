"""Batch sizing: how many claims a worker takes at once, and when it claims again.

Short tasks are claimed in batches of about ``batch_seconds`` of work, reported and claimed again
in one push; while pushes lose races to other workers, batches grow. :class:`Pace` is plain
arithmetic on what it is told (task times, lost races, what :meth:`Pace.learn` read from the
branch): only ``learn`` reads git, and only the cache. With other workers on the branch, or a
``push_budget`` in ``gitqueue.yaml``, its :class:`~gitqueue.pacing.Pacer` sizes the batches so
the fleet's pushes fit what the branch takes, spaces this worker's branch pushes (:meth:`Pace.wait`),
and gives the heartbeat period (:meth:`Pace.heartbeat_every`) and the lease to claim with
(:meth:`Pace.lease`). Alone on the branch and without a budget a worker batches exactly as it
always did.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

from gitqueue import requests
from gitqueue.errors import GitqueueError
from gitqueue.pacing import Member, Pacer, landed_rate, read_fleet
from gitqueue.queue import Queue
from gitqueue.snapshot import Snapshot
from gitqueue.task import State
from gitqueue.worker.neighbours import Neighbours
from gitqueue.worker.options import Options

HISTORY = 100  # branch commits read for the fleet and the landed rate, after a landed push
LEARN_EVERY = 2.0  # seconds: a worker pushing faster than this learns at most this often
LEAD = 2.0  # paced, claim again once the runs in hand last less than this many claims' time


class Pace:
    """The batch a worker claims next, from the moving average of its tasks' times."""

    def __init__(self, options: Options, *, slots: int = 1) -> None:
        self.options = options
        self.slots = max(1, slots)
        self.seconds_per_task: float | None = None  # moving average: sizes the next batch
        self.batch_seconds = options.batch_seconds  # grows while our pushes lose races
        self.lost_tries, self.retry_at = 0, 0.0  # one-try flushes lost in a row; next try not before
        self.batch, self.drained = 0, False  # runs in hand after the last claim; it got fewer than asked
        self.claim_seconds = 1.0  # moving average: from a claim's start until it brought runs
        self.pacer = Pacer(slots=self.slots, budget=None, lease=600)
        self.pending = 0  # tasks pending at the last look
        self.learnt = float("-inf")  # when (monotonic) the last look was
        self.started = False  # looked before the first push (see start)
        self.neighbours: Neighbours | None = None  # this machine's workers on the queue (see start)
        self._queue: Queue | None = None  # the queue it looks at before a push under a budget (see wait)
        self._say: Callable[[str], None] | None = None
        self._looked = float("-inf")  # when (monotonic) it last fetched to look (see wait)
        self._said: str | None = None  # the pacer's problem, once told
        self.slots_seen: dict[str, int] = {}  # the most slots each worker was seen to say (see learn)

    def size(self, *, ran: int, held: int = 0, free: int = 1) -> int:
        """How many claims to hold after the next push (``ran`` tasks so far, ``held`` in hand,
        ``free`` slots): about ``batch_seconds`` of work, 1 for long tasks; paced (other workers
        on the branch, or a budget): enough to keep the slots fed until the next push, within
        this worker's share by slots of what is pending."""
        limit = self.options.max_batch
        if self.options.max_tasks is not None:
            limit = min(limit, self.options.max_tasks - ran)
        seconds = self.task_seconds
        wanted = 1 if seconds is None else int(self.batch_seconds / max(seconds, 1e-3))
        wanted = max(1, min(limit, wanted))
        if not self.paced:
            return wanted
        self.pacer.observe(task_seconds=seconds)
        pending, want = max(self.pending, 1), max(0, wanted - held)
        more = self.pacer.batch(
            free=free, held=held, pending=pending, wanted=want, now=time.monotonic(), latency=self.claim_seconds
        )
        return max(1, min(limit, held + more))

    @property
    def task_seconds(self) -> float | None:
        """What a task takes: this worker's moving average, else what this machine's other
        workers on the queue have seen (None: nobody knows yet, claim one to learn)."""
        if self.seconds_per_task is not None or self.neighbours is None:
            return self.seconds_per_task
        return self.neighbours.task_seconds()

    def sizing_turn(self, queue: Queue, *, held: int) -> contextlib.AbstractContextManager[None]:
        """What to hold while the next claim is sized and pushed: for a worker's first claim,
        with other workers of this machine on the queue, its turn on the cache, waited for
        before the claim is sized, since those that had their turns meanwhile may have learnt
        what a task takes: it claims a batch at once instead of one task to learn. Else nothing:
        the claim's own try takes its turn (and, with runs ``held``, does not wait for it)."""
        if held or self.seconds_per_task is not None or not self.neighbours_here():
            return contextlib.nullcontext()
        return queue.store.turn()  # the claim's own try takes it again: its turn already

    def neighbours_here(self) -> bool:
        """Whether other workers of this machine work on the queue (they share its cache)."""
        return self.neighbours is not None and len(self.neighbours.names() - {self.neighbours.worker}) > 0

    @property
    def paced(self) -> bool:
        """Whether the pacer has a say: other workers share the branch, or there is a budget."""
        return self.pacer.interval > 0

    def due(self, *, held: int, reported: bool) -> bool:
        """Time to report and claim: nothing left in hand, or half a batch run with more to
        claim, so the next claims land while the rest of this batch still runs. Paced, not
        before this worker's turn (:meth:`wait`) while it holds runs to go on with."""
        if not held:
            return True
        if self.drained or time.monotonic() < self.retry_at:  # lost the last try: give others a moment
            return False
        low = self.paced and self.pacer.budget is None and self.runway(held) <= LEAD * self.claim_seconds
        if self.wait(time.monotonic()) > 0 and not low:  # our turn (no budget: unless the runs in hand run out)
            return False
        return low or (reported and held * 2 <= self.batch)

    def runway(self, held: int) -> float:
        """Seconds the ``held`` runs in hand keep this worker's slots busy (unknown: infinite)."""
        seconds = self.task_seconds
        return math.inf if seconds is None else held * seconds / self.slots

    def served(self, seconds: float) -> None:
        """A claim brought runs after ``seconds`` (its push, or another worker's serving our request)."""
        self.claim_seconds = 0.7 * self.claim_seconds + 0.3 * seconds

    def wait(self, now: float) -> float:
        """Seconds until this worker's next branch push may go (0: now). Under a budget, when
        its turn comes, it looks at the branch again first (not more often than every half
        turn): machines that showed up since it last looked shrink its share, and so delay it."""
        if not self.paced:
            return 0.0
        wait, queue = self.pacer.wait(now), self._queue
        stale = time.monotonic() - max(self.learnt, self._looked) >= max(LEARN_EVERY, self.pacer.interval / 2)
        if wait == 0 and stale and queue is not None and self.pacer.budget is not None:
            self._look(queue)
            wait = self.pacer.wait(now)
        return wait

    def turn(self, *, held: int) -> float:
        """Seconds to wait before a push with nothing else to do (nothing ``held``): under a
        budget, until this worker's turn. Without one a worker with nothing to run never waits."""
        if held or self.pacer.budget is None:
            return 0.0
        return self.wait(time.monotonic())

    def heartbeat_every(self, lease: float) -> float:
        """Seconds between this worker's heartbeat pushes for runs of ``lease`` seconds (what
        the lease watch beats by): a third of the lease, at most 30 s, as always; under a
        budget never more often than the budget's heartbeat share allows the whole fleet."""
        return self.pacer.heartbeat_every(self.pacer.lease_for(lease) if self.pacer.budget else lease)

    def lease(self) -> int | None:
        """The lease to claim runs with: None (the task's or the queue's) unless the budget
        cannot keep the fleet's leases that short (then the shortest it can)."""
        if self.pacer.problem is None:
            return None
        return self.pacer.lease_for(self.pacer.lease)

    def may_ask(self) -> bool:
        """Whether a lost race may push a request for work (see :mod:`gitqueue.requests`): not
        under a ``push_budget``, where every push counts and a request saves this worker none
        of its own (it still pushes its reports), so it would only take another's turn."""
        return self.pacer.budget is None

    def start(self, queue: Queue, *, say: Callable[[str], None] | None = None) -> None:
        """Before this worker's first push: note it among this machine's workers, fetch once
        (with the lease refs) and :meth:`learn`, so that the first claims already know the
        budget and the fleet seen so far. Once."""
        if self.started:
            return
        self.started, self._queue, self._say = True, queue, say
        self.neighbours = Neighbours(queue.runs_folder, queue=queue.here, worker=queue.worker)
        self.neighbours.join()
        self._look(queue)
        self.learnt = float("-inf")  # the first landed push learns again: the fleet will have shown up by then

    def _look(self, queue: Queue) -> None:
        """Fetch (with the lease refs) and :meth:`learn` from the tip fetched."""
        try:
            tip = queue.store.fetch(leases=True)
        except GitqueueError:
            tip = None
        self.learnt, self._looked = float("-inf"), time.monotonic()  # a remote away is not asked again at once
        self.learn(queue, say=self._say, tip=tip)

    def stop(self) -> None:
        """This worker stops: it is no longer among this machine's workers."""
        if self.neighbours is not None:
            self.neighbours.leave()

    def learn(self, queue: Queue, *, say: Callable[[str], None] | None = None, tip: str | None = None) -> None:
        """After a landed push (or at ``tip``): read from the cache what the branch shows (the
        fleet and its slots, the landed rate, the queue's settings and what is pending) and
        tell the pacer and the fair share; ``say`` the pacer's problem once. Never raises:
        pacing is advice."""
        tip = tip or queue.protocol.last_landed
        if tip is None or time.monotonic() - self.learnt < LEARN_EVERY:
            return
        self.learnt, now = time.monotonic(), queue.clock()
        try:
            snap = Snapshot(queue.store, queue.cache, tip)
            settings = snap.settings
            self.pending = snap.count(State.PENDING)  # no task file is read
            times = [entry.time for entry in queue.store.recent(tip, HISTORY)]
            me = Member(queue.worker, self.slots, now)
            asking = [Member(r.worker, r.ask.slots, r.at) for r in requests.read(queue.store, now=now)[0]]
            holding = {summary.worker for _, summary in snap.summaries(State.RUNNING) if summary.worker}
            # served for a request: on no commit of its own; its slots as it said them last (a request)
            asking += [Member(worker, self.slots_seen.get(worker, 1), now) for worker in holding]
            within = float(settings.lease)
            local = self.neighbours.names() if self.neighbours is not None else ()
            fleet = read_fleet(queue.store, tip, me=me, now=now, within=within, depth=HISTORY, also=asking, local=local)
        except GitqueueError:
            return
        for worker, slots in fleet.members.items():
            self.slots_seen[worker] = max(slots, self.slots_seen.get(worker, 1))
        self.pacer.budget, self.pacer.lease = settings.push_budget, settings.lease
        self.pacer.observe(fleet=fleet, branch_rate=landed_rate(times), push_seconds=queue.protocol.attempt_seconds)
        self.pacer.observe(task_seconds=self.task_seconds)
        queue.lifecycle.claims.slots, queue.lifecycle.claims.fleet = self.slots, fleet.members
        problem = self.pacer.problem
        if problem is not None and problem != self._said and say is not None:
            say(f"warning: {problem}")
        self._said = problem

    def pushed(self, now: float) -> None:
        """A report-and-claim push of this worker's landed at ``now`` (monotonic)."""
        self.pacer.pushed(now)

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
        if self.neighbours is not None:  # this machine's workers yet to claim size their first claim by it
            self.neighbours.tell(self.seconds_per_task)
