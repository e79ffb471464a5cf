"""Reaping: the runs that died, found by their leases, and their tasks sent back to the queue.

Owns :class:`Reaped`, the view of the runs under way (``runs``: heartbeats and lease ends) and
the judgement that a run is dead (:meth:`Reaper.lease_expired`: its lease ran out, or its
worker's process on this machine ended). It may call :mod:`gitqueue.lifecycle` (a reaped run is
finished like any other), :mod:`gitqueue.protocol` and :mod:`gitqueue.leftovers`, nothing above.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitqueue import leftovers
from gitqueue.lifecycle import Lifecycle, Report, time_or_none
from gitqueue.protocol import Change, heals
from gitqueue.snapshot import Snapshot
from gitqueue.task import State, Task, id_order, now_iso


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


class Reaper:
    """Finds the dead runs of one queue and returns their tasks, through ``lifecycle``.

    ``runs_folder`` and ``here`` say where this machine's workers note their runs, and under
    which name of the queue (see :mod:`gitqueue.leftovers`).
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        *,
        monotonic: Callable[[], float],
        max_skew: float,
        runs_folder: Path,
        here: str,
    ) -> None:
        self.lifecycle, self.protocol = lifecycle, lifecycle.protocol
        self.store, self.clock, self.monotonic, self.max_skew = lifecycle.store, lifecycle.clock, monotonic, max_skew
        self.runs_folder, self.here = runs_folder, here
        self._seen: dict[tuple[str, str | None], float] = {}  # (run token, heartbeat) -> first seen

    @heals
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
                    reason = self.lease_expired(task, leases.get(token))
                if reason is None:
                    continue
                report = Report(task.id, task.token, "reaped" if started else "abandoned", error=reason)
                step = self.lifecycle.finish_change(snap, report, lease_ref=token in leases)
                change = step if change is None else change.then(step)
                reaped.append(Reaped(task.id, str((task.run or {}).get("worker")), reason, spent=started))
                done_with.add(token)
            if change is not None:
                change.value = reaped  # the ids, not the first step's Finished
            return change

        if build(self.protocol.snapshot(leases=True)) is None:  # a look without the cache's turn: usually all is well
            reaped: list[Reaped] = []
        else:
            reaped = self.protocol.transact(build, leases=True) or []
        if settled is not None:
            settled.update(done_with)
        return reaped

    def runs(self, *, snap: Snapshot | None = None) -> list[dict[str, Any]]:
        """Every run under way: its task, worker, attempt, claim time, last heartbeat (None
        before the first) and when its lease runs out by the clocks that wrote them."""
        snap = snap or self.protocol.snapshot(leases=True)
        leases = self.store.leases()
        found = []
        for task in snap.tasks(State.RUNNING):
            run = task.run or {}
            heartbeat = leases.get(task.token or "")
            claimed = time_or_none(run.get("claimed_at"))
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

    def lease_expired(self, task: Task, heartbeat: str | None) -> str | None:
        run = task.run or {}
        lease = float(run.get("lease") or 0)
        key = (str(run.get("token")), heartbeat)
        first_seen = self._seen.setdefault(key, self.monotonic())
        last_wall = self.store.commit_time(heartbeat) if heartbeat else time_or_none(run.get("claimed_at"))
        silent_wall = 0.0 if last_wall is None else self.clock() - last_wall  # broken by hand: watch it
        watched = self.monotonic() - first_seen
        if watched > lease or silent_wall > lease + self.max_skew:
            silent = max(watched, silent_wall)
            return f"lease expired: no sign of life from {run.get('worker')} for {silent:.0f}s (lease {lease:.0f}s)"
        return None
