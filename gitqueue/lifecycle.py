"""The task lifecycle: claiming tasks and recording how their runs ended.

Owns :class:`Run` (a claimed task), :class:`Report` (how a run ended), :class:`Finished` (what
reports did), the choice of the next pending task (:func:`pending_in_order`), a worker's fair
share of a batch, and the changes that claim and finish tasks (:class:`Lifecycle`). Reaping dead
runs, built on these, is :mod:`gitqueue.reaping`. It may call :mod:`gitqueue.protocol` (every
change lands through its transaction) and what lies below it (snapshot, gitstore, task); never
the queue facade above it: a :class:`Run` reports through the owner it was given.
"""

from __future__ import annotations

import dataclasses
import heapq
import secrets
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from typing import Protocol as Interface

from gitqueue import history
from gitqueue import requests as asking
from gitqueue import validate as rules
from gitqueue.errors import Defer, GitqueueError, InvalidTask, InvalidTransition, LostRace, NotHeld
from gitqueue.gitstore import LEASE_REFS, REQUEST_REFS
from gitqueue.pacing import SLOTS_TRAILER
from gitqueue.protocol import Change, Protocol
from gitqueue.requests import Ask, Request
from gitqueue.snapshot import Snapshot
from gitqueue.task import SPENT_OUTCOMES, State, Task, now_iso, parse_time, render, result_problem, same_args

ERROR_TAIL = 2000
AHEAD = 4  # runs per slot served to a request while plenty is pending (at most half its fair share)


class RunOwner(Interface):
    """Where a :class:`Run` reports (the queue that claimed it)."""

    def done(self, task_id: str, *, token: str | None = None, result: Any = None, args: Any = None) -> Task: ...

    def fail(
        self,
        task_id: str,
        *,
        token: str | None = None,
        error: str | None = None,
        exit_code: int | None = None,
        args: Any = None,
    ) -> Task: ...


@dataclass(frozen=True)
class Report:
    """How a run ended: ``done``, ``failed``, ``timeout`` (stopped at its wall-clock limit),
    ``interrupted`` (not counted), ``reaped``, ``released`` (claimed in a batch and given back
    before it started) or ``abandoned`` (reaped, but it never started: its worker died holding
    the claim; not counted)."""

    task_id: str
    token: str | None
    outcome: str
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    lease_ref: bool = False  # the run pushed heartbeats: delete its lease ref with the report
    final: bool = False  # a failure no retry can mend (e.g. the task lacks an arg): straight to failed/
    args: dict[str, Any] | None = None  # the args the run used, if known: recorded when the file's differ


@dataclass
class Finished:
    """What reports did: the tasks as they now stand, why nothing changed for runs that no
    longer held their task, and the runs claimed in the same commit."""

    tasks: list[Task] = field(default_factory=list)
    losses: list[NotHeld | InvalidTask] = field(default_factory=list)
    claimed: list[Run] = field(default_factory=list)

    @property
    def task(self) -> Task | None:
        return self.tasks[0] if self.tasks else None

    @property
    def lost(self) -> NotHeld | InvalidTask | None:
        return self.losses[0] if self.losses else None

    @property
    def next(self) -> Run | None:
        return self.claimed[0] if self.claimed else None

    def raise_lost(self) -> Task:
        if self.losses:
            raise self.losses[0]
        assert self.tasks
        return self.tasks[0]


@dataclass
class Run:
    """A claimed task, held by this run until it reports. ``with run:`` fails it on an exception."""

    queue: RunOwner
    task: Task
    record: dict[str, Any]
    finished: Task | None = None

    @property
    def id(self) -> str:
        return self.task.id

    @property
    def args(self) -> dict[str, Any]:
        return self.task.args

    @property
    def token(self) -> str:
        return str(self.record["token"])

    @property
    def attempt(self) -> int:
        return int(self.record["attempt"])

    @property
    def lease(self) -> int:
        return int(self.record["lease"])

    def done(self, result: Any = None) -> Task:
        self.finished = self.queue.done(self.id, token=self.token, result=result, args=self.args)
        return self.finished

    def fail(self, error: str | None = None, *, exit_code: int | None = None) -> Task:
        self.finished = self.queue.fail(self.id, token=self.token, error=error, exit_code=exit_code, args=self.args)
        return self.finished

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "args": self.args,
            "token": self.token,
            "attempt": self.attempt,
            "worker": self.record["worker"],
            "lease": self.lease,
            "task": self.task.to_dict(),
        }

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if self.finished is not None:
            return
        if exc is None:
            self.done()
        else:
            self.fail("".join(traceback.format_exception(exc_type, exc, tb))[-ERROR_TAIL:])


class Lifecycle:
    """Claims and finishes of one queue's tasks, by this worker, through ``protocol``.

    ``owner`` is what the runs it claims report to; ``checks`` the broken files a worker skips.
    """

    def __init__(self, protocol: Protocol, *, owner: RunOwner, checks: rules.WorkerChecks) -> None:
        self.protocol, self.owner, self.checks = protocol, owner, checks
        self.store, self.cache = protocol.store, protocol.cache
        self.worker, self.clock = protocol.worker, protocol.clock
        self.asker = asking.Asker(self.store, worker=self.worker, clock=self.clock, identity=lambda: protocol.identity)
        self.claims = Claims(protocol, owner=owner, checks=checks, asker=self.asker, finisher=self.finish_change)
        # Runs claimed for us that a fetched view showed, by token: handed out once each, by
        # whichever comes first, the push that saw them or take_found (a worker whose own
        # push keeps losing still runs them). Pushes may run in a thread of their own.
        self._found: dict[str, Run] = {}
        self.found_on: str | None = None  # the tip on which runs claimed for us were last seen
        self._given: set[str] = set()
        self._lock = threading.Lock()

    def claim_batch(
        self,
        count: int,
        *,
        labels: Mapping[str, str] | None = None,
        lease: int | None = None,
        eligible: Callable[[Task], bool] | None = None,
        patient: bool = True,
        ask: Ask | None = None,
    ) -> list[Run]:
        """Claim up to ``count`` tasks in one commit (the best ones, in order).

        Not ``patient``: one try on the fetched tip, LostRace if another writer won it. With
        ``ask``, a race lost to another machine pushes a request for work (see :meth:`ask`),
        and runs another worker claimed for us meanwhile are returned instead of claiming.
        """

        def build(snap: Snapshot) -> Change | None:
            served = self.served(snap)
            if served:  # nothing to commit: another worker's push claimed them for us
                return Change(subject="", value=served)
            if ask is not None:
                self._defer()
            return self.claims.change(snap, labels, lease, eligible, count)

        on_lost = None if ask is None else lambda: self._lost(count, ask)
        runs = self.protocol.transact(build, patient=patient, requests=True, on_lost=on_lost) or []
        return self._adopted(runs)

    def ask(self, count: int, ask: Ask) -> bool:
        """Ask for ``count`` tasks on this worker's request ref, so that whoever lands on the
        branch next claims them for us (see :class:`gitqueue.requests.Asker`)."""
        return self.asker.ask(count, ask)

    def served(self, snap: Snapshot) -> list[Run]:
        """The runs ``snap`` holds that other workers claimed in our name for our requests, not
        handed out yet; they are kept for :meth:`take_found` too."""
        runs = [Run(queue=self.owner, task=task, record=dict(task.run or {})) for task in self.asker.answers(snap)]
        with self._lock:
            runs = [run for run in runs if run.token not in self._given]
            self._found.update({run.token: run for run in runs})
            if runs:
                self.found_on = snap.tip
        return runs

    def take_found(self) -> list[Run]:
        """The runs claimed for us that a fetched view showed and no push has handed out yet
        (each once): a worker starts them whether or not its own push lands."""
        with self._lock:
            runs = list(self._found.values())
        return self._adopted(runs)

    def adopt(self) -> list[Run]:
        """Fetch, and return the runs claimed for our requests that we hold now (each once)."""
        if not self.asker.pushed:
            return []
        return self._adopted(self.served(self.protocol.snapshot()))

    def _lost(self, count: int, ask: Ask, reports: Sequence[Report] = ()) -> int:
        """A race lost to another machine: with runs claimed for us waiting, stop trying (the
        caller runs them, and reports with its next push); else ask for ``count`` tasks, handing
        ``reports`` over with the request. Returns 0 if no request is out, else 1 + how many
        live requests are older than ours (the protocol's backoff reads it)."""
        with self._lock:
            waiting = bool(self._found)
        if waiting:
            raise LostRace("runs claimed for us are waiting")
        if not self.asker.ask(count, ask, reports=[report_json(report) for report in reports if report.token]):
            return 0
        older = self.asker.older(asking.read(self.store, now=self.clock())[0])
        # Carrying reports, it looks again within two tries whatever its place: the next push of
        # anyone records them, and until an older asker's push is due its tries only fetch (defer).
        return 1 + min(older, 1 if reports else older)

    def _defer(self) -> None:
        """Defer (push nothing on this view) while an older asker's push is due to serve our
        request too (see :meth:`gitqueue.requests.Asker.defers`)."""
        if self.asker.asked and self.asker.defers(asking.read(self.store, now=self.clock())[0]):
            raise Defer

    def withdraw(self) -> list[Task]:
        """Take our request back, if one is out (this worker stops): delete its ref, and give
        back what was claimed for it meanwhile (released: no attempt spent). Returns those tasks.
        A server that fetched the request before and lands after still claims for us: those
        runs return when their lease runs out, like any dead worker's."""
        if not self.asker.pushed:
            return []
        tip = self.store.seen
        if tip is not None and (not self.asker.asked or self.asker.gone()):
            # Answered (or deleted) in a push that our last view holds: a server that built on an
            # older view cannot land (the branch moved), one on a newer sees no request to serve.
            snap = Snapshot(self.store, self.cache, tip)
        else:
            if self.asker.asked:
                self.asker.take_back()
            snap = self.protocol.snapshot()
        served = self.served(snap)
        self.asker.answered()
        if not served:
            return []
        return self.finish([Report(run.id, run.token, "released") for run in served]).tasks

    def _adopted(self, runs: list[Run]) -> list[Run]:
        """A claim landed or served runs were found: our request is answered (or deleted by our
        own claim's push); the branch holds the runs either way. Returns ``runs`` but those
        handed out already."""
        with self._lock:
            runs = [run for run in runs if run.token not in self._given]
            self._given.update(run.token for run in runs)
            for run in runs:
                self._found.pop(run.token, None)
        if runs:
            self.asker.answered()
        return runs

    def finish(
        self,
        reports: Report | Sequence[Report],
        *,
        then_claim: Mapping[str, Any] | None = None,
        patient: bool = True,
        hand_off: bool = False,
    ) -> Finished:
        """Record how runs ended and, with ``then_claim`` (``claim_batch``'s options, ``count``
        included), claim the next tasks: all in one commit and one push.

        A report from a run that no longer holds its task changes nothing: ``losses`` say why.
        With ``hand_off`` (a worker's own reports), a race lost to another machine also hands
        the reports to whoever lands next, on our request ref (see :mod:`gitqueue.requests`);
        a report recorded for us that way is not a loss.
        """
        batch = [reports] if isinstance(reports, Report) else list(reports)
        batch = [self._with_claimed_args(report) for report in batch]
        claim_options = None if then_claim is None else dict(then_claim)
        ask: Ask | None = None if claim_options is None else claim_options.pop("ask", None)
        answers: list[bool] = []  # set by a build whose push deletes our request ref

        def build(snap: Snapshot) -> Change | None:
            change = self._record(snap, batch)
            if claim_options is None and not change.files and not self.claims.reports_waiting(snap):
                return change  # nothing of ours to record (our request's server did): see reports_waiting
            finished = change.value.tasks
            done = [task.id for task in finished if task.state is State.DONE]  # their dependents may go now
            served = self.served(snap)  # claimed for us by another worker (a report only: see take_found)
            if claim_options is None:  # a report only: it still serves the requests it sees
                served = []
            carried = all(report.token in self.asker.handed for report in batch)  # by our request
            if not served and (ask is not None or (hand_off and carried)):
                self._defer()
            options = {**(claim_options or {}), "count": max(0, (claim_options or {}).get("count", 1) - len(served))}
            change.value.claimed = served
            if claim_options is None:
                options["count"] = 0
            claim = self.claims.change(snap, **options, finishing=len(finished), done=done)
            if claim is not None:
                change = change.then(claim)
                change.value.claimed = [*served, *claim.value]
            answers[:] = [bool(change.files and self.asker.asked)]
            if answers[0]:  # this push records what our request carried or asked: delete it too
                change.also.append(f":{REQUEST_REFS}/{self.asker.ref}")
            return change

        count = 0 if claim_options is None else claim_options.get("count", 1)
        on_lost = None
        if ask is not None or hand_off:
            on_lost = lambda: self._lost(count, ask or Ask(), batch if hand_off else [])  # noqa: E731
        finished: Finished = self.protocol.transact(build, patient=patient, requests=True, on_lost=on_lost)
        if answers and answers[0]:
            self.asker.answered()
        finished.claimed = self._adopted(finished.claimed)
        return finished

    def _record(self, snap: Snapshot, batch: Sequence[Report]) -> Change:
        """The changes that record ``batch`` on ``snap``; its value is their :class:`Finished`."""
        change = Change(subject="", value=Finished())
        for report in batch:
            try:
                step = self.finish_change(snap, report)
            except NotHeld as exc:  # taken away; or recorded already by whoever landed our request
                if report.token not in self.asker.handed:
                    change.value.losses.append(exc)
                continue
            except InvalidTask as exc:  # its file broken by hand
                change.value.losses.append(exc)
                continue
            change = change.then(step)
            change.value.tasks.append(step.value)
        return change

    def _with_claimed_args(self, report: Report) -> Report:
        """A report from a process that does not know the args its run used (``gitqueue done``
        from a script): take them from the claim commit, so that a change to the file's args
        since then is recorded. Workers pass their args and pay nothing for this."""
        if report.args is not None or report.token is None or report.outcome not in ("done", *SPENT_OUTCOMES):
            return report
        snap = self.protocol.snapshot()
        try:
            task = snap.get(report.task_id)
        except GitqueueError:
            return report  # finishing says why
        if task.token != report.token or snap.tip is None:
            return report
        claims = [e for e in history.task_history(self.store, snap.tip, task.id) if e.action == "claim"]
        if not claims:
            return report
        try:
            claimed = Snapshot(self.store, self.cache, claims[-1].commit).get(task.id)
        except GitqueueError:
            return report
        return dataclasses.replace(report, args=claimed.args) if claimed.token == report.token else report

    def finish_change(self, snap: Snapshot, report: Report, *, lease_ref: bool = False) -> Change:
        """The commit that records ``report``; NotHeld if its run no longer holds the task."""
        return finish_record(snap, report, now=self.clock(), worker=self.worker, lease_ref=lease_ref)


def finish_record(snap: Snapshot, report: Report, *, now: float, worker: str, lease_ref: bool = False) -> Change:
    """The commit that records ``report`` at ``now`` (``worker`` names a run without one);
    NotHeld if its run no longer holds the task."""
    task = held_task(snap, report.task_id, report.token)
    record = attempt_record(
        task, report.outcome, now, error=report.error, exit_code=report.exit_code, ran_with=report.args
    )
    after = task.evolve(run=None, attempts=[*task.attempts, record])
    if report.outcome == "done":
        after.state, after.result = State.DONE, report.result
        if (problem := result_problem(after)) is not None:  # keep the file valid: the report must land
            after.result = None
            after.attempts[-1]["error"] = f"result not kept: {problem}"
    elif report.outcome in SPENT_OUTCOMES:
        spent_all = after.attempts_spent >= (task.max_attempts or snap.settings.max_attempts)
        after.state = State.FAILED if spent_all or report.final else State.PENDING
    elif report.outcome in ("released", "abandoned"):  # never started: no attempt at all
        after = task.evolve(state=State.PENDING, run=None)
    else:  # interrupted: the attempt does not count
        after.state = State.PENDING
    verb = {
        "done": "done",
        "failed": "fail",
        "timeout": "timeout",
        "reaped": "reap",
        "interrupted": "return",
        "released": "release",
        "abandoned": "reap",
    }
    subject = f"{verb[report.outcome]} {task.id} by {record['worker'] or worker} (attempt {record['attempt']})"
    if report.outcome in SPENT_OUTCOMES:
        subject += ": out of attempts" if after.state is State.FAILED else ": will retry"
    elif report.outcome == "released":
        subject += ": not started"
    elif report.outcome == "abandoned":
        subject += ": never started, no attempt spent"
    if "ran_with" in record:
        subject += " (its args changed while it ran)"
    also = [f":{LEASE_REFS}/{task.token}"] if lease_ref or report.lease_ref else []
    return Change(
        subject=subject,
        files=move(snap, task, after),
        trailers={"Gitqueue-Action": report.outcome, "Gitqueue-Task": task.id, "Gitqueue-Run": str(task.token)},
        value=after,
        also=also,
    )


HANDED_OUTCOMES = ("done", "failed", "timeout", "interrupted", "released")  # what a request may carry


def report_json(report: Report) -> dict[str, Any]:
    """``report`` as the JSON object a request carries (see :func:`report_from_json`)."""
    fields = dataclasses.asdict(report)
    fields["task"] = fields.pop("task_id")
    return {key: value for key, value in fields.items() if value not in (None, False)}


def report_from_json(raw: Mapping[str, Any]) -> Report | None:
    """The report a request carries, or None if it is not a sound one (a request is input)."""
    task_id, token, outcome = raw.get("task"), raw.get("token"), raw.get("outcome")
    if not isinstance(task_id, str) or not isinstance(token, str) or outcome not in HANDED_OUTCOMES:
        return None
    error, exit_code, args = raw.get("error"), raw.get("exit_code"), raw.get("args")
    return Report(
        task_id,
        token,
        str(outcome),
        result=raw.get("result"),
        error=None if error is None else str(error)[-ERROR_TAIL:],
        exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
        lease_ref=raw.get("lease_ref") is True,
        final=raw.get("final") is True,
        args=args if isinstance(args, dict) else None,
    )


def best_pending(
    snap: Snapshot, labels: Mapping[str, str], eligible: Callable[[Task], bool] | None = None
) -> Task | None:
    """Highest priority first, then lowest id, among valid pending tasks this worker may take."""
    return next(pending_in_order(snap, labels, eligible), None)


class Claims:
    """Choosing and claiming pending tasks, for this worker and for the workers asking for work,
    within each one's fair share by slots (see :meth:`change`).

    ``slots`` are this worker's (written on its claim commits); ``fleet`` the slots of the
    workers it has seen on the branch (a worker's pace learns them; unknown counts 1).
    ``finisher`` makes the change that records a report (the reports a request carries).
    """

    def __init__(
        self,
        protocol: Protocol,
        *,
        owner: RunOwner,
        checks: rules.WorkerChecks,
        asker: asking.Asker,
        finisher: Callable[[Snapshot, Report], Change],
    ) -> None:
        self.protocol, self.owner, self.checks, self.asker = protocol, owner, checks, asker
        self.finisher = finisher
        self.store, self.worker, self.clock = protocol.store, protocol.worker, protocol.clock
        self.slots = 1
        self.fleet: Mapping[str, int] = {}

    def change(
        self,
        snap: Snapshot,
        labels: Mapping[str, str] | None = None,
        lease: int | None = None,
        eligible: Callable[[Task], bool] | None = None,
        count: int = 1,
        finishing: int = 0,
        done: Iterable[str] = (),
    ) -> Change | None:
        """Claims of the best ``count`` pending tasks, in one change; its value is the runs.

        A batch keeps this worker's runs within a fair share of the work not done yet (what is
        pending and what is running, split by slots among the workers seen running, those in
        ``fleet`` and those asking for work), so that one worker does not hold tasks that idle
        workers could run. ``finishing`` runs of ours are being reported in the same commit: they
        no longer count. The same change claims for every live request of another worker (see
        :meth:`serve`); with ``count`` 0 it only serves them. Looking for work and finding none
        for anyone, with nothing of ours to report, it makes no change only to record the reports
        other workers' requests carry, unless they have waited long (see :meth:`reports_waiting`).
        """
        live, dropped = self.requests(snap)
        if count <= 0 and not live:  # a report alone, and nobody to serve: nothing to claim
            return None
        share, holders = self.fair_share(snap, finishing=finishing, asking={r.worker: r.ask.slots for r in live})
        if count > 1:
            count = max(1, min(count, share(self.worker) - max(0, holders[self.worker])))
        taken: set[str] = set()
        guard = self.checks.guard(snap, eligible)
        own, runs = self._claims(snap, self.worker, labels or {}, guard, count, lease=lease, done=done, taken=taken)
        if own is not None and self.asker.asked:  # our own request, answered by our own claim
            own.also.append(f":{REQUEST_REFS}/{self.asker.ref}")
        change = self.serve(snap, live, dropped, share=share, holders=holders, taken=taken, done=done, base=own)
        if count > 0 and not taken and not finishing and not self.reports_waiting(snap, live):
            return None  # looking for work, none for anyone: others' reports are theirs to land
        if change is not None:
            change.value = runs
        return change

    def fair_share(
        self, snap: Snapshot, *, finishing: int, asking: Mapping[str, int]
    ) -> tuple[Callable[[str], int], Counter[str | None]]:
        """Each worker's fair share of the outstanding work (pending plus running, split by slots
        among the workers holding runs, us, those in ``fleet`` and those ``asking``: worker ->
        slots), as a function of the worker, and the runs each holds. A worker's slots are what
        it asked with, else what ``fleet`` says, else 1; ours are ``slots``."""
        pending = sum(len(group) for group in snap.pending_groups())
        holders = Counter(summary.worker for _, summary in snap.summaries(State.RUNNING))
        holders[self.worker] -= finishing
        running = {worker for worker, held in holders.items() if held > 0 and worker} | {self.worker}
        self.protocol.contenders = len(running | set(asking))
        slots = {worker: max(1, self.fleet.get(worker, 1)) for worker in running | set(self.fleet)}
        slots.update({worker: max(1, n) for worker, n in asking.items()})
        slots[self.worker] = max(1, self.slots)
        outstanding = pending + sum(max(0, held) for held in holders.values())
        total = sum(slots.values())
        return lambda worker: -(-outstanding * slots.get(worker, 1) // total), holders  # ceil: pairs, not ones

    def reports_waiting(self, snap: Snapshot, live: Sequence[Request] | None = None) -> bool:
        """Whether a push with nothing of ours in it should still record the reports other
        workers' requests carry: only those carried unrecorded for DEFER_FOR seconds (their
        worker may be gone, its runs' results with it). Else they are their workers' to land,
        each racing for its own (a landing records them all): one more racer only slows them.
        ``live``: the live requests not served on ``snap`` (see :meth:`requests`)."""
        if live is None:
            live = self.requests(snap)[0]
        since = self.clock() - asking.DEFER_FOR
        return any(r.reports and r.at <= since for r in live)

    def requests(self, snap: Snapshot) -> tuple[list[Request], list[str]]:
        """The live requests of other workers not served yet, and the request refs to delete
        (stale, broken, or already served on ``snap``)."""
        live, dropped = asking.read(self.store, now=self.clock())
        if not live:
            return [], dropped
        answered: set[str] = set()
        claimed: dict[str, float] = {}  # worker -> when it last claimed for itself
        for task in snap.tasks(State.RUNNING):
            run = task.run or {}
            answered.add(str(run.get("request")))
            at = time_or_none(run.get("claimed_at"))
            if "request" not in run and at is not None and isinstance(run.get("worker"), str):
                claimed[run["worker"]] = max(at, claimed.get(run["worker"], at))
        mine = asking.ref_name(self.worker)
        keep = [r for r in live if r.commit not in answered and r.ref != mine and r.worker != self.worker]
        dropped += [r.ref for r in live if r.commit in answered]
        # A worker whose own claim landed after it asked has what it asked for (by its own clock):
        # record what the request carries, but claim nothing more for it.
        keep = [dataclasses.replace(r, count=0) if claimed.get(r.worker, float("-inf")) >= r.at else r for r in keep]
        dropped += [r.ref for r in keep if not r.count and not r.reports]
        return [r for r in keep if r.count or r.reports], dropped

    def serve(
        self,
        snap: Snapshot,
        live: Sequence[Request],
        dropped: Sequence[str],
        *,
        share: Callable[[str], int],
        holders: Counter[str | None],
        taken: set[str],
        done: Iterable[str],
        base: Change | None,
    ) -> Change | None:
        """``base`` plus, for each live request (oldest first), the reports it carries and claims
        in its worker's name: up to what it asked, within its fair share. A served request's ref,
        and every ``dropped`` one, is deleted in the same atomic push; a request asking for
        tasks that nothing fits, and carrying no report, stays for later."""
        change = base
        for request in live:
            recorded, ended = self._recorded(snap, request)
            holders[request.worker] -= ended
            held = max(0, holders[request.worker])
            want = request.count
            if want:  # plenty pending: its next runs too, up to half its share
                want = max(want, min(AHEAD * request.ask.slots, share(request.worker) // 2))
            give = min(want, max(share(request.worker) - held, 0 if held else 1))
            guard = self.checks.guard(snap, request.fits)
            step, runs = self._claims(
                snap, request.worker, request.ask.labels, guard, give, lease=request.ask.lease, done=done,
                taken=taken, request=request.commit,
            )  # fmt: skip
            if step is None and recorded is None and request.count:
                continue
            holders[request.worker] += len(runs)
            mark = Change(subject="", trailers={"Gitqueue-Served": request.worker.replace(" ", "_")})
            mark.also.append(f":{REQUEST_REFS}/{request.ref}")
            for piece in (recorded, step, mark):
                if piece is not None:
                    change = piece if change is None else change.then(piece)
        if change is not None:
            change.also.extend(f":{REQUEST_REFS}/{name}" for name in dropped)
        return change

    def _recorded(self, snap: Snapshot, request: Request) -> tuple[Change | None, int]:
        """The changes recording the reports ``request`` carries, and how many: each only if
        its run (by token) still holds its task in the requester's name."""
        change: Change | None = None
        count = 0
        for raw in request.reports:
            report = report_from_json(raw)
            try:
                if report is None or (held_task(snap, report.task_id, report.token).run or {}).get("worker") != (
                    request.worker
                ):
                    continue
                step = self.finisher(snap, report)
            except GitqueueError:  # not held any more (recorded already?), or its file is broken
                continue
            change = step if change is None else change.then(step)
            count += 1
        return change, count

    def _claims(
        self,
        snap: Snapshot,
        worker: str,
        labels: Mapping[str, str],
        eligible: Callable[[Task], bool],
        count: int,
        *,
        lease: int | None,
        done: Iterable[str],
        taken: set[str],
        request: str | None = None,
    ) -> tuple[Change | None, list[Run]]:
        """Claims of the best ``count`` pending tasks not ``taken`` (which gets their ids), in
        ``worker``'s name; ``request``: the request they answer, noted in each run record."""
        change: Change | None = None
        runs: list[Run] = []
        if count <= 0:
            return None, runs
        for task in pending_in_order(snap, labels, lambda t: t.id not in taken and eligible(t), done=done):
            record: dict[str, Any] = {
                "token": secrets.token_hex(8),
                "worker": worker,
                "claimed_at": now_iso(self.clock()),
                "lease": lease or task.lease or snap.settings.lease,
                "attempt": task.next_attempt,
            }
            if request is not None:
                record["request"] = request
                record["claimed_by"] = self.worker
            claimed = task.evolve(state=State.RUNNING, run=record)
            how = "by" if request is None else "for"
            step = Change(
                subject=f"claim {task.id} {how} {worker} (attempt {record['attempt']})",
                files=move(snap, task, claimed),
                trailers={"Gitqueue-Action": "claim", "Gitqueue-Task": task.id, "Gitqueue-Run": str(record["token"])},
            )
            change = step if change is None else change.then(step)
            runs.append(Run(queue=self.owner, task=claimed, record=record))
            taken.add(task.id)
            if len(runs) >= count:
                break
        if change is not None and self.slots > 1 and worker == self.worker:
            change.trailers = {**change.trailers, SLOTS_TRAILER: str(self.slots)}  # the fleet learns our slots
        return change, runs


def pending_in_order(
    snap: Snapshot,
    labels: Mapping[str, str],
    eligible: Callable[[Task], bool] | None = None,
    *,
    done: Iterable[str] = (),
) -> Iterator[Task]:
    """Valid pending tasks this worker may take, best first (invalid files are never claimed),
    leaving out those whose ``after`` names a task not done yet (``done``: ids this very
    commit finishes as done).

    Each group of pending files is sorted once per tree id and the groups are merged
    lazily, so taking the first few reads only the first few of each group.
    """
    summaries = snap.cache.summaries
    for _rank, _order, entry in heapq.merge(*snap.ready_groups(snap.states(done)), key=lambda c: (c[0], c[1])):
        summary = summaries.get(entry)
        if summary.error is not None or not summary.matches(labels):
            continue
        try:
            task = snap.cache.task(entry)
        except GitqueueError:
            continue
        if eligible is None or eligible(task):
            yield task


def held_task(snap: Snapshot, task_id: str, token: str | None) -> Task:
    """The running task ``task_id``; NotHeld if ``token`` is given and no longer holds it."""
    task = snap.get(task_id)
    if task.state is not State.RUNNING:
        if token:
            raise NotHeld(
                f"run {token} no longer holds task {task.id}: it is {task.state.value} now; nothing changed",
                task_id=task.id,
            )
        raise InvalidTransition(f"task {task.id} is {task.state.value}, not running; nothing to finish")
    if token and task.token != token:
        raise NotHeld(
            f"run {token} no longer holds task {task.id}: run {task.token} of {task.run and task.run.get('worker')} "
            "holds it now; nothing changed",
            task_id=task.id,
        )
    return task


def time_or_none(value: Any) -> float | None:
    """A time gitqueue wrote, or None if it is missing or was broken by hand."""
    try:
        return parse_time(str(value)) if value else None
    except ValueError:
        return None


def attempt_record(
    task: Task,
    outcome: str,
    now: float,
    *,
    error: str | None = None,
    exit_code: int | None = None,
    ran_with: dict[str, Any] | None = None,
) -> dict[str, Any]:
    run = task.run or {}
    record: dict[str, Any] = {
        "attempt": run.get("attempt", task.next_attempt),
        "outcome": outcome,
        "worker": run.get("worker"),
        "token": run.get("token"),
        "started": run.get("claimed_at"),
        "ended": now_iso(now),
    }
    if run.get("claimed_at"):
        record["duration"] = round(now - parse_time(run["claimed_at"]), 3)
    if ran_with is not None and not same_args(ran_with, task.args):
        record["ran_with"] = ran_with  # its file's args changed while it ran: what the run used
    if exit_code is not None:
        record["exit_code"] = exit_code
    if error:
        record["error"] = error[-ERROR_TAIL:]
    return record


def move(snap: Snapshot, before: Task, after: Task) -> dict[str, bytes | None]:
    """The file changes that turn ``before`` (read from ``snap``) into ``after``."""
    if after.state is before.state:
        return {before.path: render(after)}
    return {before.path: None, snap.path_for(after.state, after.id): render(after)}
