"""(a) the raw-git ceiling and (b) gitqueue's one-worker claim+finish cycle, per transport.

(b) is measured two ways through the Python API:

* ``claim+done``: ``q.claim()`` then ``run.done()``: two commits, two pushes per task;
* ``finish+claim``: ``q.finish(report, then_claim=...)``: the finish and the next claim
  share one commit, one push per task (what ``gitqueue work`` does at steady state).

Each gitqueue cycle is also split into fetch, push (both spawn git) and the rest (choosing
the task, rendering YAML, writing objects in-process), and the path-remote cycle is
profiled with cProfile (bench/results/profile-cycle.txt).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.env import Transport, seed_queue
from bench.rawgit import Phases, run_cycles
from bench.report import median

# Functions whose cumulative time explains a gitqueue cycle (module suffix, function name).
PROFILE_POINTS = [
    ("gitqueue/protocol.py", "transact", "whole cycle (Protocol.transact)"),
    ("gitqueue/gitstore.py", "fetch", "GitStore.fetch (git fetch spawn)"),
    ("gitqueue/gitstore.py", "push", "GitStore.push (git push spawn)"),
    ("gitqueue/snapshot.py", "__init__", "Snapshot() (read the tip's commit)"),
    ("gitqueue/lifecycle.py", "best_pending", "best_pending (list + parse pending)"),
    ("gitqueue/lifecycle.py", "finish_change", "Lifecycle.finish_change"),
    ("gitqueue/lifecycle.py", "claim_change", "Lifecycle.claim_change"),
    ("gitqueue/task.py", "render", "task.render (YAML out)"),
    ("gitqueue/task.py", "parse_task", "task.parse_task (YAML in)"),
    ("gitqueue/protocol.py", "commit", "Protocol.commit (blobs, trees, commit)"),
    ("gitqueue/objects.py", "edit_tree", "Objects.edit_tree"),
    ("gitqueue/objects.py", "_store", "Objects._store (zlib + file per object)"),
    ("gitqueue/objects.py", "read", "Objects.read (cat-file --batch)"),
    ("subprocess.py", "run", "subprocess.run (all git spawns)"),
]


@dataclass
class QueuePhases:
    """Per-task seconds of a gitqueue loop, and the git calls inside it."""

    per_task: list[float] = field(default_factory=list)
    fetch: float = 0.0
    push: float = 0.0
    fetches: int = 0
    pushes: int = 0
    rejected: int = 0

    def other(self) -> float:
        return sum(self.per_task) - self.fetch - self.push


def _instrument(q: Any, phases: QueuePhases) -> None:
    """Time the store's fetch and push on this instance only (no change to gitqueue)."""
    store = q.store
    fetch, push = store.fetch, store.push

    def timed_fetch(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fetch(*a, **k)
        finally:
            phases.fetch += time.perf_counter() - t
            phases.fetches += 1

    def timed_push(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return push(*a, **k)
        finally:
            phases.push += time.perf_counter() - t
            phases.pushes += 1

    store.fetch, store.push = timed_fetch, timed_push


def _loop_claim_done(q: Any, n: int, deadline: float, phases: QueuePhases) -> None:
    for _ in range(n):
        t = time.perf_counter()
        run = q.claim()
        if run is None:
            break
        run.done()
        phases.per_task.append(time.perf_counter() - t)
        if time.monotonic() > deadline:
            break


def _loop_finish_claim(q: Any, n: int, deadline: float, phases: QueuePhases) -> None:
    from gitqueue.queue import Report

    run = q.claim()
    for _ in range(n):
        if run is None:
            break
        t = time.perf_counter()
        finished = q.finish(Report(run.id, run.token, "done"), then_claim={})
        phases.per_task.append(time.perf_counter() - t)
        run = finished.next
        if time.monotonic() > deadline:
            break


LOOPS: dict[str, Callable[[Any, int, float, QueuePhases], None]] = {
    "claim+done": _loop_claim_done,
    "finish+claim": _loop_finish_claim,
}


def gitqueue_cycles(
    url: str, root: Path, *, how: str, cycles: int, budget: float, profile: Path | None = None
) -> QueuePhases:
    """Up to ``cycles`` tasks through one gitqueue worker (after a warm-up claim)."""
    from gitqueue import Queue

    phases = QueuePhases()
    with Queue(url, worker="bench-1", cache=root / f"cache-{how}") as q:
        warm = q.claim()  # the first fetch brings the whole queue; not part of the cycle
        if warm is not None:
            warm.done()
        _instrument(q, phases)
        deadline = time.monotonic() + budget
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        LOOPS[how](q, cycles, deadline, phases)
        if profiler:
            profiler.disable()
            _write_profile(profiler, profile, len(phases.per_task), how)  # type: ignore[arg-type]
            phases_profile[how] = _profile_points(profiler, len(phases.per_task))
        phases.rejected = q.store.rejected_pushes
    return phases


phases_profile: dict[str, list[tuple[str, float, int]]] = {}


def _write_profile(profiler: cProfile.Profile, path: Path, tasks: int, how: str) -> None:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(25)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as out:
        out.write(f"# gitqueue {how} cycle on a path remote, {tasks} tasks, cProfile\n")
        out.write(text.getvalue())
        out.write("\n\n")


def _profile_points(profiler: cProfile.Profile, tasks: int) -> list[tuple[str, float, int]]:
    return _points(profiler, tasks, PROFILE_POINTS)


def _points(profiler: cProfile.Profile, tasks: int, wanted: list[tuple[str, str, str]]) -> list[tuple[str, float, int]]:
    """(label, cumulative seconds per task, calls per task) for the ``wanted`` functions."""
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    out = []
    for suffix, name, label in wanted:
        cum = calls = 0.0
        for (filename, _, func), (_, ncalls, _, ct, _) in stats.items():
            if func == name and filename.endswith(suffix):
                cum += ct
                calls += ncalls
        if calls:
            out.append((label, cum / max(tasks, 1), round(calls / max(tasks, 1), 1)))
    return out


@dataclass
class CycleResult:
    transport: str
    raw: dict[str, Phases]
    gitqueue: dict[str, QueuePhases]

    def raw_best(self) -> tuple[str, float]:
        """The faster raw build method and its median cycle seconds: the ceiling."""
        return min(((how, median(p.cycle)) for how, p in self.raw.items()), key=lambda x: x[1])


def measure(t: Transport, root: Path, *, tasks: int, cycles: int, budget: float, profile: Path | None) -> CycleResult:
    raw: dict[str, Phases] = {}
    for how in ("index", "mktree"):
        remote = t.new_remote(f"raw-{how}")
        seed_queue(remote.url, tasks, root / f"seed-raw-{how}-{t.kind}")
        raw[how] = run_cycles(remote.url, root / f"raw-{how}-{t.kind}.git", how=how, cycles=cycles, budget=budget)
    ours: dict[str, QueuePhases] = {}
    for how in LOOPS:
        remote = t.new_remote(f"gq-{how.replace('+', '-')}")
        seed_queue(remote.url, tasks, root / f"seed-gq-{how}-{t.kind}")
        ours[how] = gitqueue_cycles(
            remote.url, root / f"gq-{t.kind}", how=how, cycles=cycles, budget=budget, profile=profile
        )
    return CycleResult(t.kind, raw, ours)


# Functions that explain the time of `gitqueue work`'s loop beyond the API cycle.
WORKER_POINTS = [
    ("gitqueue/worker/worker.py", "_loop", "Worker._loop (everything)"),
    ("gitqueue/worker/worker.py", "_execute", "Worker._execute (run the command)"),
    ("subprocess.py", "__init__", "subprocess.Popen() (start `true`, start git)"),
    ("threading.py", "join", "Thread.join (output pumps)"),
    ("subprocess.py", "wait", "Popen.wait"),
    ("gitqueue/worker/hand.py", "flush", "Hand.flush (finish + next claim)"),
    ("gitqueue/queue.py", "claim", "Queue.claim"),
    ("gitqueue/worker/worker.py", "_maybe_reap", "Worker._maybe_reap"),
    ("gitqueue/gitstore.py", "fetch", "GitStore.fetch"),
    ("gitqueue/gitstore.py", "push", "GitStore.push"),
    ("gitqueue/worker/worker.py", "say", "Worker.say (log lines)"),
]


def worker_loop(t: Transport, root: Path, *, tasks: int) -> tuple[float, list[tuple[str, float, int]]]:
    """`gitqueue work -- true`'s loop in-process: (seconds per task unprofiled, profile points)."""
    import os

    from gitqueue import Queue
    from gitqueue.worker import Options, Worker

    per_task = float("nan")
    points: list[tuple[str, float, int]] = []
    for profiled in (False, True):
        remote = t.new_remote("worker-loop")
        seed_queue(remote.url, tasks + 1, root / f"seed-worker-{profiled}")
        options = Options(command=["true"], max_tasks=tasks + 1, log_dir=root / "worker-logs")
        with open(os.devnull, "w") as devnull, Queue(remote.url, worker="bench-w", cache=root / "cache-w") as q:
            worker = Worker(q, options, log=devnull)
            first = q.claim  # the first claim fetches the whole queue: keep it out of the figure
            start: list[float] = []

            def claim(*a: Any, _first: Any = first, _start: list[float] = start, **k: Any) -> Any:
                run = _first(*a, **k)
                _start.append(time.perf_counter())
                return run

            q.claim = claim  # type: ignore[method-assign]
            profiler = cProfile.Profile()
            if profiled:
                profiler.enable()
            began = time.perf_counter()
            worker.run()
            profiler.disable()
            if not profiled:
                per_task = (time.perf_counter() - (start[0] if start else began)) / tasks
            else:
                points = _points(profiler, tasks, WORKER_POINTS)
    return per_task, points
