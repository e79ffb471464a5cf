"""The queue facade: what scripts, the CLI and the worker hold, every operation by name.

``Queue`` is a :class:`gitqueue.connection.Connection` (opening, ``init``, the branch, the cache,
closing, the protocol) that also owns the reads (``tasks``, ``get``, ``status``, ``log``,
``validate``); every other operation is a thin delegation to the room that owns it:

- :mod:`gitqueue.protocol`: a change and the compare-and-swap transaction every write goes
  through (fetch, build, commit, push, back off and redo);
- :mod:`gitqueue.lifecycle`: claiming and finishing tasks (``Run``, ``Report``, ``Finished``);
- :mod:`gitqueue.reaping`: dead runs and their leases (``Reaped``, ``runs``);
- :mod:`gitqueue.people`: what people do (submit, requeue, cancel, set, edit);
- :mod:`gitqueue.reads`: how ``status`` describes a snapshot.

Imports go one way: queue -> connection, people, reaping, reads -> lifecycle -> protocol -> gitstore.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gitqueue import deps, filters, history, leftovers, reads
from gitqueue import validate as rules
from gitqueue.connection import Connection, default_worker
from gitqueue.errors import GitqueueError
from gitqueue.lifecycle import ERROR_TAIL, Finished, Lifecycle, Report, Run, best_pending, held_task, pending_in_order
from gitqueue.people import People
from gitqueue.protocol import Change, heals
from gitqueue.reaping import Reaped, Reaper
from gitqueue.requests import Ask
from gitqueue.snapshot import Problem, Snapshot
from gitqueue.task import State, Task, id_order

if TYPE_CHECKING:  # a sweep's plan is made by its caller: a worker need not load sweep.py
    from gitqueue.sweep import Sweep


class Queue(Connection):
    """A queue living in the git repository at ``url``.

    >>> q = Queue.open("/path/to/queue.git")          # doctest: +SKIP
    >>> q.submit([{"args": {"lr": 0.01}}])            # doctest: +SKIP
    >>> with q.claim() as run:                         # doctest: +SKIP
    ...     train(**run.args)
    """

    @functools.cached_property
    def lifecycle(self) -> Lifecycle:
        return Lifecycle(self.protocol, owner=self, checks=self.checks)

    @functools.cached_property
    def reaper(self) -> Reaper:
        folder, here = self.runs_folder, self.here
        return Reaper(self.lifecycle, monotonic=self.monotonic, max_skew=self.max_skew, runs_folder=folder, here=here)

    @functools.cached_property
    def people(self) -> People:
        return People(self.protocol)

    def close(self) -> None:
        """Take back a request for work still out (see ``withdraw``), then close the cache."""
        if "lifecycle" in self.__dict__:  # only a queue that claimed can have asked
            with contextlib.suppress(GitqueueError):
                self.withdraw()
        super().close()

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
        return reads.task_log(self.snapshot(), task_id)

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
        ask: Ask | None = None,
    ) -> list[Run]:
        """Claim up to ``count`` tasks in one commit (the best ones, in order). Not ``patient``:
        one try on the fetched tip, LostRace if another writer won it. With ``ask``, a race lost
        to another machine asks for work (see ``ask_for_work``); runs claimed for us are returned."""
        return self.lifecycle.claim_batch(
            count, labels=labels, lease=lease, eligible=eligible, patient=patient, ask=ask
        )

    def ask_for_work(self, count: int, ask: Ask) -> bool:
        """Ask for ``count`` tasks on this worker's request ref (``refs/gitqueue/requests/...``):
        the next worker to land claims them for us (see :mod:`gitqueue.requests`)."""
        return self.lifecycle.ask(count, ask)

    def withdraw(self) -> list[Task]:
        """Take back this worker's request for work, if one is out: delete its ref, and give
        back (no attempt spent) what was claimed for it meanwhile; returns those tasks."""
        return self.lifecycle.withdraw()

    def adopt(self) -> list[Run]:
        """Fetch, and return the runs other workers claimed for our requests, each once, as
        ``Run``s with their tokens: run them like our own claims."""
        return self.lifecycle.adopt()

    def finish(
        self,
        reports: Report | Sequence[Report],
        *,
        then_claim: Mapping[str, Any] | None = None,
        patient: bool = True,
        hand_off: bool = False,
    ) -> Finished:
        """Record how runs ended and, with ``then_claim`` (``claim_batch``'s options, ``count``
        included), claim the next tasks: all in one commit and one push (``hand_off``: see
        :meth:`Lifecycle.finish`). A report from a run that no longer holds its task changes
        nothing: ``losses`` say why."""
        return self.lifecycle.finish(reports, then_claim=then_claim, patient=patient, hand_off=hand_off)

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

    def reap(self) -> list[str]:
        """Return the tasks of dead runs to the queue (see ``reap_runs``); their ids."""
        return [reaped.id for reaped in self.reap_runs()]

    def reap_runs(self) -> list[Reaped]:
        """Return the tasks of dead runs (see ``reap_dead``), those of workers of this machine
        whose process is gone included; drop their notes once they hold nothing."""
        return self.reaper.reap_runs()

    def reap_dead(
        self,
        *,
        gone: set[str] | None = None,
        started: Mapping[str, bool] | None = None,
        settled: set[str] | None = None,
    ) -> list[Reaped]:
        """Return tasks whose run is dead (its lease ran out, or ``gone`` names its token: its
        process on this machine ended) to pending, or to failed when out of attempts; only a run
        that started spends one. See :meth:`gitqueue.reaping.Reaper.reap_dead`."""
        return self.reaper.reap_dead(gone=gone, started=started, settled=settled)

    def runs(self, *, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """Every run under way: task, worker, attempt, claim time, last heartbeat, lease end."""
        return self.reaper.runs(snap=snap)


__all__ = [
    "ERROR_TAIL",
    "Ask",
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
