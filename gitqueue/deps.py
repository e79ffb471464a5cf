"""Dependencies between tasks: ``after: [id, ...]`` holds a task back until each of them is done.

A pending task whose ``after`` names a task that is not ``done`` is *waiting*: workers pass it
over. It is *stuck* when it can never run as things stand: one of them failed, was cancelled or
is not in the queue at all. Nothing moves a stuck task by itself; ``status`` and ``show`` say
which task holds it and why, and a person requeues that one or edits ``after``.

What may be written is checked by ``validate`` and the server hook: every id in ``after`` names
a task of the queue, and no chain of ``after`` comes back to where it started. This module
reads states from a :class:`~gitqueue.snapshot.Snapshot` (a direct lookup per id, so a claim
at 100,000 tasks pays per dependency, not per task) and knows nothing of git.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gitqueue.task import State

MISSING = "missing"  # the state shown for an id that names no task


@dataclass
class Waiting:
    """What a pending task waits on: each dependency not done yet with its state, and why it
    is stuck (None while every one of them may still get done)."""

    task_id: str
    on: dict[str, str] = field(default_factory=dict)
    stuck: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"id": self.task_id, "waits_on": self.on, "stuck": self.stuck}


class States:
    """The state of each task id in one snapshot, looked up once per id (None: no such task)."""

    def __init__(self, locate: Callable[[str], State | None], done: Iterable[str] = ()) -> None:
        self._locate = locate
        self._known: dict[str, State | None] = dict.fromkeys(done, State.DONE)

    def __call__(self, task_id: str) -> State | None:
        if task_id not in self._known:
            self._known[task_id] = self._locate(task_id)
        return self._known[task_id]

    def ready(self, after: Iterable[str]) -> bool:
        """True if every task of ``after`` is done."""
        return all(self(dep) is State.DONE for dep in after)

    def waiting(self, task_id: str, after: Iterable[str]) -> Waiting | None:
        """What ``task_id`` waits on, or None if it waits on nothing."""
        on = {dep: (found.value if found else MISSING) for dep in after if (found := self(dep)) is not State.DONE}
        if not on:
            return None
        blocked = [(dep, what) for dep, what in on.items() if what in (State.FAILED, State.CANCELLED, MISSING)]
        stuck = None
        if blocked:
            dep, what = blocked[0]
            stuck = (
                f"it waits on {dep}, which is not in the queue: edit its 'after'"
                if what == MISSING
                else f"it waits on {dep}, which {'failed' if what == 'failed' else 'was cancelled'}: "
                f"requeue {dep} or edit its 'after'"
            )
        return Waiting(task_id, on, stuck)


def unknown_ids(graph: Mapping[str, list[str]], exists: Callable[[str], bool]) -> Iterable[tuple[str, str]]:
    """``(task, dependency)`` for each dependency that names no task."""
    for task_id, after in graph.items():
        for dep in after:
            if not exists(dep):
                yield task_id, dep


def find_cycle(start: str, after_of: Callable[[str], list[str]]) -> list[str] | None:
    """A chain of ``after`` from ``start`` back to ``start`` (``[start, ..., start]``), or None.

    ``after_of`` gives a task's dependencies (empty for unknown ids). Depth-first, each task
    visited once, so the cost is the tasks reachable from ``start``.
    """
    path: list[str] = [start]
    stack = [iter(after_of(start))]
    seen = {start}
    while stack:
        dep = next(stack[-1], None)
        if dep is None:
            stack.pop()
            path.pop()
            continue
        if dep == start:
            return [*path, start]
        if dep in seen:
            continue
        seen.add(dep)
        path.append(dep)
        stack.append(iter(after_of(dep)))
    return None


def cycles(graph: Mapping[str, list[str]]) -> list[list[str]]:
    """Every cycle of ``after`` met by one depth-first walk of the whole ``graph`` (each as
    ``[a, b, ..., a]``); each task is visited once, so a queue of 100,000 costs one pass."""
    found: list[list[str]] = []
    finished: set[str] = set()
    for root in graph:
        if root in finished:
            continue
        path, position = [root], {root: 0}  # the walk's current chain, and where each id sits in it
        stack = [iter(graph.get(root, ()))]
        while stack:
            dep = next(stack[-1], None)
            if dep is None:
                stack.pop()
                node = path.pop()
                del position[node]
                finished.add(node)
            elif dep in position:
                found.append([*path[position[dep] :], dep])
            elif dep not in finished and dep in graph:
                position[dep] = len(path)
                path.append(dep)
                stack.append(iter(graph[dep]))
    return found


def cycle_text(cycle: list[str]) -> str:
    return "field 'after' makes a cycle: " + " -> ".join(cycle) + " (each waits for the next: none would ever run)"
