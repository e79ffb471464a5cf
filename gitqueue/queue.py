"""The queue: every state change is one commit, pushed as a compare-and-swap on the branch.

``Queue._transact`` is the claim protocol's loop, and every write goes through it:
fetch the tip, build the change from that exact snapshot, commit it without a work tree,
push it without force. A rejected push means another writer moved first: wait a jittered,
growing moment and rebuild from the new tip (never rebase an old commit).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import random
import re
import secrets
import socket
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitqueue import config, edits, filters, history
from gitqueue import validate as rules
from gitqueue.errors import (
    EditConflict,
    GitqueueError,
    InvalidTask,
    InvalidTransition,
    LostRace,
    NotHeld,
    QueueNotFound,
    RemoteUnavailable,
    TaskExists,
    TaskNotFound,
)
from gitqueue.gitstore import (
    BLOB_MODE,
    LEASE_REFS,
    CacheBusy,
    GitStore,
    Identity,
    PushOutcome,
    init_bare,
    is_local_path,
)
from gitqueue.snapshot import FLAT_LIMIT, Problem, Snapshot, TaskCache
from gitqueue.task import (
    PERSON_FIELDS,
    SEQ_DIGITS,
    SPENT_OUTCOMES,
    State,
    Task,
    check_id,
    fan,
    id_order,
    now_iso,
    parse_time,
    render,
    task_from_mapping,
)

ERROR_TAIL = 2000
STUCK_LIMIT = 8  # lost races in a row with the branch not moving: something else is wrong
OPTIMISTIC_WINDOW = 2.0  # seconds after a push from our cache in which we build on it without fetching
OPTIMISTIC_STREAK = 4  # then pause a try's length: a rival elsewhere, fetching each try, gets its chance
_SEQ_RE = re.compile(r"^(\d+)-")
PROGRESS_EVERY = 1000  # items between two reports to on_progress


def default_worker() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


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
            body = "\n".join(self.parts) + "\n\n"
        return subject + "\n\n" + body + "".join(f"{k}: {v}\n" for k, v in trailers.items())


@dataclass(frozen=True)
class Report:
    """How a run ended: ``done``, ``failed``, ``interrupted`` (not counted), ``reaped``, or
    ``released`` (claimed in a batch and given back before it started)."""

    task_id: str
    token: str | None
    outcome: str
    result: Any = None
    error: str | None = None
    exit_code: int | None = None
    lease_ref: bool = False  # the run pushed heartbeats: delete its lease ref with the report
    final: bool = False  # a failure no retry can mend (e.g. the task lacks an arg): straight to failed/


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


class Queue:
    """A queue living in the git repository at ``url``.

    >>> q = Queue.open("/path/to/queue.git")          # doctest: +SKIP
    >>> q.submit([{"args": {"lr": 0.01}}])            # doctest: +SKIP
    >>> with q.claim() as run:                         # doctest: +SKIP
    ...     train(**run.args)
    """

    def __init__(
        self,
        url: str,
        *,
        worker: str | None = None,
        branch: str = "main",
        cache: Path | None = None,
        patience: float = 120.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_skew: float = 30.0,
    ) -> None:
        self.url = url
        self.worker = worker or default_worker()
        self.store = GitStore(url, branch=branch, cache=cache, patience=patience)
        self.cache = TaskCache(self.store)
        self.patience = patience
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self.max_skew = max_skew
        self._seen: dict[tuple[str, str | None], float] = {}  # (run token, heartbeat) -> first seen
        self._attempt_seconds = 0.03  # moving average of one try (fetch, build, push): the backoff's slot
        self.backed_off = 0.0  # seconds slept after lost races
        self._streak = 0  # our pushes in a row that landed on our own last push, unfetched
        self._last_landed: str | None = None
        self._contenders = 1  # workers seen holding runs at the last claim or lost race: how wide to spread
        self._identity: Identity | None = None
        self.checks = rules.WorkerChecks()  # broken files a worker skips, reported once each
        # Long operations (a 100,000-task submit, validate) report (what, done, total or None) here.
        self.on_progress: Callable[[str, int, int | None], None] | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> Queue:
        """Attach to an initialised queue (``url``, else ``GITQUEUE_QUEUE``, else ``.gitqueue``)."""
        queue = cls(config.resolve_queue_url(url), **options)
        try:
            if not queue.snapshot().initialised:
                raise QueueNotFound(f"{queue.url} is not a gitqueue queue yet: run `gitqueue init {queue.url}`")
        except BaseException:
            queue.close()
            raise
        return queue

    @classmethod
    def init(
        cls,
        url: str | None = None,
        *,
        folder: Path | None = None,
        settings: config.Settings | None = None,
        **options: Any,
    ) -> Queue:
        """Create or attach a queue. With no ``url``, an embedded bare repository in ``folder``.

        The folder gets a ``.gitqueue`` file naming the queue, so later commands find it.
        Attaching to an initialised queue changes nothing in it.
        """
        folder = folder or Path.cwd()
        target = url or str(folder / config.EMBEDDED_REPO)
        if is_local_path(target) or target.startswith("file://"):
            local = Path(target.removeprefix("file://")).expanduser()
            if not local.exists() or (local.is_dir() and not any(local.iterdir())):
                init_bare(local)
            if not target.startswith("file://"):
                target = str(local.resolve())
        queue = cls(target, **options)
        try:
            queue._initialise(settings or config.Settings())
        except BaseException:
            queue.close()
            raise
        folder.mkdir(parents=True, exist_ok=True)
        config.write_config(folder, target if url else config.EMBEDDED_REPO)
        return queue

    def _initialise(self, settings: config.Settings) -> None:
        def build(snap: Snapshot) -> Change | None:
            if snap.initialised:
                return None
            files: dict[str, bytes | None] = {config.SETTINGS_FILE: settings.render()}
            for state in State:
                files[f"{state.value}/.gitkeep"] = b""
            return Change(subject="initialise gitqueue queue", files=files, trailers={"Gitqueue-Action": "init"})

        self._transact(build)

    def close(self) -> None:
        self.cache.close()
        self.store.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the protocol

    def snapshot(self, *, leases: bool = False) -> Snapshot:
        """Fetch, then view the queue at the remote's tip (retrying while it is unreachable)."""
        deadline = self.clock() + self.patience
        delay = 0.1
        while True:
            try:
                return Snapshot(self.store, self.cache, self.store.fetch(leases=leases))
            except RemoteUnavailable as exc:
                delay = self._wait_for_remote(exc, deadline, delay)

    def _wait_for_remote(self, exc: RemoteUnavailable, deadline: float, delay: float) -> float:
        """Sleep about ``delay`` before asking an unreachable remote again (raise ``exc`` if
        that would pass ``deadline``); returns the next, longer delay."""
        if self.clock() + delay > deadline:
            raise exc
        self.sleep(delay * random.uniform(0.5, 1.5))
        return min(delay * 2, 5.0)

    def _transact(
        self, build: Callable[[Snapshot], Change | None], *, leases: bool = False, patient: bool = True
    ) -> Any:
        """Fetch, build, commit, compare-and-swap push; on a lost race, back off and redo.

        Each try holds the cache's turn (:meth:`GitStore.turn`), so processes sharing a
        cache push one at a time. Right after a push from this cache landed, the tip is
        very likely still that commit, so the try builds on it without fetching. The push
        is a compare-and-swap either way: if the branch moved, it is rejected like any lost
        race. Anything decided from that unfetched view without a push (nothing to do, an
        error) is decided again from a fetched one. A process that chains such pushes back
        to back would keep the branch from rivals elsewhere (they fetch first), so after
        OPTIMISTIC_STREAK of them it pauses for about one try.
        """
        lost = still = 0
        last_tip: str | None = None
        fetch = leases  # lease refs come only with a fetch
        unreachable: RemoteUnavailable | None = None
        deadline, delay = float("inf"), 0.1
        if self._streak >= OPTIMISTIC_STREAK:  # leave a rival that fetches each try a gap to land in
            self.sleep(random.uniform(0.5, 1.5) * self._attempt_seconds)
            self._streak = 0
        while True:
            if unreachable is not None:  # wait for the remote outside the turn: others may stop meanwhile
                delay, unreachable = self._wait_for_remote(unreachable, deadline, delay), None
            try:
                with self.store.turn(wait=patient):  # not patient: no waiting for the others either
                    started = self.monotonic()
                    recent = None if fetch else self.store.recent_landing(OPTIMISTIC_WINDOW)
                    try:
                        snap = Snapshot(self.store, self.cache, recent or self.store.fetch(leases=leases))
                    except RemoteUnavailable as exc:
                        unreachable, deadline = exc, min(deadline, self.clock() + self.patience)
                        continue
                    try:
                        change = build(snap)
                    except GitqueueError:
                        if recent is None:
                            raise
                        change = None
                    if recent is not None and (change is None or not change.files):
                        fetch = True
                        continue
                    if change is None:
                        return None
                    if not change.files:
                        return change.value
                    commit = self._commit(snap, change)
                    outcome = self.store.push(commit, snap.tip, also=change.also)
                    self._attempt_seconds = 0.8 * self._attempt_seconds + 0.2 * (self.monotonic() - started)
            except CacheBusy:
                raise LostRace("another worker on this machine is pushing") from None
            if outcome is PushOutcome.UNKNOWN:  # learn it by fetching, outside the turn
                outcome = self.store.settle(commit)
            if outcome is PushOutcome.LANDED:
                self._streak = self._streak + 1 if recent is not None and recent == self._last_landed else 0
                self._last_landed = commit
                return change.value
            fetch = True
            self._contenders = snap.workers()
            if recent is not None:  # another machine moved it: try again on a fetched view
                continue
            if not patient:  # the caller has other work to do meanwhile and will try again
                raise LostRace("another writer moved the branch first")
            lost += 1
            still = still + 1 if snap.tip == last_tip else 0
            last_tip = snap.tip
            if still >= STUCK_LIMIT:  # refused again and again, yet nobody else moved it
                raise RemoteUnavailable(
                    f"{self.url} keeps refusing pushes to a branch that does not move (a stale "
                    f"lock such as refs/heads/main.lock on the server?): {self.store.last_rejection}"
                )
            pause = self._backoff(lost)
            self.backed_off += pause
            self.sleep(pause)

    def _backoff(self, lost: int) -> float:
        """A random pause after ``lost`` races lost in a row, in slots of one try's length.

        The window doubles with each loss, up to about two slots per worker seen holding
        runs: with N workers after the branch, tries spread over N slots land one at a time
        instead of colliding again (a fixed cap lets a crowd collapse into a retry storm).
        """
        slot = max(0.01, self._attempt_seconds)
        cap = max(0.5, 2 * slot * self._contenders)
        return random.uniform(0, min(slot * 2 ** min(lost, 8), cap))

    def _commit(self, snap: Snapshot, change: Change) -> str:
        blobs: dict[str, str | None] = {}
        for index, (path, data) in enumerate(change.files.items()):
            if index % PROGRESS_EVERY == 0 and len(change.files) > PROGRESS_EVERY:
                self._progress("writing files", index, len(change.files))
            blobs[path] = None if data is None else self.store.write_blob(data)
        tree = self.store.edit_tree(snap.root, blobs)
        trailers = {**change.trailers, "Gitqueue-Worker": self.worker, "Gitqueue-Nonce": secrets.token_hex(8)}
        return self.store.write_commit(
            tree=tree, parent=snap.tip, message=change.message(trailers), author=self.identity
        )

    def _progress(self, what: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(what, done, total)

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self.store.identity(f"{self.worker.replace('/', '.')}@{socket.gethostname()}")
        return self._identity

    # ------------------------------------------------------------ reading

    def tasks(
        self, state: State | str | None = None, *, problems: list[Problem] | None = None, where: str | None = None
    ) -> list[Task]:
        """Valid tasks, highest priority first then by id; bad files go to ``problems``.

        ``where`` keeps only the tasks a filter expression matches (see :mod:`gitqueue.filters`).
        """
        match = filters.where(where)
        snap = self.snapshot()
        found = (t for t in snap.tasks(State(state) if state else None, problems) if match is None or match(t))
        return sorted(found, key=lambda t: (list(State).index(t.state), -t.priority, id_order(t.id)))

    def get(self, task_id: str) -> Task:
        """One task by id (or by a prefix that names exactly one task)."""
        return self.snapshot().get(task_id)

    def status(self) -> dict[str, Any]:
        """Counts per state, the oldest pending task, and who runs what for how long."""
        snap = self.snapshot()
        counts = {state.value: 0 for state in State}
        oldest: tuple[str, str] | None = None  # (submitted at, id)
        running = []
        invalid = []
        now = self.clock()
        for entry, summary in snap.summaries():
            if summary.error is not None:
                invalid.append({"path": entry.path, "problem": summary.error})
                continue
            counts[entry.state.value] += 1
            if entry.state is State.PENDING:
                key = (summary.submitted_at or "", entry.id)
                if oldest is None or key < oldest:
                    oldest = key
            elif entry.state is State.RUNNING:
                age = now - parse_time(summary.claimed_at) if summary.claimed_at else None
                running.append(
                    {
                        "id": entry.id,
                        "worker": summary.worker,
                        "attempt": summary.attempt,
                        "claimed_at": summary.claimed_at,
                        "age": age,
                    }
                )
        return {
            "queue": self.url,
            "tip": snap.tip,
            "counts": counts,
            "total": sum(counts.values()),
            "oldest_pending": None if oldest is None else {"id": oldest[1], "submitted": oldest[0] or None},
            "running": sorted(running, key=lambda r: id_order(r["id"])),
            "invalid": invalid,
        }

    # ------------------------------------------------------------ submitting

    def submit(self, specs: Iterable[Mapping[str, Any]], *, subject: str | None = None) -> list[str]:
        """Add tasks in one commit. Each spec has ``args`` and optional fields (and ``id``).

        Returns the ids. An id that exists with the same content is skipped; with different
        content it is an error and nothing is submitted.
        """
        prepared = [_prepare(spec, i) for i, spec in enumerate(specs)]
        if not prepared:
            return []

        def build(snap: Snapshot) -> Change | None:
            seq = _next_seq(snap)
            files: dict[str, bytes | None] = {}
            ids: list[str] = []
            stamp = {"at": now_iso(self.clock()), "by": self.identity.name}
            for index, (task_id, task) in enumerate(prepared):
                if index % PROGRESS_EVERY == 0 and len(prepared) > PROGRESS_EVERY:
                    self._progress("making task files", index, len(prepared))
                if task_id is None:
                    task_id = f"{seq:0{SEQ_DIGITS}d}-{_slug(task.args)}"
                    seq += 1
                elif (existing := snap.locate(task_id)) is not None:
                    if _same_content(snap.cache.task(existing), task):
                        ids.append(task_id)
                        continue
                    raise TaskExists(f"task {task_id!r} already exists ({existing.path}) with different content")
                path = f"pending/{task_id}.yaml"
                if path in files:
                    raise TaskExists(f"task id {task_id!r} is given twice in one submit")
                ids.append(task_id)
                files[path] = render(task.evolve(id=task_id, submitted=stamp))
            if not files:
                return None
            _fan_pending(snap, files)
            what = subject or (f"submit {ids[0]}" if len(files) == 1 else f"submit {len(files)} tasks")
            return Change(
                subject=what,
                files=files,
                value=ids,
                trailers={"Gitqueue-Action": "submit", "Gitqueue-Count": str(len(files))},
            )

        return self._transact(build) or [t for t, _ in prepared if t]

    # ------------------------------------------------------------ claiming and finishing

    def claim(
        self,
        *,
        labels: Mapping[str, str] | None = None,
        lease: int | None = None,
        eligible: Callable[[Task], bool] | None = None,
    ) -> Run | None:
        """Claim the best pending task this worker may take, or return None if there is none.

        ``labels`` must satisfy a task's ``requires``; ``eligible`` may refuse more tasks.
        """
        runs = self.claim_batch(1, labels=labels, lease=lease, eligible=eligible)
        return runs[0] if runs else None

    def claim_batch(
        self,
        count: int,
        *,
        labels: Mapping[str, str] | None = None,
        lease: int | None = None,
        eligible: Callable[[Task], bool] | None = None,
        patient: bool = True,
    ) -> list[Run]:
        """Claim up to ``count`` tasks in one commit (the best ones, in order).

        Not ``patient``: one try on the fetched tip, LostRace if another writer won it.
        """
        build = lambda snap: self._claim_change(snap, labels, lease, eligible, count)  # noqa: E731
        return self._transact(build, patient=patient) or []

    def finish(
        self,
        reports: Report | Sequence[Report],
        *,
        then_claim: Mapping[str, Any] | None = None,
        patient: bool = True,
    ) -> Finished:
        """Record how runs ended and, with ``then_claim`` (``claim_batch``'s options, ``count``
        included), claim the next tasks: all in one commit and one push.

        A report from a run that no longer holds its task changes nothing: ``losses`` say why.
        """
        batch = [reports] if isinstance(reports, Report) else list(reports)

        def build(snap: Snapshot) -> Change | None:
            change = Change(subject="", value=Finished())
            for report in batch:
                try:
                    step = self._finish_change(snap, report)
                except (NotHeld, InvalidTask) as exc:  # taken away, or its file broken by hand
                    change.value.losses.append(exc)
                    continue
                change = change.then(step)
                change.value.tasks.append(step.value)
            if then_claim is not None:
                claim = self._claim_change(snap, **then_claim, finishing=len(change.value.tasks))
                if claim is not None:
                    change = change.then(claim)
                    change.value.claimed = claim.value
            return change

        return self._transact(build, patient=patient)

    def done(self, task_id: str, *, token: str | None = None, result: Any = None) -> Task:
        """Finish a running task as done. With ``token``, only if that run still holds it."""
        return self.finish(Report(task_id, token, "done", result=result)).raise_lost()

    def fail(
        self, task_id: str, *, token: str | None = None, error: str | None = None, exit_code: int | None = None
    ) -> Task:
        """Fail a running task's attempt: back to pending while attempts remain, else failed/."""
        return self.finish(Report(task_id, token, "failed", error=error, exit_code=exit_code)).raise_lost()

    def reap(self) -> list[str]:
        """Return tasks whose lease ran out to pending (attempt spent) or to failed.

        A lease runs out when its run shows no sign of life for ``lease`` seconds: judged by
        this process's own monotonic clock while it watches the run's lease ref stand still,
        or, for a run it has not watched that long, by the heartbeat's own timestamp against
        this machine's clock with ``max_skew`` seconds allowed for clocks that differ.
        """

        def build(snap: Snapshot) -> Change | None:
            leases = self.store.leases()
            change: Change | None = None
            reaped: list[str] = []
            running = list(snap.tasks(State.RUNNING))
            tokens = {task.token for task in running}
            self._seen = {key: seen for key, seen in self._seen.items() if key[0] in tokens}  # runs still on
            for task in running:
                reason = self._lease_expired(task, leases.get(task.token or ""))
                if reason is None:
                    continue
                step = self._finish_change(
                    snap, Report(task.id, task.token, "reaped", error=reason), lease_ref=task.token in leases
                )
                change = step if change is None else change.then(step)
                reaped.append(task.id)
            if change is not None:
                change.value = reaped  # the ids, not the first step's Finished
            return change

        if build(self.snapshot(leases=True)) is None:  # a look without the cache's turn: usually all is well
            return []
        return self._transact(build, leases=True) or []

    def _lease_expired(self, task: Task, heartbeat: str | None) -> str | None:
        run = task.run or {}
        lease = float(run.get("lease") or 0)
        key = (str(run.get("token")), heartbeat)
        first_seen = self._seen.setdefault(key, self.monotonic())
        last_wall = self.store.commit_time(heartbeat) if heartbeat else parse_time(str(run.get("claimed_at")))
        silent_wall = self.clock() - last_wall
        watched = self.monotonic() - first_seen
        if watched > lease or silent_wall > lease + self.max_skew:
            silent = max(watched, silent_wall)
            return f"lease expired: no sign of life from {run.get('worker')} for {silent:.0f}s (lease {lease:.0f}s)"
        return None

    def _claim_change(
        self,
        snap: Snapshot,
        labels: Mapping[str, str] | None = None,
        lease: int | None = None,
        eligible: Callable[[Task], bool] | None = None,
        count: int = 1,
        finishing: int = 0,
    ) -> Change | None:
        """Claims of the best ``count`` pending tasks, in one change; its value is the runs.

        A batch keeps this worker's runs within a fair share of the work not done yet (what is
        pending and what is running, split among the workers seen running), so that one worker
        does not hold tasks that idle workers could run. ``finishing`` runs of ours are being
        reported in the same commit: they no longer count.
        """
        if count > 1:
            pending = sum(len(group) for group in snap.pending_groups())
            holders = Counter(summary.worker for _, summary in snap.summaries(State.RUNNING))
            holders[self.worker] -= finishing
            workers = {worker for worker, held in holders.items() if held > 0} | {self.worker}
            self._contenders = len(workers)
            outstanding = pending + sum(max(0, held) for held in holders.values())
            share = -(-outstanding // len(workers))  # ceil: the tail goes in pairs, not ones
            count = max(1, min(count, share - max(0, holders[self.worker])))
        change: Change | None = None
        runs: list[Run] = []
        for task in pending_in_order(snap, labels or {}, self.checks.guard(snap, eligible)):
            record = {
                "token": secrets.token_hex(8),
                "worker": self.worker,
                "claimed_at": now_iso(self.clock()),
                "lease": lease or task.lease or snap.settings.lease,
                "attempt": task.next_attempt,
            }
            claimed = task.evolve(state=State.RUNNING, run=record)
            step = Change(
                subject=f"claim {task.id} by {self.worker} (attempt {record['attempt']})",
                files=self._move(snap, task, claimed),
                trailers={"Gitqueue-Action": "claim", "Gitqueue-Task": task.id, "Gitqueue-Run": str(record["token"])},
            )
            change = step if change is None else change.then(step)
            runs.append(Run(queue=self, task=claimed, record=record))
            if len(runs) >= count:
                break
        if change is not None:
            change.value = runs
        return change

    def _finish_change(self, snap: Snapshot, report: Report, *, lease_ref: bool = False) -> Change:
        """The commit that records ``report``; NotHeld if its run no longer holds the task."""
        task = held_task(snap, report.task_id, report.token)
        record = _attempt_record(task, report.outcome, self.clock(), error=report.error, exit_code=report.exit_code)
        after = task.evolve(run=None, attempts=[*task.attempts, record])
        if report.outcome == "done":
            after.state, after.result = State.DONE, report.result
        elif report.outcome in SPENT_OUTCOMES:
            spent_all = after.attempts_spent >= (task.max_attempts or snap.settings.max_attempts)
            after.state = State.FAILED if spent_all or report.final else State.PENDING
        elif report.outcome == "released":  # claimed in a batch, never started: no attempt at all
            after = task.evolve(state=State.PENDING, run=None)
        else:  # interrupted: the attempt does not count
            after.state = State.PENDING
        verb = {"done": "done", "failed": "fail", "reaped": "reap", "interrupted": "return", "released": "release"}
        subject = f"{verb[report.outcome]} {task.id} by {record['worker'] or self.worker} (attempt {record['attempt']})"
        if report.outcome in SPENT_OUTCOMES:
            subject += ": out of attempts" if after.state is State.FAILED else ": will retry"
        elif report.outcome == "released":
            subject += ": not started"
        also = [f":{LEASE_REFS}/{task.token}"] if lease_ref or report.lease_ref else []
        return Change(
            subject=subject,
            files=self._move(snap, task, after),
            trailers={"Gitqueue-Action": report.outcome, "Gitqueue-Task": task.id, "Gitqueue-Run": str(task.token)},
            value=after,
            also=also,
        )

    # ------------------------------------------------------------ what people do

    def requeue(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Send tasks back to pending (from running, done, failed or cancelled) in one commit.

        ``where`` adds every task a filter matches that can be requeued (e.g. ``state == "failed"``).
        """

        def change(task: Task, now: float) -> Task:
            if task.state is State.PENDING:
                raise InvalidTransition(f"task {task.id} is already pending")
            attempts = task.attempts
            if task.state is State.RUNNING:
                attempts = [*attempts, _attempt_record(task, "requeued", now)]
            last = max((a.get("attempt", 0) for a in attempts), default=0)
            requeued = {"at": now_iso(now), "by": self.identity.name, "from": task.state.value, "after_attempt": last}
            return task.evolve(state=State.PENDING, run=None, attempts=attempts, result=None, requeued=requeued)

        return self._bulk(task_ids, "requeue", change, where=where, target=State.PENDING)

    def cancel(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Withdraw pending or running tasks (a running one's worker stops it) in one commit.

        ``where`` adds every pending or running task a filter matches (e.g. ``args.lr > 0.1``).
        """

        def change(task: Task, now: float) -> Task:
            if task.state in (State.DONE, State.FAILED):
                raise InvalidTransition(f"task {task.id} already finished as {task.state.value}; nothing to cancel")
            if task.state is State.CANCELLED:
                raise InvalidTransition(f"task {task.id} is already cancelled")
            attempts = task.attempts
            if task.state is State.RUNNING:
                attempts = [*attempts, _attempt_record(task, "cancelled", now)]
            return task.evolve(state=State.CANCELLED, run=None, attempts=attempts)

        return self._bulk(task_ids, "cancel", change, where=where, target=State.CANCELLED)

    def _bulk(
        self,
        task_ids: Iterable[str],
        verb: str,
        change: Callable[[Task, float], Task],
        *,
        where: str | None = None,
        target: State | None = None,
    ) -> list[str]:
        wanted = list(dict.fromkeys(task_ids))
        match = filters.where(where)
        if not wanted and match is None:
            return []
        # A filter picks only tasks the move is allowed for (rules.TRANSITIONS), never an error.
        movable = {before for before, after in rules.TRANSITIONS if after is target and before not in (None, target)}

        def build(snap: Snapshot) -> Change | None:
            files: dict[str, bytes | None] = {}
            ids = []
            also: list[str] = []
            chosen = [snap.get(task_id) for task_id in wanted]
            if match is not None:
                named = {task.id for task in chosen}
                chosen += [t for t in snap.tasks() if t.state in movable and t.id not in named and match(t)]
            if not chosen:
                return None
            for task in chosen:
                after = change(task, self.clock())
                files.update(self._move(snap, task, after))
                if task.token and after.state is not State.RUNNING:
                    also.append(f":{LEASE_REFS}/{task.token}")  # its run is cut off: drop its lease ref too
                ids.append(task.id)
            subject = (
                f"{verb} {ids[0]}"
                if len(ids) == 1
                else f"{verb} {len(ids)} tasks: {', '.join(ids[:3])}" + (", ..." if len(ids) > 3 else "")
            )
            return Change(
                subject=subject + f" by {self.identity.name}",
                files=files,
                value=ids,
                trailers={"Gitqueue-Action": verb, "Gitqueue-Task": " ".join(ids[:50])},
                also=also,
            )

        return self._transact(build) or []

    def set_fields(self, task_id: str, changes: Mapping[str, Any]) -> Task | None:
        """Change a task's fields in place, in one commit: ``{"priority": 50}``, ``{"args.lr": 0.02}``.

        Only the changed lines are rewritten; the person's comments and other lines stay.
        A running or done task's ``args`` and ``cmd`` are refused (its run or result uses
        them). Returns the task as changed, or None if nothing changed.
        """
        wanted = dict(changes)

        def build(snap: Snapshot) -> Change | None:
            task = snap.get(task_id)
            text = edits.set_fields(task.text, wanted, path=task.path)
            return self._edit_change(task.path, task, text, verb="set")

        return self._transact(build)

    def edit(self, task_id: str, editor: Callable[[str], str | None]) -> Task | None:
        """Let a person edit a task's file: ``editor(text)`` returns the new text (None or
        empty gives up). An invalid result goes back to the editor with the reason on top.

        Commits and pushes with retries, one commit. If the task moved meanwhile (claimed,
        say), the person's lines are put on the moved file, and refused if they would
        corrupt its run. If someone else changed the person's lines meanwhile, nothing is
        written: :class:`EditConflict` carries the person's text. Also fixes a file that is
        invalid now. Returns the task as changed, or None if nothing changed.
        """
        path, text, task = self._task_file(self.snapshot(), task_id)
        new = self._edited(path, text, task, editor)
        if new is None:
            return None
        task_id = path.rsplit("/", 1)[-1][: -len(".yaml")]

        def build(snap: Snapshot) -> Change | None:
            now_path, now_text, now_task = self._task_file(snap, task_id)
            mine = rules.person_part(new)
            if now_text == text:
                merged = new
            elif rules.person_part(now_text) == rules.person_part(text):
                merged = mine + now_text[len(rules.person_part(now_text)) :]
            else:
                raise EditConflict(
                    f"{now_path} changed while you edited it; nothing was written. Edit it again.", text=new
                )
            return self._edit_change(now_path, now_task, merged, verb="edit")

        return self._transact(build)

    def log(self, task_id: str) -> list[history.Event]:
        """A task's life from the queue's git history, oldest first (also of deleted tasks)."""
        snap = self.snapshot()
        try:
            resolved = snap.get(task_id).id
        except (TaskNotFound, InvalidTask):
            resolved = check_id(task_id)
        events = history.task_history(self.store, snap.tip, resolved) if snap.tip else []
        if not events:
            raise TaskNotFound(f"no task {task_id!r} in the queue or its history")
        return events

    def validate(self) -> list[Problem]:
        """Every problem of the queue at the remote's tip (see :mod:`gitqueue.validate`)."""
        checked = None if self.on_progress is None else lambda n: self._progress("checking files", n, None)
        return rules.check_tree(self.store, self.snapshot().root, progress=checked)

    def _task_file(self, snap: Snapshot, task_id: str) -> tuple[str, str, Task | None]:
        """A task's path, text and parsed task; for an invalid file, None for the task."""
        try:
            task = snap.get(task_id)
            return task.path, task.text, task
        except InvalidTask:
            entry = snap.locate(task_id)
            if entry is None:
                raise
            return entry.path, self.store.read(entry.blob).decode("utf-8", "replace"), None

    def _edited(self, path: str, text: str, task: Task | None, editor: Callable[[str], str | None]) -> str | None:
        shown, refused = text, None
        while True:
            answer = editor(shown)
            if answer is None or not edits.strip_notes(answer).strip():
                return None
            if refused is not None and answer == shown:
                raise refused  # saved unchanged after a refusal: the person gives up
            new = edits.strip_notes(answer)
            if new == text:
                return None
            try:
                self._check_edit(path, task, new)
                return new
            except (InvalidTask, InvalidTransition) as exc:
                refused, shown = exc, edits.with_notes(new, str(exc))

    def _check_edit(self, path: str, before: Task | None, text: str) -> Task:
        after = rules.read_task(path, BLOB_MODE, text.encode())
        problem = rules.edit_problem(before, after) if before is not None else None
        if problem:
            raise InvalidTransition(f"{path}: {problem}")
        return after

    def _edit_change(self, path: str, before: Task | None, text: str, *, verb: str) -> Change | None:
        if before is not None and text == before.text:
            return None
        after = self._check_edit(path, before, text)
        what = edits.describe(before, after) if before is not None else "a valid file again"
        return Change(
            subject=f"{verb} {after.id} by {self.identity.name}: {what}",
            files={path: text.encode()},
            trailers={"Gitqueue-Action": "edit", "Gitqueue-Task": after.id},
            value=after,
        )

    # ------------------------------------------------------------ helpers

    def _move(self, snap: Snapshot, before: Task, after: Task) -> dict[str, bytes | None]:
        """The file changes that turn ``before`` (read from ``snap``) into ``after``."""
        if after.state is before.state:
            return {before.path: render(after)}
        return {before.path: None, snap.path_for(after.state, after.id): render(after)}


@dataclass
class Run:
    """A claimed task, held by this run until it reports. ``with run:`` fails it on an exception."""

    queue: Queue
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
        self.finished = self.queue.done(self.id, token=self.token, result=result)
        return self.finished

    def fail(self, error: str | None = None, *, exit_code: int | None = None) -> Task:
        self.finished = self.queue.fail(self.id, token=self.token, error=error, exit_code=exit_code)
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


# ---------------------------------------------------------------- pure helpers


def best_pending(
    snap: Snapshot, labels: Mapping[str, str], eligible: Callable[[Task], bool] | None = None
) -> Task | None:
    """Highest priority first, then lowest id, among valid pending tasks this worker may take."""
    return next(pending_in_order(snap, labels, eligible), None)


def pending_in_order(
    snap: Snapshot, labels: Mapping[str, str], eligible: Callable[[Task], bool] | None = None
) -> Iterator[Task]:
    """Valid pending tasks this worker may take, best first (invalid files are never claimed).

    Each group of pending files is sorted once per tree id and the groups are merged
    lazily, so taking the first few reads only the first few of each group.
    """
    summaries = snap.cache.summaries
    for _rank, _order, entry in heapq.merge(*snap.pending_groups(), key=lambda c: (c[0], c[1])):
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


def _attempt_record(
    task: Task, outcome: str, now: float, *, error: str | None = None, exit_code: int | None = None
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
    if exit_code is not None:
        record["exit_code"] = exit_code
    if error:
        record["error"] = error[-ERROR_TAIL:]
    return record


def _prepare(spec: Mapping[str, Any], index: int) -> tuple[str | None, Task]:
    """Validate one submitted spec; returns its explicit id (or None) and the task."""
    where = f"task #{index + 1}"
    if not isinstance(spec, Mapping):
        raise InvalidTask(where, f"a task must be a mapping, not {type(spec).__name__}")
    spec = dict(spec)
    task_id = spec.pop("id", None)
    if task_id is not None:
        check_id(str(task_id))
        where = f"task {task_id!r}"
    unknown = [k for k in spec if k not in PERSON_FIELDS]
    if unknown:
        raise InvalidTask(where, f"unknown field {unknown[0]!r} (fields: id, {', '.join(PERSON_FIELDS)})")
    task = task_from_mapping(spec, task_id=str(task_id or "new"), state=State.PENDING, path=where)
    return (None if task_id is None else str(task_id)), task


def _same_content(existing: Task, new: Task) -> bool:
    return existing.person_fields() == new.person_fields()


def _next_seq(snap: Snapshot) -> int:
    """One more than the highest numbered id in the queue, so generated ids sort by submission."""
    highest = 0
    for entry in snap.all_entries():
        match = _SEQ_RE.match(entry.id)
        if match:
            highest = max(highest, int(match.group(1)))
    return highest + 1


def _slug(args: Mapping[str, Any], limit: int = 48) -> str:
    """``{"lr": 0.01, "bs": 32}`` -> ``lr0.01-bs32``; long or empty ones become a short hash."""
    parts = [re.sub(r"[^A-Za-z0-9._]+", "_", f"{k}{v}") for k, v in args.items()]
    slug = "-".join(parts).strip("._-")
    if 0 < len(slug) <= limit:
        return slug
    digest = hashlib.sha1(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (slug[: limit - 11].rstrip("._-") + "-" + digest) if slug else digest


def _fan_pending(snap: Snapshot, files: dict[str, bytes | None]) -> None:
    """Send new pending files to fan-out folders once pending/ would exceed its flat limit."""
    room = FLAT_LIMIT - snap.flat_count(State.PENDING)
    if len(files) <= room:
        return
    for path in list(files):
        task_id = path[len("pending/") : -len(".yaml")]
        files[f"pending/{fan(task_id)}/{task_id}.yaml"] = files.pop(path)




__all__ = ["Change", "GitqueueError", "Queue", "Run", "best_pending", "default_worker"]
