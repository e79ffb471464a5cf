"""The queue facade: open or create a queue, read it, and every operation on it by name.

``Queue`` is what scripts, the CLI and the worker hold. It owns opening (``open``, ``init``,
the remote's HEAD and branches), the reads (``tasks``, ``get``, ``status``, ``log``,
``validate``) and closing; every other operation is a thin delegation to the room that owns it:

- :mod:`gitqueue.protocol`: a change and the compare-and-swap transaction every write goes
  through (fetch, build, commit, push, back off and redo);
- :mod:`gitqueue.lifecycle`: claiming and finishing tasks (``Run``, ``Report``, ``Finished``);
- :mod:`gitqueue.reaping`: dead runs and their leases (``Reaped``, ``runs``);
- :mod:`gitqueue.people`: what people do (submit, requeue, cancel, set, edit);
- :mod:`gitqueue.reads`: how ``status`` describes a snapshot.

Imports go one way: queue -> people, reaping -> lifecycle -> protocol -> gitstore.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gitqueue import branches, config, deps, filters, history, leftovers, reads
from gitqueue import validate as rules
from gitqueue.errors import GitqueueError, InvalidTask, RemoteUnavailable, TaskNotFound
from gitqueue.gitstore import (
    GitStore,
    Identity,
    RemoteRefs,
    init_bare,
    is_local_path,
    local_git_dir,
    remote_refs,
    set_local_head,
)
from gitqueue.lifecycle import ERROR_TAIL, Finished, Lifecycle, Report, Run, best_pending, held_task, pending_in_order
from gitqueue.people import People
from gitqueue.protocol import Change, Protocol, heals, wait_for_remote
from gitqueue.reaping import Reaped, Reaper
from gitqueue.snapshot import Problem, Snapshot, TaskCache
from gitqueue.sweep import Sweep
from gitqueue.task import State, Task, check_id, id_order
from gitqueue.urls import CREDENTIALS_ADVICE, has_secret, redact


def default_worker() -> str:
    """``host/pid``; under Slurm the job's own name for itself, ``slurm-<array job>_<task>``
    (or ``slurm-<job>``), so that status and the queue's history say which job ran what."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return f"{socket.gethostname()}/{os.getpid()}"


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
        self.notes: list[str] = []  # what init did that people should know
        self.checks = rules.WorkerChecks()  # broken files a worker skips, reported once each
        # Long operations (a 100,000-task submit, validate) report (what, done, total or None) here.
        self.on_progress: Callable[[str, int, int | None], None] | None = None
        self.protocol = Protocol(
            self.store,
            self.cache,
            url=self.url,
            worker=self.worker,
            patience=patience,
            clock=clock,
            sleep=sleep,
            monotonic=monotonic,
            progress=self._progress,
        )
        self.lifecycle = Lifecycle(self.protocol, owner=self, checks=self.checks)
        self.reaper = Reaper(
            self.lifecycle, monotonic=monotonic, max_skew=max_skew, runs_folder=self.runs_folder, here=self.here
        )
        self.people = People(self.protocol)

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
                delay = wait_for_remote(
                    exc, deadline, delay, clock=self.clock, sleep=self.sleep, patience=self.patience
                )
        return self._remote

    def head_warning(self) -> str | None:
        """Why people would miss the queue: the remote's HEAD names another branch. None if it does not."""
        return branches.head_warning(self.url, self.branch, self.remote_refs())

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the protocol (gitqueue.protocol)

    def snapshot(self, *, leases: bool = False) -> Snapshot:
        """Fetch, then view the queue at the remote's tip (retrying while it is unreachable,
        rebuilding a damaged cache)."""
        return self.protocol.snapshot(leases=leases)

    def _transact(
        self, build: Callable[[Snapshot], Change | None], *, leases: bool = False, patient: bool = True
    ) -> Any:
        """Land the change ``build`` makes of the tip (see :meth:`Protocol.transact`)."""
        return self.protocol.transact(build, leases=leases, patient=patient)

    def _backoff(self, lost: int) -> float:
        """A random pause after ``lost`` races lost in a row (see :meth:`Protocol.backoff`)."""
        return self.protocol.backoff(lost)

    def _commit(self, snap: Snapshot, change: Change) -> str:
        return self.protocol.commit(snap, change)

    def _progress(self, what: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(what, done, total)

    @property
    def identity(self) -> Identity:
        return self.protocol.identity

    @property
    def backed_off(self) -> float:
        """Seconds slept after lost races."""
        return self.protocol.backed_off

    # ------------------------------------------------------------ reading

    @heals
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

    @heals
    def get(self, task_id: str) -> Task:
        """One task by id (or by a prefix that names exactly one task)."""
        return self.snapshot().get(task_id)

    @heals
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
        runs = self.runs(snap=snap)
        noted = leftovers.noted_runs(self.runs_folder, queue=self.here)
        now = self.clock()
        head = {"queue": self.url, "branch": self.branch, "warnings": [w for w in (self.head_warning(),) if w]}
        return reads.status(snap, runs=runs, noted=noted, now=now, head=head)

    def waiting_on(self, task: Task) -> deps.Waiting | None:
        """What a pending ``task`` waits on before it can be claimed, and why it is stuck."""
        if task.state is not State.PENDING or not task.after:
            return None
        return self.snapshot().states().waiting(task.id, task.after)

    @heals
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

    @heals
    def validate(self) -> list[Problem]:
        """Every problem of the queue at the remote's tip (see :mod:`gitqueue.validate`)."""
        checked = None if self.on_progress is None else lambda n: self._progress("checking files", n, None)
        return rules.check_tree(self.store, self.snapshot().root, progress=checked)

    # ------------------------------------------------------------ what people do (gitqueue.people)

    def submit(self, specs: Iterable[Mapping[str, Any]], *, subject: str | None = None) -> list[str]:
        """Add tasks in one commit. Each spec has ``args`` and optional fields (and ``id``).

        Returns the ids. An id that exists with the same content is skipped; with different
        content it is an error and nothing is submitted.
        """
        return self.people.submit(specs, subject=subject)

    def submit_sweep(self, plan: Sweep, **fields: Any) -> list[str]:
        """Add every task of a sweep (grid, samples, repeats) in one commit whose subject says
        what made them; ``fields`` (``priority``, ``tags``, ``after``, ...) go into each task.

        >>> q.submit_sweep(Sweep(sample={"lr": "loguniform:1e-5:1e-1"}, samples=50, seed=0))  # doctest: +SKIP
        """
        args = plan.args()
        return self.submit([{**fields, "args": a} for a in args], subject=plan.subject(len(args)))

    def requeue(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Send tasks back to pending (from running, done, failed or cancelled) in one commit.

        ``where`` adds every task a filter matches that can be requeued (e.g. ``state == "failed"``).
        """
        return self.people.requeue(task_ids, where=where)

    def cancel(self, task_ids: Iterable[str] = (), *, where: str | None = None) -> list[str]:
        """Withdraw pending or running tasks (a running one's worker stops it) in one commit.

        ``where`` adds every pending or running task a filter matches (e.g. ``args.lr > 0.1``).
        """
        return self.people.cancel(task_ids, where=where)

    def set_fields(self, task_id: str, changes: Mapping[str, Any]) -> Task | None:
        """Change a task's fields in place, in one commit: ``{"priority": 50}``, ``{"args.lr": 0.02}``.

        Only the changed lines are rewritten; the person's comments and other lines stay.
        A running or done task's ``args`` and ``cmd`` are refused (its run or result uses
        them). Returns the task as changed, or None if nothing changed.
        """
        return self.people.set_fields(task_id, changes)

    def edit(self, task_id: str, editor: Callable[[str], str | None]) -> Task | None:
        """Let a person edit a task's file: ``editor(text)`` returns the new text (None or
        empty gives up). An invalid result goes back to the editor with the reason on top.

        Commits and pushes with retries, one commit. If the task moved meanwhile (claimed,
        say), the person's lines are put on the moved file, and refused if they would
        corrupt its run. If someone else changed the person's lines meanwhile, nothing is
        written: :class:`EditConflict` carries the person's text. Also fixes a file that is
        invalid now. Returns the task as changed, or None if nothing changed.
        """
        return self.people.edit(task_id, editor)

    # ------------------------------------------------------------ claiming and finishing (gitqueue.lifecycle)

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
        return self.lifecycle.claim_batch(count, labels=labels, lease=lease, eligible=eligible, patient=patient)

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
        return self.lifecycle.finish(reports, then_claim=then_claim, patient=patient)

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

    # ------------------------------------------------------------ dead runs (gitqueue.reaping)

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

    def reap_runs(self) -> list[Reaped]:
        """Return the tasks of dead runs (see ``reap_dead``), those of workers of this machine
        whose process is gone included; drop those workers' notes once nothing of theirs is
        held any more."""
        return self.reaper.reap_runs()

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
        return self.reaper.reap_dead(gone=gone, started=started, settled=settled)

    def runs(self, *, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """Every run under way: its task, worker, attempt, claim time, last heartbeat (None
        before the first) and when its lease runs out by the clocks that wrote them."""
        return self.reaper.runs(snap=snap)


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


__all__ = [
    "ERROR_TAIL",
    "Change",
    "Finished",
    "GitqueueError",
    "Queue",
    "Reaped",
    "Report",
    "Run",
    "best_pending",
    "default_worker",
    "held_task",
    "pending_in_order",
]
