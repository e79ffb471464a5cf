"""The queue: every state change is one commit, pushed as a compare-and-swap on the branch.

``Queue._transact`` is the claim protocol's loop, and every write goes through it:
fetch the tip, build the change from that exact snapshot, commit it without a work tree,
push it without force. A rejected push means another writer moved first: wait a jittered,
growing moment and rebuild from the new tip (never rebase an old commit).
"""

from __future__ import annotations

import dataclasses
import functools
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
from typing import Any, TypeVar, cast

from gitqueue import branches, config, deps, edits, filters, history, leftovers
from gitqueue import validate as rules
from gitqueue.errors import (
    CacheDamaged,
    EditConflict,
    GitqueueError,
    InvalidTask,
    InvalidTransition,
    LostRace,
    NotHeld,
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
    RemoteRefs,
    init_bare,
    is_local_path,
    local_git_dir,
    remote_refs,
    set_local_head,
    tell_retrying,
)
from gitqueue.index import Summary
from gitqueue.snapshot import FLAT_LIMIT, Problem, Snapshot, TaskCache
from gitqueue.sweep import Sweep
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
    result_problem,
    same_args,
    task_from_mapping,
)
from gitqueue.urls import CREDENTIALS_ADVICE, has_secret, redact

ERROR_TAIL = 2000
FIRST_RETRY = 0.1  # seconds before asking an unreachable remote again, doubling up to 5 s
STUCK_LIMIT = 8  # lost races in a row with the branch not moving: something else is wrong
OPTIMISTIC_WINDOW = 2.0  # seconds after a push from our cache in which we build on it without fetching
OPTIMISTIC_STREAK = 4  # then pause a try's length: a rival elsewhere, fetching each try, gets its chance
_SEQ_RE = re.compile(r"^(\d+)-")
PROGRESS_EVERY = 1000  # items between two reports to on_progress
HEAL_TRIES = 3  # rebuilds of a damaged cache within one operation before it gives up
_F = TypeVar("_F", bound=Callable[..., Any])


def _heals(method: _F) -> _F:
    """A read that meets a damaged local cache rebuilds it (see GitStore.heal) and reads again."""

    @functools.wraps(method)
    def healing(self: Queue, *args: Any, **kwargs: Any) -> Any:
        heals = 0
        while True:
            try:
                return method(self, *args, **kwargs)
            except CacheDamaged as exc:
                heals = self._rebuild(exc, heals)

    return cast(_F, healing)


def default_worker() -> str:
    """``host/pid``; under Slurm the job's own name for itself, ``slurm-<array job>_<task>``
    (or ``slurm-<job>``), so that status and the queue's history say which job ran what."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
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


@dataclass(frozen=True)
class Reaped:
    """A dead run whose task went back to the queue: whose it was, why, and whether its
    attempt was spent (only a run that started spends one)."""

    id: str
    worker: str
    reason: str
    spent: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        branch: str | None = None,
        cache: Path | None = None,
        patience: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_skew: float = 30.0,
        remote: RemoteRefs | None = None,
    ) -> None:
        self.url = redact(url)  # for people: never with a secret the URL holds
        self._git_url = url
        self.worker = worker or default_worker()
        patience = config.patience() if patience is None else patience
        self.patience = patience
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self._remote = remote
        self._cache_root = cache  # where caches (and a kept-open ssh connection) live; None: the default
        # No branch given: the queue is where the remote's HEAD points (git clone's default).
        self.branch = branch or self.remote_refs().head or config.DEFAULT_BRANCH
        self.store = GitStore(url, branch=self.branch, cache=cache, patience=patience)
        self.cache = TaskCache(self.store)
        self.max_skew = max_skew
        self._seen: dict[tuple[str, str | None], float] = {}  # (run token, heartbeat) -> first seen
        self._attempt_seconds = 0.03  # moving average of one try (fetch, build, push): the backoff's slot
        self.backed_off = 0.0  # seconds slept after lost races
        self._streak = 0  # our pushes in a row that landed on our own last push, unfetched
        self._last_landed: str | None = None
        self._contenders = 1  # workers seen holding runs at the last claim or lost race: how wide to spread
        self._identity: Identity | None = None
        self.notes: list[str] = []  # what init did that people should know
        self.checks = rules.WorkerChecks()  # broken files a worker skips, reported once each
        # Long operations (a 100,000-task submit, validate) report (what, done, total or None) here.
        self.on_progress: Callable[[str, int, int | None], None] | None = None

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> Queue:
        """Attach to an initialised queue (``url``, else ``GITQUEUE_QUEUE``, else ``.gitqueue``).

        The branch is ``branch=``, else ``GITQUEUE_BRANCH`` or the ``.gitqueue`` file's, else
        the one the remote's HEAD names.
        """
        ref = config.resolve_queue(url)
        told = options.get("branch") or ref.branch
        queue = cls(ref.url, **{**options, "branch": told})
        try:
            ready = queue.snapshot().initialised
            if not ready and told is None:
                queue = queue._older_default(options)
                ready = queue.branch == config.DEFAULT_BRANCH and queue.snapshot().initialised
            if not ready:
                raise branches.not_a_queue(queue.url, queue.branch, queue.remote_refs())
        except BaseException:
            queue.close()
            raise
        return queue

    def _older_default(self, options: dict[str, Any]) -> Queue:
        """A queue made before queues followed the remote's HEAD: on ``main`` whatever HEAD says.
        Returns that queue (and closes this one), or this one if ``main`` holds none."""
        refs = self.remote_refs()
        if self.branch == config.DEFAULT_BRANCH or config.DEFAULT_BRANCH not in refs.branches:
            return self
        older = type(self)(self._git_url, **{**options, "branch": config.DEFAULT_BRANCH, "remote": refs})
        try:
            found = older.snapshot().initialised
        except BaseException:
            older.close()
            raise
        if not found:
            older.close()
            return self
        self.close()
        return older

    @classmethod
    def init(
        cls,
        url: str | None = None,
        *,
        folder: Path | None = None,
        settings: config.Settings | None = None,
        branch: str | None = None,
        hooks: bool = True,
        **options: Any,
    ) -> Queue:
        """Create or attach a queue. With no ``url``, an embedded bare repository in ``folder``.

        The queue goes on ``branch``, else on the branch the remote's HEAD names; a
        repository on this machine whose HEAD names no existing branch gets its HEAD
        pointed at the queue's. A repository that holds other work is refused unless
        ``branch`` names where the queue goes. A repository ``init`` creates gets the
        server hook unless ``hooks`` is off. The folder gets a ``.gitqueue`` file naming
        the queue (never a password its URL holds), so later commands find it.
        Attaching to an initialised queue changes nothing in it. ``notes`` on the
        returned queue say what ``init`` did that people should know.
        """
        folder = folder or Path.cwd()
        target = url or str(folder / config.EMBEDDED_REPO)
        notes: list[str] = []
        created = _create_local(target, branch=branch or config.DEFAULT_BRANCH)
        if is_local_path(target):
            target = str(Path(target).expanduser().resolve())
        refs = remote_refs(target)
        chosen = branches.init_branch(refs, branch)
        if created is not None and hooks:
            from gitqueue import hooks as server_hooks

            for path in server_hooks.install(server=created.resolve(), branch=chosen):
                notes.append(f"installed {path}: it refuses pushes that would break the queue (--no-hooks: none)")
        queue = cls(target, branch=chosen, remote=refs, **options)
        try:
            if not queue.snapshot().initialised and refs.branches and branch is None:
                raise branches.not_a_queue(queue.url, chosen, refs, initialising=True)
            queue._initialise(settings or config.Settings())
            # A local HEAD that shows nothing (it names no existing branch) now shows the queue.
            if local_git_dir(target) is not None and refs.head != chosen and (refs.head is None or refs.head_is_unborn):
                set_local_head(target, chosen)
                notes.append(f"pointed {queue.url}'s HEAD at {chosen}, so that `git clone` shows the queue")
                queue._remote = RemoteRefs(chosen, refs.branches)
        except BaseException:
            queue.close()
            raise
        folder.mkdir(parents=True, exist_ok=True)
        notes += _remember(folder, target if url else config.EMBEDDED_REPO, chosen)
        queue.notes = notes
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

    def remote_refs(self) -> RemoteRefs:
        """The remote's HEAD and branches, asked once (retrying while it is unreachable)."""
        deadline, delay = self.clock() + self.patience, 0.1
        while self._remote is None:
            try:
                self._remote = remote_refs(self._git_url, root=self._cache_root)
            except RemoteUnavailable as exc:
                delay = self._wait_for_remote(exc, deadline, delay)
        return self._remote

    def head_warning(self) -> str | None:
        """Why people would miss the queue: the remote's HEAD names another branch. None if it does not."""
        return branches.head_warning(self.url, self.branch, self.remote_refs())

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the protocol

    def snapshot(self, *, leases: bool = False) -> Snapshot:
        """Fetch, then view the queue at the remote's tip (retrying while it is unreachable,
        rebuilding a damaged cache)."""
        deadline = self.clock() + self.patience
        delay = FIRST_RETRY
        heals = 0
        while True:
            try:
                return Snapshot(self.store, self.cache, self.store.fetch(leases=leases))
            except RemoteUnavailable as exc:
                delay = self._wait_for_remote(exc, deadline, delay)
            except CacheDamaged as exc:
                heals = self._rebuild(exc, heals)

    def _rebuild(self, exc: CacheDamaged, heals: int) -> int:
        """Rebuild the damaged cache, unless it was rebuilt HEAL_TRIES times in this operation
        already (then the damage is not the cache's: say so). Returns the count so far."""
        if heals >= HEAL_TRIES:
            raise CacheDamaged(f"{exc} (still, after rebuilding the cache {self.store.path} {heals} times)") from exc
        self.store.heal(str(exc))
        return heals + 1

    def _wait_for_remote(self, exc: RemoteUnavailable, deadline: float, delay: float) -> float:
        """Sleep about ``delay`` before asking an unreachable remote again (raise ``exc`` if
        that would pass ``deadline``); returns the next, longer delay."""
        if self.clock() + delay > deadline:
            raise exc
        if delay == FIRST_RETRY:
            tell_retrying(exc, self.patience)
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
        lost = still = heals = 0
        last_tip: str | None = None
        fetch = leases  # lease refs come only with a fetch
        unreachable: RemoteUnavailable | None = None
        deadline, delay = float("inf"), FIRST_RETRY
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
            except CacheDamaged as exc:  # rebuilt: the next try builds afresh on a fetched tip
                heals, fetch = self._rebuild(exc, heals), True
                continue
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

    @_heals
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

    @_heals
    def get(self, task_id: str) -> Task:
        """One task by id (or by a prefix that names exactly one task)."""
        return self.snapshot().get(task_id)

    @_heals
    def status(self) -> dict[str, Any]:
        """Counts per state, the oldest pending task, who runs what for how long, and the
        pending tasks that wait on others (``waiting``; with the reason, those ``stuck``).

        Each running task's ``phase`` says how far its run is: ``running`` (it pushed a
        heartbeat, or its worker on this machine noted that it started), ``held`` (claimed in
        a batch by a worker of this machine, not started yet) or ``claimed`` (no heartbeat
        yet from a worker elsewhere: it may not have started). ``stopping`` lists the runs
        whose task was taken away (cancelled, say) while a worker of this machine still stops
        their command.

        An invalid file is not counted but listed under ``invalid``; so is a task whose id
        sits in two folders (counted in neither: which one holds the truth is a person's call).
        The oldest pending task is the one submitted first; a hand-written task (no submit
        time) is the oldest only when no pending task has one.
        """
        snap = self.snapshot(leases=True)
        runs = {run["id"]: run for run in self.runs(snap=snap)}
        noted = leftovers.noted_runs(self.runs_folder, queue=self.here)
        counts = {state.value: 0 for state in State}
        oldest: tuple[bool, str, str, str] | None = None  # (no time, submitted at, id order, id)
        running = []
        waiting: list[deps.Waiting] = []
        states = snap.states()
        now = self.clock()
        listed = list(snap.summaries())
        homes: dict[str, list[str]] = {}
        for entry, summary in listed:
            if summary.error is None:
                homes.setdefault(entry.id, []).append(entry.path)
        invalid = [{"path": rules.display(e.path), "problem": rules.display(s.error)} for e, s in listed if s.error]
        for entry, summary in listed:
            if summary.error is not None:
                continue
            if len(homes[entry.id]) > 1:
                twins = ", ".join(path for path in homes[entry.id] if path != entry.path)
                problem = f"{entry.path}: task {entry.id!r} is also in {twins}: a task lives in one folder"
                problem += " (not counted)"
                invalid.append({"path": rules.display(entry.path), "problem": rules.display(problem)})
                continue
            counts[entry.state.value] += 1
            if entry.state is State.PENDING:
                key = (summary.submitted_at is None, summary.submitted_at or "", id_order(entry.id), entry.id)
                if oldest is None or key < oldest:
                    oldest = key
                if summary.after and (held := states.waiting(entry.id, summary.after)) is not None:
                    waiting.append(held)
            elif entry.state is State.RUNNING:
                run = runs.get(entry.id, {})
                running.append(_running_row(entry.id, summary, now, run, noted.get(str(run.get("token")))))
        stopping = [
            {"id": run.task_id, "worker": run.worker}
            for run in noted.values()
            if run.stopping and run.alive and run.token not in {r["token"] for r in runs.values()}
        ]
        return {
            "queue": self.url,
            "branch": self.branch,
            "warnings": [w for w in (self.head_warning(),) if w],
            "tip": snap.tip,
            "counts": counts,
            "total": sum(counts.values()),
            "oldest_pending": None if oldest is None else {"id": oldest[3], "submitted": oldest[1] or None},
            "running": sorted(running, key=lambda r: id_order(r["id"])),
            "stopping": sorted(stopping, key=lambda r: id_order(r["id"])),  # noted by workers of this machine
            "waiting": len(waiting),
            "stuck": [w.to_dict() for w in sorted(waiting, key=lambda w: id_order(w.task_id)) if w.stuck],
            "invalid": invalid,
        }

    def waiting_on(self, task: Task) -> deps.Waiting | None:
        """What a pending ``task`` waits on before it can be claimed, and why it is stuck."""
        if task.state is not State.PENDING or not task.after:
            return None
        return self.snapshot().states().waiting(task.id, task.after)

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

    def submit_sweep(self, plan: Sweep, **fields: Any) -> list[str]:
        """Add every task of a sweep (grid, samples, repeats) in one commit whose subject says
        what made them; ``fields`` (``priority``, ``tags``, ``after``, ...) go into each task.

        >>> q.submit_sweep(Sweep(sample={"lr": "loguniform:1e-5:1e-1"}, samples=50, seed=0))  # doctest: +SKIP
        """
        args = plan.args()
        return self.submit([{**fields, "args": a} for a in args], subject=plan.subject(len(args)))

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
        batch = [self._with_claimed_args(report) for report in batch]

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
                finished = change.value.tasks
                done = [task.id for task in finished if task.state is State.DONE]  # their dependents may go now
                claim = self._claim_change(snap, **then_claim, finishing=len(finished), done=done)
                if claim is not None:
                    change = change.then(claim)
                    change.value.claimed = claim.value
            return change

        return self._transact(build, patient=patient)

    def _with_claimed_args(self, report: Report) -> Report:
        """A report from a process that does not know the args its run used (``gitqueue done``
        from a script): take them from the claim commit, so that a change to the file's args
        since then is recorded. Workers pass their args and pay nothing for this."""
        if report.args is not None or report.token is None or report.outcome not in ("done", *SPENT_OUTCOMES):
            return report
        snap = self.snapshot()
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

    def done(self, task_id: str, *, token: str | None = None, result: Any = None, args: Any = None) -> Task:
        """Finish a running task as done. With ``token``, only if that run still holds it;
        ``args`` are those the run used, recorded if the file's changed meanwhile."""
        return self.finish(Report(task_id, token, "done", result=result, args=args)).raise_lost()

    def fail(
        self,
        task_id: str,
        *,
        token: str | None = None,
        error: str | None = None,
        exit_code: int | None = None,
        args: Any = None,
    ) -> Task:
        """Fail a running task's attempt: back to pending while attempts remain, else failed/."""
        report = Report(task_id, token, "failed", error=error, exit_code=exit_code, args=args)
        return self.finish(report).raise_lost()

    @property
    def runs_folder(self) -> Path:
        """Where this machine's workers note their commands and claims (see ``leftovers``)."""
        return self.store.path.parent / "runs"

    @property
    def here(self) -> str:
        """How this queue is named in those notes: its remote and branch."""
        return f"{self.store.url} {self.store.branch}"

    def reap(self) -> list[str]:
        """Return the tasks of dead runs to the queue (see ``reap_runs``); their ids."""
        return [reaped.id for reaped in self.reap_runs()]

    @_heals
    def reap_runs(self) -> list[Reaped]:
        """Return the tasks of dead runs (see ``reap_dead``), those of workers of this machine
        whose process is gone included; drop those workers' notes once nothing of theirs is
        held any more."""
        noted = leftovers.noted_runs(self.runs_folder, queue=self.here)
        gone = {token: run for token, run in noted.items() if not run.alive}
        settled: set[str] = set()
        started = {token: run.started for token, run in noted.items()}
        reaped = self.reap_dead(gone=set(gone), started=started, settled=settled)
        leftovers.forget_dead(gone, settled)
        return reaped

    def reap_dead(
        self,
        *,
        gone: set[str] | None = None,
        started: Mapping[str, bool] | None = None,
        settled: set[str] | None = None,
    ) -> list[Reaped]:
        """Return tasks whose run is dead to pending, or to failed when out of attempts.

        A run is dead when its lease ran out: no sign of life for ``lease`` seconds, judged by
        this process's own monotonic clock while it watches the run's lease ref stand still,
        or, for a run it has not watched that long, by the heartbeat's own timestamp against
        this machine's clock with ``max_skew`` seconds allowed for clocks that differ. It is
        dead at once when ``gone`` names its token: its worker's process, on this machine, has
        ended (see ``leftovers.noted_runs``).

        Only a run that started spends an attempt: one that pushed a heartbeat, or that
        ``started`` (a worker's note on this machine) says has started. One that never did
        (a claim its worker held in a batch, never run) goes back as if released. ``settled``
        gets the tokens of ``gone`` that hold no task once this returns.
        """
        gone, started_here = gone or set(), started or {}
        done_with: set[str] = set()  # tokens of ``gone`` that no task is held by, once the change lands

        def build(snap: Snapshot) -> Change | None:
            leases = self.store.leases()
            change: Change | None = None
            reaped: list[Reaped] = []
            running = list(snap.tasks(State.RUNNING))
            tokens = {task.token for task in running}
            done_with.clear()
            done_with.update(token for token in gone if token not in tokens)
            self._seen = {key: seen for key, seen in self._seen.items() if key[0] in tokens}  # runs still on
            for task in running:
                token = task.token or ""
                started = token in leases or started_here.get(token, False)  # a heartbeat, or its note
                reason: str | None = (
                    f"worker {(task.run or {}).get('worker')} is gone: its process on this machine ended"
                )
                if token not in gone:
                    reason = self._lease_expired(task, leases.get(token))
                if reason is None:
                    continue
                report = Report(task.id, task.token, "reaped" if started else "abandoned", error=reason)
                step = self._finish_change(snap, report, lease_ref=token in leases)
                change = step if change is None else change.then(step)
                reaped.append(Reaped(task.id, str((task.run or {}).get("worker")), reason, spent=started))
                done_with.add(token)
            if change is not None:
                change.value = reaped  # the ids, not the first step's Finished
            return change

        if build(self.snapshot(leases=True)) is None:  # a look without the cache's turn: usually all is well
            reaped: list[Reaped] = []
        else:
            reaped = self._transact(build, leases=True) or []
        if settled is not None:
            settled.update(done_with)
        return reaped

    def runs(self, *, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """Every run under way: its task, worker, attempt, claim time, last heartbeat (None
        before the first) and when its lease runs out by the clocks that wrote them."""
        snap = snap or self.snapshot(leases=True)
        leases = self.store.leases()
        found = []
        for task in snap.tasks(State.RUNNING):
            run = task.run or {}
            heartbeat = leases.get(task.token or "")
            claimed = _time_or_none(run.get("claimed_at"))
            beat = self.store.commit_time(heartbeat) if heartbeat else None
            last = beat if beat is not None else claimed
            lease = float(run.get("lease") or snap.settings.lease)
            found.append(
                {
                    "id": task.id,
                    "worker": run.get("worker"),
                    "attempt": run.get("attempt"),
                    "token": task.token,
                    "claimed_at": run.get("claimed_at"),
                    "heartbeat": None if beat is None else now_iso(beat),
                    "lease": lease,
                    "lease_ends": None if last is None else now_iso(last + lease),
                    "seconds_left": None if last is None else round(last + lease - self.clock(), 1),
                }
            )
        return sorted(found, key=lambda r: id_order(r["id"]))

    def _lease_expired(self, task: Task, heartbeat: str | None) -> str | None:
        run = task.run or {}
        lease = float(run.get("lease") or 0)
        key = (str(run.get("token")), heartbeat)
        first_seen = self._seen.setdefault(key, self.monotonic())
        last_wall = self.store.commit_time(heartbeat) if heartbeat else _time_or_none(run.get("claimed_at"))
        silent_wall = 0.0 if last_wall is None else self.clock() - last_wall  # broken by hand: watch it
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
        done: Iterable[str] = (),
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
        for task in pending_in_order(snap, labels or {}, self.checks.guard(snap, eligible), done=done):
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
        record = _attempt_record(
            task, report.outcome, self.clock(), error=report.error, exit_code=report.exit_code, ran_with=report.args
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
        subject = f"{verb[report.outcome]} {task.id} by {record['worker'] or self.worker} (attempt {record['attempt']})"
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

    @_heals
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

    @_heals
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


# ---------------------------------------------------------------- pure helpers


def _running_row(
    task_id: str, summary: Summary, now: float, run: Mapping[str, Any], note: leftovers.NotedRun | None
) -> dict[str, Any]:
    """One line of ``status``'s running table: ``run`` is what ``Queue.runs`` says of it (its
    heartbeat, its lease's end), ``note`` what its worker on this machine noted, if any."""
    claimed = _time_or_none(summary.claimed_at)
    phase = "running" if run.get("heartbeat") or (note and note.started) else "claimed"
    return {
        "id": task_id,
        "worker": summary.worker,
        "attempt": summary.attempt,
        "claimed_at": summary.claimed_at,
        "age": None if claimed is None else now - claimed,
        "phase": "held" if note and not note.started and phase == "claimed" else phase,
        "heartbeat": run.get("heartbeat"),
        "lease_ends": run.get("lease_ends"),
    }


def best_pending(
    snap: Snapshot, labels: Mapping[str, str], eligible: Callable[[Task], bool] | None = None
) -> Task | None:
    """Highest priority first, then lowest id, among valid pending tasks this worker may take."""
    return next(pending_in_order(snap, labels, eligible), None)


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


def _time_or_none(value: Any) -> float | None:
    """A time gitqueue wrote, or None if it is missing or was broken by hand."""
    try:
        return parse_time(str(value)) if value else None
    except ValueError:
        return None


def _attempt_record(
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


def _create_local(target: str, *, branch: str) -> Path | None:
    """Make the bare repository a local ``target`` names if nothing is there; returns it if made."""
    if not (is_local_path(target) or target.startswith("file://")):
        return None
    local = Path(target.removeprefix("file://")).expanduser()
    if local.exists() and not (local.is_dir() and not any(local.iterdir())):
        return None
    init_bare(local, branch=branch)
    return local


def _remember(folder: Path, url: str, branch: str) -> list[str]:
    """Write ``folder/.gitqueue``; returns what to tell people about it."""
    notes = []
    old = folder / config.CONFIG_FILE
    try:
        before = config.read_queue_ref(old) if old.is_file() else None
    except GitqueueError:  # unreadable: it is replaced, and named nothing one could reach
        before = None
    path = config.write_config(folder, url, branch=branch)
    now = config.read_queue_ref(path)
    if before is not None and (before.url, before.branch or now.branch) != (now.url, now.branch):
        where = before.url + (f" (branch {before.branch})" if before.branch else "")
        notes.append(
            f"{path} named another queue, {where}; it now names this one. That queue is unchanged: "
            f"`--queue {before.url}` still reaches it"
        )
    if has_secret(url):
        notes.append(
            f"{path} names {redact(url)}, without the password or token in the URL you gave. {CREDENTIALS_ADVICE}"
        )
    return notes


__all__ = ["Change", "GitqueueError", "Queue", "Run", "best_pending", "default_worker"]
