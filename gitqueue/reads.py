"""Reading a queue's state for people: the ``status`` summary of one snapshot, a task's log.

Owns how a snapshot is counted and described (counts per state, the oldest pending task, the
runs under way and their phase, what waits on what, invalid files and twins). It reads only what
it is given (a snapshot, the runs under way, this machine's notes of its workers) and calls
nothing that writes: no protocol, no git beyond the snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gitqueue import deps, history, leftovers
from gitqueue import validate as rules
from gitqueue.errors import InvalidTask, TaskNotFound
from gitqueue.index import Summary
from gitqueue.lifecycle import time_or_none
from gitqueue.snapshot import Snapshot
from gitqueue.task import State, check_id, id_order


@dataclass
class _Tally:
    """What ``status`` counts while it walks the snapshot's files."""

    counts: dict[str, int] = field(default_factory=lambda: {state.value: 0 for state in State})
    oldest: tuple[bool, str, str, str] | None = None  # (no time, submitted at, id order, id)
    running: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[deps.Waiting] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)


def status(
    snap: Snapshot,
    *,
    runs: list[dict[str, Any]],
    noted: Mapping[str, leftovers.NotedRun],
    now: float,
    head: Mapping[str, Any],
) -> dict[str, Any]:
    """The status of ``snap`` (see :meth:`gitqueue.queue.Queue.status`): ``runs`` are the runs
    under way (``Queue.runs``), ``noted`` what workers of this machine noted, ``head`` the
    queue, branch and warnings the summary starts with."""
    by_id = {run["id"]: run for run in runs}
    tally = _tally(snap, by_id, noted, now)
    stopping = [
        {"id": run.task_id, "worker": run.worker}
        for run in noted.values()
        if run.stopping and run.alive and run.token not in {r["token"] for r in by_id.values()}
    ]
    oldest, counts, waiting = tally.oldest, tally.counts, tally.waiting
    return {
        **head,
        "tip": snap.tip,
        "counts": counts,
        "total": sum(counts.values()),
        "oldest_pending": None if oldest is None else {"id": oldest[3], "submitted": oldest[1] or None},
        "running": sorted(tally.running, key=lambda r: id_order(r["id"])),
        "stopping": sorted(stopping, key=lambda r: id_order(r["id"])),  # noted by workers of this machine
        "waiting": len(waiting),
        "stuck": [w.to_dict() for w in sorted(waiting, key=lambda w: id_order(w.task_id)) if w.stuck],
        "invalid": tally.invalid,
    }


def _tally(
    snap: Snapshot, runs: Mapping[str, Mapping[str, Any]], noted: Mapping[str, leftovers.NotedRun], now: float
) -> _Tally:
    """Count the valid files by state, note the oldest pending one, the running rows and what
    waits; list invalid files and tasks that sit in two folders (counted in neither)."""
    states = snap.states()
    listed = list(snap.summaries())
    homes: dict[str, list[str]] = {}
    for entry, summary in listed:
        if summary.error is None:
            homes.setdefault(entry.id, []).append(entry.path)
    tally = _Tally()
    tally.invalid = [{"path": rules.display(e.path), "problem": rules.display(s.error)} for e, s in listed if s.error]
    for entry, summary in listed:
        if summary.error is not None:
            continue
        if len(homes[entry.id]) > 1:
            twins = ", ".join(path for path in homes[entry.id] if path != entry.path)
            problem = f"{entry.path}: task {entry.id!r} is also in {twins}: a task lives in one folder"
            problem += " (not counted)"
            tally.invalid.append({"path": rules.display(entry.path), "problem": rules.display(problem)})
            continue
        tally.counts[entry.state.value] += 1
        if entry.state is State.PENDING:
            key = (summary.submitted_at is None, summary.submitted_at or "", id_order(entry.id), entry.id)
            if tally.oldest is None or key < tally.oldest:
                tally.oldest = key
            if summary.after and (held := states.waiting(entry.id, summary.after)) is not None:
                tally.waiting.append(held)
        elif entry.state is State.RUNNING:
            run = runs.get(entry.id, {})
            tally.running.append(running_row(entry.id, summary, now, run, noted.get(str(run.get("token")))))
    return tally


def running_row(
    task_id: str, summary: Summary, now: float, run: Mapping[str, Any], note: leftovers.NotedRun | None
) -> dict[str, Any]:
    """One line of ``status``'s running table: ``run`` is what ``Queue.runs`` says of it (its
    heartbeat, its lease's end), ``note`` what its worker on this machine noted, if any."""
    claimed = time_or_none(summary.claimed_at)
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


def task_log(snap: Snapshot, task_id: str) -> list[history.Event]:
    """A task's life from the history up to ``snap`` (also of a deleted task), oldest first."""
    try:
        resolved = snap.get(task_id).id
    except (TaskNotFound, InvalidTask):
        resolved = check_id(task_id)
    events = history.task_history(snap.store, snap.tip, resolved) if snap.tip else []
    if not events:
        raise TaskNotFound(f"no task {task_id!r} in the queue or its history")
    return events
