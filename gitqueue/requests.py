"""Requests for work: one push that lands serves several machines.

A branch takes one compare-and-swap at a time, so a worker that needs work and lost its claim
race does not race again at once: it asks, on a ref of its own outside the branch
(``refs/gitqueue/requests/<worker>``, a push that races nobody), and whoever lands on the branch
next claims for every live request it sees, writing the runs in the requester's name, and deletes
the served request refs in the same atomic push. The requester finds those runs on the branch
(their run record names its request) and runs them like its own claims; served by nobody, it
claims for itself as before.

A request may also carry the requester's reports (how its ended runs ended, ``Gitqueue-Reports``),
when its own report push lost a race: whoever lands next records them, fenced by each run's token
like any report, so that at the end of a drain the last reports of many machines land in one push
instead of one push each. The requester sees them recorded on its next fetch.

Owns :class:`Ask` (what a worker asks for), :class:`Asker` (a worker's side: what it asked for
and has not found answered), :class:`Request` (a request as read from its ref), the request
commit's message and its reading, and what a request may be given (:meth:`Request.fits`). It
may call :mod:`gitqueue.gitstore` (through the store it is given), :mod:`gitqueue.snapshot` and
:mod:`gitqueue.task`; the claims themselves are made by :mod:`gitqueue.lifecycle`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gitqueue.git import Identity
from gitqueue.task import State, Task, now_iso, parse_time

if TYPE_CHECKING:
    from gitqueue.gitstore import GitStore
    from gitqueue.snapshot import Snapshot

REQUEST_TTL = 30.0  # seconds: an older request is ignored (its worker may be gone) and deleted
MOST_ASKED = 64  # tasks one request may ask for, whatever its trailer says
MOST_REPORTED = 256  # reports one request may carry
MOST_REPORT_BYTES = 1_000_000  # a bigger Gitqueue-Reports trailer makes the request unsound
DEFER_FOR = 2.5  # seconds an asker waits for an older asker's push to serve it too, before racing
MOST_KEPT, MOST_KEPT_BYTES = 256, 65_536  # request messages kept once read (see _message_of), and their size

_MESSAGES: dict[str, str] = {}  # request commit -> its message, as read once


@dataclass(frozen=True)
class Ask:
    """What a worker asks others to claim for it: tasks matching ``labels``, only tasks with
    their own ``cmd`` if ``own_cmd_only``, none wanting more than ``gpus`` GPUs (None: any),
    with ``lease`` seconds (None: the task's or the queue's), for a worker of ``slots`` slots."""

    labels: dict[str, str] = field(default_factory=dict)
    own_cmd_only: bool = False
    gpus: int | None = None
    lease: int | None = None
    slots: int = 1


@dataclass(frozen=True)
class Request:
    """A live request read from the remote: its ref's name and commit, who asks, for how many."""

    ref: str
    commit: str
    worker: str
    count: int  # 0: it only hands over reports
    ask: Ask
    at: float
    reports: tuple[dict[str, Any], ...] = ()  # as JSON objects; the lifecycle reads them (fenced by token)

    def fits(self, task: Task) -> bool:
        """Whether the requester may run ``task`` (labels are matched by the claim's own scan)."""
        if self.ask.own_cmd_only and task.cmd is None:
            return False
        return self.ask.gpus is None or (task.gpus or 1) <= self.ask.gpus


class Asker:
    """One worker's requests: those it pushed and has not found answered on the branch yet.

    ``identity`` gives the author of a request commit (asked only when one is pushed).
    """

    def __init__(
        self, store: GitStore, *, worker: str, clock: Callable[[], float], identity: Callable[[], Identity]
    ) -> None:
        self.store, self.worker, self.clock, self.identity = store, worker, clock, identity
        self.asked: set[str] = set()  # our request commits, not yet found answered
        self.pushed: set[str] = set()  # every request commit of ours: a server may answer any it fetched
        self.handed: set[str] = set()  # run tokens whose reports a request of ours carried
        self._last: str | None = None
        self._at = float("-inf")
        self.pushed_at = float("-inf")  # when (monotonic) our last request's push returned
        self._carried: frozenset[str] = frozenset()  # the tokens of the reports our last request carried

    @property
    def ref(self) -> str:
        return ref_name(self.worker)

    def ask(self, count: int, ask: Ask, *, reports: list[dict[str, Any]] | None = None) -> bool:
        """Push a request for ``count`` tasks (0: none) to our request ref (a push that races
        nobody), carrying ``reports`` (JSON objects, each with its run's ``token``) for whoever
        lands next to record; at most once per half REQUEST_TTL while one is out, unless the
        reports changed. True if a request is out."""
        reports = (reports or [])[:MOST_REPORTED]
        carried = frozenset(str(report.get("token")) for report in reports)
        fresh = self.clock() - self._at < REQUEST_TTL / 2
        if self.asked and fresh and carried <= self._carried:
            return True
        if count < 1 and not reports:
            return bool(self.asked)
        text = message(self.worker, max(0, count), ask, now=self.clock(), nonce=secrets.token_hex(8), reports=reports)
        commit = self.store.push_request(self.ref, message=text, author=self.identity(), parent=self._last)
        if commit is None:
            return bool(self.asked)
        self.asked.add(commit)
        self.pushed.add(commit)
        self.handed |= carried
        self._last, self._at, self._carried = commit, self.clock(), carried
        self.pushed_at = time.monotonic()
        return True

    def answers(self, snap: Snapshot) -> list[Task]:
        """The running tasks of ``snap`` that others claimed in our name for our requests (any
        we pushed: one answered already may be answered again by a server that fetched it first)."""
        if not self.pushed:
            return []
        found = []
        for task in snap.tasks(State.RUNNING):
            run = task.run or {}
            if run.get("worker") == self.worker and run.get("request") in self.pushed:
                found.append(task)
        return found

    def older(self, live: list[Request]) -> int:
        """How many of the ``live`` requests (oldest first) are older than our own latest."""
        for index, request in enumerate(live):
            if request.commit == self._last:
                return index
        return 0

    def defers(self, live: list[Request]) -> bool:
        """Whether to push nothing on a view whose live requests (oldest first) are ``live``:
        a request of ours is out, and so is an older one, whose worker races the branch now and
        whose push serves ours with it. A crowd of askers then makes one push, not one each
        (of which all but one would lose). At most DEFER_FOR seconds after our request: an
        older asker that is not racing (busy with a run, or gone) is not waited for longer."""
        return bool(self.asked) and self.clock() - self._at < DEFER_FOR and self.older(live) > 0

    def answered(self) -> None:
        """Our requests are answered (or deleted by our own claim's push): none is out."""
        self.asked.clear()
        self._carried = frozenset()

    def gone(self) -> bool:
        """Whether a fetch since our last request's push found its ref gone: whoever served it
        (or dropped it, stale) deleted it in a push that fetch's tip holds."""
        return self.store.request_gone(self.ref, since=self.pushed_at)

    def take_back(self) -> None:
        """Delete our request ref: this worker stops asking."""
        self.store.drop_request(self.ref)


def ref_name(worker: str) -> str:
    """The request ref's name for ``worker`` (a safe ref component, distinct per worker name)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", worker).strip("-")[:80] or "worker"
    return f"{safe}-{hashlib.sha1(worker.encode()).hexdigest()[:8]}"


def message(
    worker: str, count: int, ask: Ask, *, now: float, nonce: str, reports: list[dict[str, Any]] | None = None
) -> str:
    """The request commit's message: a readable subject and trailers a server reads."""
    trailers = {
        "Gitqueue-Action": "request",
        "Gitqueue-Worker": worker,
        "Gitqueue-Count": str(count),
        "Gitqueue-Labels": json.dumps(ask.labels, sort_keys=True),
        "Gitqueue-Takes": "own-cmd" if ask.own_cmd_only else "any",
        "Gitqueue-Slots": str(ask.slots),
        "Gitqueue-At": now_iso(now),
        "Gitqueue-Nonce": nonce,
    }
    if ask.gpus is not None:
        trailers["Gitqueue-Gpus"] = str(ask.gpus)
    if ask.lease is not None:
        trailers["Gitqueue-Lease"] = str(ask.lease)
    if reports:
        trailers["Gitqueue-Reports"] = json.dumps(reports, sort_keys=True, separators=(",", ":"), default=str)
    subject = f"request {count} task{'s' * (count != 1)} for {worker}"
    if reports:
        subject += f", with {len(reports)} report{'s' * (len(reports) != 1)}"
    return subject + "\n\n" + "".join(f"{k}: {v}\n" for k, v in trailers.items())


def read(store: GitStore, *, now: float) -> tuple[list[Request], list[str]]:
    """The live requests the last ``fetch(requests=True)`` saw, oldest first, and the names of
    the refs to delete: stale (older than REQUEST_TTL) or unreadable requests. A broken request
    (written by hand, say) is dropped, never a reason to fail."""
    live: list[Request] = []
    dropped: list[str] = []
    for name, commit in sorted(store.requests().items()):
        request = parse(name, commit, _message_of(store, commit))
        if request is None or not now - REQUEST_TTL <= request.at <= now + REQUEST_TTL:
            dropped.append(name)
        else:
            live.append(request)
    return sorted(live, key=lambda r: (r.at, r.ref)), dropped


def _message_of(store: GitStore, commit: str) -> str:
    """A request commit's message ("" if the cache lacks it), read from the cache once: every
    build of a claim reads the live requests, and a commit never changes."""
    text = _MESSAGES.get(commit)
    if text is not None:
        return text
    if not store.has(commit):  # a round trip to git each: why the messages are kept
        return ""
    data = store.read(commit).decode(errors="replace")
    text = data.split("\n\n", 1)[1] if "\n\n" in data else ""
    if len(text) <= MOST_KEPT_BYTES:
        if len(_MESSAGES) >= MOST_KEPT:
            _MESSAGES.clear()
        _MESSAGES[commit] = text
    return text


def parse(ref: str, commit: str, text: str) -> Request | None:
    """The request a commit message says, or None if it is not a sound one."""
    trailers: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep and key.startswith("Gitqueue-"):
            trailers[key] = value.strip()
    try:
        labels: Any = json.loads(trailers.get("Gitqueue-Labels", "{}"))
        gpus = trailers.get("Gitqueue-Gpus")
        lease = trailers.get("Gitqueue-Lease")
        ask = Ask(
            labels={str(k): str(v) for k, v in labels.items()},
            own_cmd_only=trailers.get("Gitqueue-Takes") == "own-cmd",
            gpus=None if gpus is None else int(gpus),
            lease=None if lease is None else max(1, int(lease)),
            slots=max(1, int(trailers.get("Gitqueue-Slots", "1"))),
        )
        count = min(MOST_ASKED, int(trailers["Gitqueue-Count"]))
        worker, at = trailers["Gitqueue-Worker"], parse_time(trailers["Gitqueue-At"])
        reports = _reports(trailers.get("Gitqueue-Reports"))
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        return None
    if trailers.get("Gitqueue-Action") != "request" or count < 0 or (count == 0 and not reports) or not worker:
        return None
    return Request(ref=ref, commit=commit, worker=worker, count=count, ask=ask, at=at, reports=reports)


def _reports(text: str | None) -> tuple[dict[str, Any], ...]:
    """The reports a request carries: JSON objects, each naming a run's token (ValueError if unsound)."""
    if text is None:
        return ()
    if len(text) > MOST_REPORT_BYTES:
        raise ValueError("too many report bytes")
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(r, dict) and isinstance(r.get("token"), str) for r in value):
        raise ValueError("reports must be a list of objects with a token")
    return tuple(value[:MOST_REPORTED])
