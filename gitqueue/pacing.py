"""Pacing a fleet's pushes: how often a worker pushes, how much each push claims, how often
it heartbeats, so that the whole fleet fits what its queue branch takes and its ``push_budget``.

A branch takes one compare-and-swap at a time, and forges cap pushes per repository
(``push_budget: 6/min`` in ``gitqueue.yaml``). More machines never raise the pushes a branch
takes; carrying more state changes per push does. So each worker learns, from what it
fetches, the fleet it shares the branch with (:func:`fleet_of`, from the lease refs and the
branch's ``Gitqueue-Worker`` trailers) and the branch's landed pushes per second
(:func:`landed_rate`), and a :class:`Pacer` turns that into its own share of the pushes.

How a worker uses it (the clock is passed in; nothing here sleeps or speaks to git but
:func:`read_fleet`)::

    pacer = Pacer(slots=4, budget=settings.push_budget, lease=settings.lease)
    # after each fetch with leases:
    times = [entry.time for entry in store.recent(tip, 200)]
    fleet = read_fleet(store, tip, me=Member(worker, slots, now), now=now, within=lease)
    pacer.observe(fleet=fleet, branch_rate=landed_rate(times), push_seconds=cycle, task_seconds=mean_seconds)
    if pacer.wait(now) == 0:                      # else: run what is held, step again later
        count = pacer.batch(free=free, held=len(held), pending=pending, wanted=todays_batch)
        ...report ended runs and claim ``count`` in one push...
        pacer.pushed(now)
    # one heartbeat push per worker process, every pacer.heartbeat_every(shortest lease held);
    # claim with lease=pacer.lease_for(lease), and say pacer.problem (once) if it is not None.
    # One lease ref per worker process carries lease_trailers(worker=..., slots=...).

Without a budget and alone on the branch a worker is never slowed down: ``wait`` is 0 and
``batch`` is what the worker wanted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gitqueue.commits import LogEntry
from gitqueue.config import PushBudget
from gitqueue.gitstore import GitStore

SLOTS_TRAILER = "Gitqueue-Slots"  # on a worker's lease heartbeats: how many slots it runs
WORKER_TRAILER = "Gitqueue-Worker"  # on every gitqueue commit: which worker made it
ACTION_TRAILER = "Gitqueue-Action"  # what a branch commit did (claim, done, submit, ...)
RUN_TRAILER = "Gitqueue-Run"  # the run a commit is about: a heartbeat carries it and no action
WORKER_ACTIONS = frozenset({"claim", "done", "failed", "timeout", "interrupted", "released"})  # only workers do these
HEARTBEATS_PER_LEASE = 3  # a lease outlives this many heartbeat periods: two may be lost
HEARTBEAT_SHARE = 0.5  # with a budget, heartbeats may take at most this part of it
HEADROOM = 0.8  # a fleet aims at this part of what the branch has been seen to take
RATE_RUN = 10  # landed rate: the densest run of this many consecutive commits


@dataclass(frozen=True)
class Member:
    """One worker process seen on the branch: its name, its slots, when it was last seen."""

    worker: str
    slots: int
    time: float


@dataclass(frozen=True)
class Fleet:
    """The worker processes sharing a branch, and their slots (this worker included).

    ``local`` names the members that share this worker's cache (itself included: processes of one machine):
    they take turns on it (:meth:`gitqueue.cache.Cache.turn`), so they never race each
    other's pushes. They count for the branch's and the budget's shares, not as machines."""

    workers: int = 1
    slots: int = 1
    members: dict[str, int] = field(default_factory=dict, compare=False)  # worker -> its slots
    local: frozenset[str] = field(default_factory=frozenset, compare=False)

    @property
    def elsewhere(self) -> int:
        """Members on other machines (not sharing this worker's cache): the ones that race it."""
        if not self.local:  # not told which share our cache: every other one races us
            return self.workers - 1
        return sum(1 for worker in self.members if worker not in self.local)


def lease_trailers(*, worker: str, slots: int) -> str:
    """Trailer lines for the heartbeat message of the one lease ref per worker process that
    tells the fleet about it (append them to the message's trailers)."""
    return f"{WORKER_TRAILER}: {worker}\n{SLOTS_TRAILER}: {slots}\n"


def member_of(entry: LogEntry) -> Member | None:
    """The worker a commit names (slots from its ``Gitqueue-Slots`` trailer, else 1);
    None for a commit no worker made: a person's edit, or a command's (``submit``, ``cancel``:
    they name the machine's worker too, but no worker runs tasks there). Never raises on what a
    commit says."""
    worker = entry.trailer(WORKER_TRAILER)
    if not worker:
        return None
    text = entry.trailer(SLOTS_TRAILER) or ""
    actions = (entry.trailer(ACTION_TRAILER) or "").split()
    heartbeat = not actions and entry.trailer(RUN_TRAILER)
    if not (text or heartbeat or WORKER_ACTIONS.intersection(actions)):
        return None
    slots = int(text) if text.isascii() and text.isdigit() and 0 < len(text) < 6 else 0
    return Member(worker, max(1, slots), entry.time)


def fleet_of(members: Iterable[Member], *, me: Member, now: float, within: float, local: Iterable[str] = ()) -> Fleet:
    """The fleet: every worker seen less than ``within`` seconds before ``now`` (by the
    clocks that wrote the commits), each counted once with the most slots it said, plus ``me``;
    ``local``: the workers sharing this worker's cache, seen or not (see :class:`Fleet`)."""
    slots = {me.worker: me.slots}
    for member in members:
        if now - within <= member.time and member.worker != me.worker:
            slots[member.worker] = max(slots.get(member.worker, 1), member.slots)
    ours = frozenset(local) | {me.worker}
    return Fleet(workers=len(slots), slots=sum(slots.values()), members=slots, local=ours & slots.keys())


def landed_rate(times: Sequence[float], *, run: int = RATE_RUN) -> float | None:
    """Pushes per second the branch has been seen to land: the densest run of ``run``
    consecutive commits among ``times`` (commit times; git keeps whole seconds, so a run
    spans at least one). None with fewer than two commits: nothing learned yet."""
    ordered = sorted(times)
    if len(ordered) < 2:
        return None
    size = min(run, len(ordered))
    return max((size - 1) / max(ordered[i + size - 1] - ordered[i], 1.0) for i in range(len(ordered) - size + 1))


def read_fleet(
    store: GitStore,
    tip: str | None,
    *,
    me: Member,
    now: float,
    within: float,
    depth: int = 200,
    also: Iterable[Member] = (),
    local: Iterable[str] = (),
) -> Fleet:
    """:func:`fleet_of` from what the last ``fetch(leases=True)`` brought: the lease refs'
    heartbeat commits and the last ``depth`` commits of the branch up to ``tip``, with ``also``
    (e.g. the workers asking for work, who have no run yet to show) and ``local``."""
    entries = [entry for commit in store.leases().values() for entry in store.recent(commit, 1)]
    if tip is not None:
        entries += store.recent(tip, depth)
    members = [m for e in entries if (m := member_of(e)) is not None]
    return fleet_of([*members, *also], me=me, now=now, within=within, local=local)


class Pacer:
    """One worker's share of the branch's pushes, from what it has learned (:meth:`observe`).

    Branch pushes: with a budget the fleet's branch pushes get what its heartbeats leave of
    it; with workers on other machines they also stay within ``HEADROOM`` of what the branch
    takes (:attr:`branch_takes`); workers sharing this one's cache alone never pace it, as
    they take turns on the cache instead of racing. Each worker takes its part by slots, so its pushes are
    ``interval`` seconds apart, and each push claims enough to keep its slots fed until the
    next, never more than its share by slots of what is pending (under a budget, of all that is
    outstanding: see :meth:`batch`).

    Heartbeats: one push per worker process every ``heartbeat_every`` seconds, a third of the
    lease. With a budget they may take at most half of it; a lease too short for that is
    lengthened for the runs this worker claims (:meth:`lease_for`), and ``problem`` says so.
    """

    def __init__(self, *, slots: int, budget: PushBudget | None, lease: float) -> None:
        self.slots = max(1, slots)
        self.budget = budget
        self.lease = lease
        self.fleet = Fleet(1, self.slots)
        self.branch_rate: float | None = None  # the most the branch has been seen to land
        self.push_seconds: float | None = None  # one fetch-build-push cycle of this worker's
        self.task_seconds: float | None = None
        self._last_push: float | None = None
        self._pushes = 0

    def observe(
        self,
        *,
        fleet: Fleet | None = None,
        branch_rate: float | None = None,
        push_seconds: float | None = None,
        task_seconds: float | None = None,
    ) -> None:
        """What the last fetch taught: the fleet, the branch's landed rate (:func:`landed_rate`),
        how long this worker's last claim cycle took (fetch, build, push: a moving average is
        best), how long tasks take."""
        if push_seconds is not None and push_seconds > 0:
            self.push_seconds = push_seconds
        if fleet is not None:
            self.fleet = Fleet(max(1, fleet.workers), max(self.slots, fleet.slots), fleet.members, fleet.local)
        if branch_rate is not None and branch_rate > 0:
            self.branch_rate = max(self.branch_rate or 0.0, branch_rate)
        if task_seconds is not None and task_seconds > 0:
            self.task_seconds = task_seconds

    def pushed(self, now: float) -> None:
        """This worker pushed to the branch at ``now``. Its first push was sized before a task's
        time was known: the second may follow as soon as the slots need it, in place of the next
        turn (the one after is two turns after the first push), so that in any span from the
        start a machine pushes at most one more than its turns (a budget's one first push)."""
        self._pushes += 1
        if self._pushes == 2 and self._last_push is not None:  # early: it takes the next turn's place
            self._last_push = max(now, self._last_push + self.interval)
        else:
            self._last_push = now

    def wait(self, now: float) -> float:
        """Seconds until this worker may push to the branch again (0: now)."""
        if self._last_push is None or self._pushes == 1:  # see pushed: the second may go at once
            return 0.0
        return max(0.0, self._last_push + self.interval - now)

    @property
    def interval(self) -> float:
        """Seconds between this worker's branch pushes (0: as fast as it likes)."""
        rate = self.fleet_branch_rate
        return 0.0 if rate is None else self.fleet.slots / self.slots / rate

    @property
    def fleet_branch_rate(self) -> float | None:
        """Branch pushes per second the whole fleet may make (None: no limit)."""
        limits = []
        if self.budget is not None:
            limits.append(self.budget.rate - self.fleet.workers / self.heartbeat_every(self.lease_for(self.lease)))
        takes = self.branch_takes
        if takes is not None and self.fleet.elsewhere > 0:  # processes sharing our cache take turns: no race
            limits.append(HEADROOM * takes)
        return min(limits) if limits else None

    @property
    def branch_takes(self) -> float | None:
        """Pushes per second the branch can take (None: not known yet): one per claim cycle of
        ours (one compare-and-swap at a time, each a fetch and a push), or the most it has been
        seen to land if that is more. A landed rate alone is no limit: a quiet branch lands
        little, and pacing a fleet to it would keep it quiet."""
        if self.push_seconds is None:
            return None
        return max(1 / self.push_seconds, self.branch_rate or 0.0)

    def batch(
        self, *, free: int, held: int, pending: int, wanted: int, now: float | None = None, latency: float = 0.0
    ) -> int:
        """How many tasks the next push claims: what the worker ``wanted``, or more if its
        ``free`` slots and ``held`` claims would run dry before its next push; capped so that
        what it holds stays within its share by slots of ``pending`` (tasks still pending).
        Under a budget, whose turns are far apart, that cap is left to the claim's own fair
        share of all that is outstanding, read on the branch (the others' runs included): a cap
        on pending alone leaves part of it for the next turn, then part of that for the one
        after (a drain's tail of whole turns). ``now`` (monotonic): the second push, which may
        come early (see :meth:`pushed`), holds enough to last until the turn after next.
        ``latency``: seconds from a push's start until its runs are in hand (its fetch and push,
        tries lost to others): what is held must last until the next push's runs arrive, not
        only until it starts."""
        if pending <= 0:
            return 0
        need = max(wanted, free - held)  # every free slot gets a run, even before a task's time is known
        if self.interval > 0 and self.task_seconds:  # paced: hold what the slots start before the next push
            horizon = self.interval
            if self._pushes == 1 and self._last_push is not None and now is not None:
                horizon = max(horizon, self._last_push + 2 * self.interval - now)
            horizon += max(0.0, latency)
            per_slot = math.floor(horizon / self.task_seconds) + 1  # (not before a task's time is
            need = max(wanted, free + self.slots * per_slot - held)  # known: unseen workers may want them)
        if self.budget is not None:  # turns far apart: the claim's fair share of all that is outstanding caps it
            return max(0, min(need, pending))
        share = math.ceil((pending + held) * self.slots / self.fleet.slots) - held
        return max(0, min(need, pending, max(share, 1 if free > held else 0)))

    def heartbeat_every(self, lease: float) -> float:
        """Seconds between this worker's heartbeat pushes, for runs of ``lease`` seconds: as
        today's worker (a third of the lease, at most 30 s) without a budget; with one, a
        third of the lease (never more often than needed, since each heartbeat is a push)."""
        every = max(1.0, lease / HEARTBEATS_PER_LEASE)
        return every if self.budget is not None else min(30.0, every)

    def lease_for(self, lease: float) -> int:
        """The lease to claim with: ``lease``, or, with a budget whose heartbeat share cannot
        keep the fleet's leases that short, the shortest lease it can keep."""
        return max(math.ceil(lease), self.shortest_lease)

    @property
    def shortest_lease(self) -> int:
        """The shortest lease the budget can keep alive for the whole fleet (1 without one)."""
        if self.budget is None:
            return 1
        return math.ceil(HEARTBEATS_PER_LEASE * self.fleet.workers / (HEARTBEAT_SHARE * self.budget.rate))

    @property
    def problem(self) -> str | None:
        """Why this worker's leases are longer than the queue says (None: they are not)."""
        if self.budget is None or self.shortest_lease <= self.lease:
            return None
        return (
            f"push_budget {self.budget} in gitqueue.yaml is too small for {self.fleet.workers} workers' heartbeats "
            f"with a {self.lease:g}s lease: runs are claimed with a {self.shortest_lease}s lease instead "
            "(raise push_budget or defaults.lease)"
        )


__all__ = [
    "Fleet",
    "Member",
    "Pacer",
    "fleet_of",
    "landed_rate",
    "lease_trailers",
    "member_of",
    "read_fleet",
]
