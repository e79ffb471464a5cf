"""The claim protocol: a change, and the compare-and-swap transaction that lands it.

Owns :class:`Change` (one commit's worth of work), :class:`Protocol` (the loop every write goes
through, its backoff and its optimistic streak), waiting for an unreachable remote and rebuilding
a damaged cache. It may call :mod:`gitqueue.gitstore` and :mod:`gitqueue.snapshot`, nothing above
them: what to change is decided by the ``build`` function a caller passes in.

The steps, numbered as README's "How the claim protocol works":

1. Fetch the queue branch into the local cache (:meth:`GitStore.fetch`; the cache checks every
   object it reads, and on damage :meth:`Protocol.rebuild` rebuilds it and the try starts afresh).
2. Choose what to change from that exact snapshot: the caller's ``build`` (for a claim,
   ``pending_in_order`` in :mod:`gitqueue.lifecycle`; parsed tasks are cached by blob id in
   :mod:`gitqueue.snapshot`).
3. Build a commit on that tip without a work tree (:meth:`Protocol.commit`: blobs, the trees on
   changed paths, the commit, with the worker and a nonce in its trailers).
4. Push it as a compare-and-swap (:meth:`GitStore.push`, never forced). Any rejection is a lost
   race: fetch again and rebuild after a jittered pause whose window doubles with each loss
   (:meth:`Protocol.backoff`). Each try holds the cache's turn (:meth:`GitStore.turn`), and right
   after our own push landed the next try builds on it without fetching (the optimistic streak).
5. A push whose outcome is unknown is settled by fetching (:meth:`GitStore.settle`); an
   unreachable remote is retried with backoff for ``patience`` seconds (:func:`wait_for_remote`).
6. A worker that lost a race to another machine asks for work on a ref of its own (``on_lost``
   of :meth:`Protocol.transact`; :mod:`gitqueue.requests`). Claims and finishes fetch those
   request refs too (``requests``), and their ``build`` claims for every live request in the
   same commit, deleting the served refs in the same atomic push (``Change.also``). A request
   may carry the reports whose push lost: the same commit records them, fenced by token.
"""

from __future__ import annotations

import functools
import random
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from gitqueue.cache import CacheBusy
from gitqueue.errors import CacheDamaged, Defer, GitqueueError, LostRace, RemoteUnavailable
from gitqueue.git import Identity, tell_retrying
from gitqueue.gitstore import GitStore, PushOutcome
from gitqueue.snapshot import Snapshot, TaskCache

FIRST_RETRY = 0.1  # seconds before asking an unreachable remote again, doubling up to 5 s
STUCK_LIMIT = 8  # lost races in a row with the branch not moving: something else is wrong
OPTIMISTIC_WINDOW = 2.0  # seconds after a push from our cache in which we build on it without fetching
OPTIMISTIC_STREAK = 4  # then pause a try's length: a rival elsewhere, fetching each try, gets its chance
PROGRESS_EVERY = 1000  # items between two reports to on_progress
HEAL_TRIES = 3  # rebuilds of a damaged cache within one operation before it gives up
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass
class Change:
    """One commit's worth of work: files to write (or delete, with None) and its message.

    ``also`` are refspecs pushed atomically with the commit. ``value`` is what the
    operation returns once the push lands. A change with no files commits nothing.
    """

    subject: str
    files: dict[str, bytes | None] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    value: Any = None
    also: list[str] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)  # subjects of the changes joined by then()

    def then(self, other: Change) -> Change:
        """Both changes in one commit (e.g. a finish and the next claim); keeps this value."""
        trailers = dict(self.trailers)
        for key, value in other.trailers.items():
            trailers[key] = f"{trailers[key]} {value}" if key in trailers else value
        parts = [p for p in (*(self.parts or [self.subject]), *(other.parts or [other.subject])) if p]
        return Change(
            subject="; ".join(parts),
            files={**self.files, **other.files},
            trailers=trailers,
            value=self.value,
            also=[*self.also, *other.also],
            parts=parts,
        )

    def message(self, trailers: Mapping[str, str]) -> str:
        """Subject, body and trailers. Many joined changes get a counting subject and are
        listed one per line in the body, so the history stays readable on a forge."""
        subject, body = self.subject, ""
        if len(self.parts) > 2:
            verbs = Counter(part.split(" ", 1)[0] for part in self.parts)
            subject = ", ".join(f"{verb} {n}" for verb, n in verbs.items()) + f" tasks by {trailers['Gitqueue-Worker']}"
            served = trailers.get("Gitqueue-Served", "").split()
            if served:  # claims made for workers that asked (see gitqueue.requests)
                given = sum(1 for part in self.parts if part.startswith("claim ") and " for " in part)
                subject += f" ({given} for {len(set(served))} other worker{'s' * (len(set(served)) != 1)})"
            body = "\n".join(self.parts) + "\n\n"
        return subject + "\n\n" + body + "".join(f"{k}: {v}\n" for k, v in trailers.items())


def wait_for_remote(
    exc: RemoteUnavailable,
    deadline: float,
    delay: float,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    patience: float,
) -> float:
    """Sleep about ``delay`` before asking an unreachable remote again (raise ``exc`` if
    that would pass ``deadline``); returns the next, longer delay."""
    if clock() + delay > deadline:
        raise exc
    if delay == FIRST_RETRY:
        tell_retrying(exc, patience)
    sleep(delay * random.uniform(0.5, 1.5))
    return min(delay * 2, 5.0)


def heals(method: _F) -> _F:
    """A read that meets a damaged local cache rebuilds it (see GitStore.heal) and reads again.
    For methods of an object whose ``protocol`` is a :class:`Protocol`."""

    @functools.wraps(method)
    def healing(self: Any, *args: Any, **kwargs: Any) -> Any:
        rebuilt = 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except CacheDamaged as exc:
                rebuilt = self.protocol.rebuild(exc, rebuilt)

    return cast(_F, healing)


@dataclass
class _Try:
    """What one try inside the cache's turn came to: a push and its outcome, an answer without
    a push (``finished``), a view to rebuild from a fetch (``refetch``) or an unreachable remote."""

    snap: Snapshot | None = None
    recent: str | None = None
    commit: str = ""
    outcome: PushOutcome | None = None
    value: Any = None
    finished: bool = False
    refetch: bool = False
    deferred: bool = False
    unreachable: RemoteUnavailable | None = None
    requests: bool = False  # the push was a claim's or a report's, built with the request refs


class Protocol:
    """Every write of one queue: fetch, build, commit, compare-and-swap push, back off and redo.

    Built with what it needs and nothing of the queue above it: the store and its task cache,
    the queue's name for messages (``url``, never with a secret), this worker's name, the
    clocks, the patience with an unreachable remote and where long operations report progress.
    """

    def __init__(
        self,
        store: GitStore,
        cache: TaskCache,
        *,
        url: str,
        worker: str,
        patience: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        progress: Callable[[str, int, int | None], None],
    ) -> None:
        self.store, self.cache, self.url, self.worker = store, cache, url, worker
        self.patience, self.clock, self.sleep, self.monotonic = patience, clock, sleep, monotonic
        self.progress = progress
        self.attempt_seconds = 0.03  # moving average of one try (fetch, build, push): the backoff's slot
        self.backed_off = 0.0  # seconds slept after lost races
        self.streak = 0  # our pushes in a row that landed on our own last push, unfetched
        self.last_landed: str | None = None
        # Workers started together lose their first race to our first claim and ask for work
        # after our fetch showed no request: until a fetch looks again, no try builds on our own
        # landing unfetched. None: no claim of ours landed yet; False: not looked since; True.
        self.looked_after_claim: bool | None = None
        self.contenders = 1  # workers seen holding runs at the last claim or lost race: how wide to spread
        self._identity: Identity | None = None

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self.store.identity(f"{self.worker.replace('/', '.')}@{socket.gethostname()}")
        return self._identity

    def snapshot(self, *, leases: bool = False) -> Snapshot:
        """Fetch, then view the queue at the remote's tip (retrying while it is unreachable,
        rebuilding a damaged cache)."""
        deadline = self.clock() + self.patience
        delay = FIRST_RETRY
        rebuilt = 0
        while True:
            try:
                return Snapshot(self.store, self.cache, self.store.fetch(leases=leases))
            except RemoteUnavailable as exc:
                delay = self.wait_for_remote(exc, deadline, delay)
            except CacheDamaged as exc:
                rebuilt = self.rebuild(exc, rebuilt)

    def rebuild(self, exc: CacheDamaged, heals: int) -> int:
        """Rebuild the damaged cache, unless it was rebuilt HEAL_TRIES times in this operation
        already (then the damage is not the cache's: say so). Returns the count so far."""
        if heals >= HEAL_TRIES:
            raise CacheDamaged(f"{exc} (still, after rebuilding the cache {self.store.path} {heals} times)") from exc
        self.store.heal(str(exc))
        return heals + 1

    def wait_for_remote(self, exc: RemoteUnavailable, deadline: float, delay: float) -> float:
        """See :func:`wait_for_remote`, with this queue's clocks and patience."""
        return wait_for_remote(exc, deadline, delay, clock=self.clock, sleep=self.sleep, patience=self.patience)

    def transact(
        self,
        build: Callable[[Snapshot], Change | None],
        *,
        leases: bool = False,
        patient: bool = True,
        requests: bool = False,
        on_lost: Callable[[], int] | None = None,
    ) -> Any:
        """Fetch, build, commit, compare-and-swap push; on a lost race, back off and redo.

        Each try holds the cache's turn (:meth:`GitStore.turn`): processes sharing a cache push
        one at a time. Right after a push from this cache landed, the try builds on it without
        fetching (still a compare-and-swap; anything decided from that view without a push is
        decided again from a fetched one); after OPTIMISTIC_STREAK such pushes back to back it
        pauses about one try, so rivals elsewhere (they fetch first) get a gap.

        With ``requests`` each fetch also brings the request refs (see :mod:`gitqueue.requests`),
        and a try fetches while workers ask lately and once after our first claim landed. ``on_lost``
        is called after each race lost to another machine, before backing off (a worker asks for
        work there; it returns what :meth:`_pause_after` takes as ``asked``).
        """
        lost = still = heals = 0
        last_tip: str | None = None
        fetch = leases  # lease refs come only with a fetch
        unreachable: RemoteUnavailable | None = None
        deadline, delay = float("inf"), FIRST_RETRY
        if self.streak >= OPTIMISTIC_STREAK:  # leave a rival that fetches each try a gap to land in
            self.sleep(random.uniform(0.5, 1.5) * self.attempt_seconds)
            self.streak = 0
        while True:
            if unreachable is not None:  # wait for the remote outside the turn: others may stop meanwhile
                delay, unreachable = self.wait_for_remote(unreachable, deadline, delay), None
            try:
                attempt = self._try(build, fetch=fetch, leases=leases, patient=patient, requests=requests)
            except CacheBusy:
                raise LostRace("another worker on this machine is pushing") from None
            except CacheDamaged as exc:  # rebuilt: the next try builds afresh on a fetched tip
                heals, fetch = self.rebuild(exc, heals), True
                continue
            if attempt.unreachable is not None:
                unreachable, deadline = attempt.unreachable, min(deadline, self.clock() + self.patience)
                continue
            if attempt.refetch or attempt.deferred:  # rebuild on a fetched view (deferred: after a pause)
                fetch = attempt.refetch or self._look_again(patient)
                continue
            if attempt.finished or self._landed(attempt):
                return attempt.value
            fetch = True
            assert attempt.snap is not None
            self.contenders = attempt.snap.workers()
            if attempt.recent is not None:  # another machine moved it: try again on a fetched view
                continue
            asked = on_lost() if on_lost is not None else 0
            if not patient:  # the caller has other work to do meanwhile and will try again
                raise LostRace("another writer moved the branch first")
            lost += 1
            still = still + 1 if attempt.snap.tip == last_tip else 0
            last_tip = attempt.snap.tip
            self._pause_after(lost, still, asked=asked)

    def _look_again(self, patient: bool) -> bool:
        """A build deferred to another worker's push: pause about one and a half tries before
        the next look (LostRace if not ``patient``: the caller tries again later). True: fetch."""
        if not patient:
            raise LostRace("another worker's push is due to serve our request")
        self.sleep(max(0.05, 1.5 * self.attempt_seconds) * random.uniform(0.75, 1.25))
        return True

    def _try(
        self, build: Callable[[Snapshot], Change | None], *, fetch: bool, leases: bool, patient: bool, requests: bool
    ) -> _Try:
        """One try, holding the cache's turn: view the tip (our last landing, unless ``fetch``),
        build, and commit and push what was built."""
        with self.store.turn(wait=patient):  # not patient: no waiting for the others either
            started = self.monotonic()
            # Requests for work are seen only by fetching: on a queue where workers ask, always fetch.
            asking = requests and (self.store.asked_lately() or self.looked_after_claim is False)
            recent = self.store.recent_landing(OPTIMISTIC_WINDOW) if not (fetch or asking) else None
            try:
                snap = Snapshot(self.store, self.cache, recent or self.store.fetch(leases=leases, requests=requests))
            except RemoteUnavailable as exc:
                return _Try(unreachable=exc)
            if recent is None and requests and self.looked_after_claim is False:
                self.looked_after_claim = True
            try:
                change = build(snap)
            except Defer:
                return _Try(deferred=True)
            except GitqueueError:
                if recent is None:
                    raise
                change = None
            if recent is not None and (change is None or not change.files):
                return _Try(refetch=True)
            if change is None or not change.files:
                return _Try(finished=True, value=None if change is None else change.value)
            commit = self.commit(snap, change)
            outcome = self.store.push(commit, snap.tip, also=list(dict.fromkeys(change.also)))  # each ref once
            self.attempt_seconds = 0.8 * self.attempt_seconds + 0.2 * (self.monotonic() - started)
        return _Try(snap=snap, recent=recent, commit=commit, outcome=outcome, value=change.value, requests=requests)

    def _landed(self, attempt: _Try) -> bool:
        """Whether the try's push landed (an unknown outcome learnt by fetching, outside the turn)."""
        outcome = attempt.outcome
        heals = 0
        while outcome is PushOutcome.UNKNOWN:
            try:
                outcome = self.store.settle(attempt.commit)
            except CacheDamaged as exc:  # rebuilt: settle again, by fetching into the new cache
                heals = self.rebuild(exc, heals)
        if outcome is not PushOutcome.LANDED:
            return False
        recent = attempt.recent
        self.streak = self.streak + 1 if recent is not None and recent == self.last_landed else 0
        self.last_landed = attempt.commit
        if attempt.requests and self.looked_after_claim is None:  # the next try looks (see __init__)
            self.looked_after_claim = False
        return True

    def _pause_after(self, lost: int, still: int, *, asked: int = 0) -> None:
        """Back off after ``lost`` races lost in a row; ``still`` of them with the branch not moving.
        With a request for work out (``asked``: 1 + how many live requests are older than ours),
        the oldest asker tries again within two tries (its push serves every request it sees)
        and the others a little later, about one try more per two requests before theirs (at
        most six tries): the next push of anyone may serve them, and the next fetch finds it."""
        if still >= STUCK_LIMIT:  # refused again and again, yet nobody else moved it
            raise RemoteUnavailable(
                f"{self.url} keeps refusing pushes to a branch that does not move (a stale "
                f"lock such as refs/heads/main.lock on the server?): {self.store.last_rejection}"
            )
        pause = self.backoff(lost)
        slot = max(0.01, self.attempt_seconds)
        if asked == 1:
            pause = min(pause, 2 * slot)
        elif asked > 1:
            pause = slot * random.uniform(1, min(6, 2 + (asked - 1) / 2))
        self.backed_off += pause
        self.sleep(pause)

    def backoff(self, lost: int) -> float:
        """A random pause after ``lost`` races lost in a row, in slots of one try's length.

        The window doubles with each loss, up to about two slots per worker seen holding
        runs: with N workers after the branch, tries spread over N slots land one at a time
        instead of colliding again (a fixed cap lets a crowd collapse into a retry storm).
        """
        slot = max(0.01, self.attempt_seconds)
        cap = max(0.5, 2 * slot * self.contenders)
        return random.uniform(0, min(slot * 2 ** min(lost, 8), cap))

    def commit(self, snap: Snapshot, change: Change) -> str:
        """The commit of ``change`` on ``snap``'s tip, written in-process (step 3)."""
        blobs: dict[str, str | None] = {}
        for index, (path, data) in enumerate(change.files.items()):
            if index % PROGRESS_EVERY == 0 and len(change.files) > PROGRESS_EVERY:
                self.progress("writing files", index, len(change.files))
            blobs[path] = None if data is None else self.store.write_blob(data)
        tree = self.store.edit_tree(snap.root, blobs)
        trailers = {**change.trailers, "Gitqueue-Worker": self.worker, "Gitqueue-Nonce": secrets.token_hex(8)}
        return self.store.write_commit(
            tree=tree, parent=snap.tip, message=change.message(trailers), author=self.identity
        )
