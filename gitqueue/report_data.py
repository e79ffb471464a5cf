"""What a report shows, as data: a task's row and runs, and the whole sweep (:class:`Sweep`).

Read from task files by :func:`read_files`; :mod:`gitqueue.report` gathers them from a queue,
:mod:`gitqueue.report_cache` keeps them between processes and :mod:`gitqueue.report_page` draws
them. Imports only the task format, the snapshot's entries and filters.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gitqueue import filters, history, progress
from gitqueue.errors import GitqueueError
from gitqueue.snapshot import Entry, Problem, parse_entry
from gitqueue.task import State, Task, parse_time


@dataclass(frozen=True)
class RunSpan:
    """One attempt of a task: a bar on the timeline of its worker."""

    task: str
    attempt: int
    worker: str
    start: float
    end: float | None  # None: still running
    outcome: str  # done, failed, reaped, interrupted, requeued, cancelled, running


@dataclass(frozen=True)
class Row:
    """One task in the results table."""

    id: str
    state: str
    args: dict[str, Any]
    result: Any
    attempts: int
    duration: float | None
    worker: str | None
    error: str | None


@dataclass
class Sweep:
    """What one page shows: the selected tasks, their runs, and the branch's history."""

    queue: str
    tip: str | None
    made_at: float
    where: str | None
    metric: str | None
    rows: list[Row] = field(default_factory=list)
    runs: list[RunSpan] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    commits: list[history.Commit] = field(default_factory=list)
    _metric_values: tuple[tuple[str | None, int], list[tuple[Row, float]]] | None = field(default=None, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        counts = {state.value: 0 for state in State}
        for row in self.rows:
            counts[row.state] += 1
        return counts

    @property
    def progress(self) -> progress.Progress:
        ended = [run.end for run in self.runs if run.end is not None and run.outcome in progress.ENDED]
        if len(ended) < 2:  # e.g. a --where that selects few tasks: the branch's own pace
            ended = history.ended_runs(self.commits)
        return progress.estimate(self.counts, ended, now=self.made_at)

    def metric_values(self) -> list[tuple[Row, float]]:
        """Done tasks whose result has a number for the metric, with it (worked out once)."""
        key = (self.metric, len(self.rows))
        if self._metric_values is None or self._metric_values[0] != key:
            found = []
            if self.metric is not None:
                done = State.DONE.value
                for row in self.rows:
                    if row.state == done:
                        value = lookup(row.result, self.metric)
                        if is_number(value) and math.isfinite(value):
                            found.append((row, float(value)))
            self._metric_values = (key, found)
        return self._metric_values[1]


def is_number(value: Any) -> bool:
    """An int or float as YAML reads them (a bool is not a number here)."""
    return type(value) in _NUMBER_TYPES


_NUMBER_TYPES = (int, float)


def lookup(result: Any, metric: str) -> Any:
    """``result.acc`` (or ``acc``, or ``result.val.acc``) of a task's result; None if absent."""
    value = result
    for part in metric.removeprefix("result.").split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def first_metric(rows: Iterable[Row]) -> str | None:
    """The first numeric field of the done tasks' results, as ``result.NAME``."""
    for row in rows:
        if row.state == State.DONE.value and isinstance(row.result, dict):
            for key, value in row.result.items():
                if is_number(value):
                    return f"result.{key}"
    return None


def _time(value: Any) -> float | None:
    try:
        return parse_time(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if is_number(value) and math.isfinite(value) else None


def runs_of(task: Task) -> list[RunSpan]:
    """The task's attempts (and its run under way) as spans; records without a start are skipped."""
    spans = []
    for index, record in enumerate(task.attempts):
        if not isinstance(record, dict):
            continue
        start = _time(record.get("started"))
        end = _time(record.get("ended"))
        if start is None or end is None:
            continue
        attempt = record.get("attempt")
        spans.append(
            RunSpan(
                task=task.id,
                attempt=attempt if isinstance(attempt, int) else index + 1,
                worker=str(record.get("worker") or "?"),
                start=start,
                end=max(end, start),
                outcome=str(record.get("outcome") or "?"),
            )
        )
    run = task.run or {}
    start = _time(run.get("claimed_at"))
    if task.state is State.RUNNING and start is not None:
        attempt = run.get("attempt")
        number = attempt if isinstance(attempt, int) else 0
        spans.append(RunSpan(task.id, number, str(run.get("worker") or "?"), start, None, "running"))
    return spans


def row_of(task: Task) -> Row:
    """id, state, args, result, attempts, and the last attempt's duration, worker and error."""
    last = next((a for a in reversed(task.attempts) if isinstance(a, dict)), {})
    worker = (task.run or {}).get("worker") or last.get("worker")
    error = None
    if task.state is not State.DONE and last.get("error"):
        lines = str(last["error"]).strip().splitlines()
        error = lines[-1][:200] if lines else None
    return Row(
        id=task.id,
        state=task.state.value,
        args=task.args,
        result=task.result,
        attempts=len(task.attempts) + (task.state is State.RUNNING),
        duration=_number(last.get("duration")),
        worker=None if worker is None else str(worker),
        error=error,
    )


Read = tuple[Row, list[RunSpan]] | Problem | None  # a task the filter selected, an invalid file, or neither


def read_files(where: str | None, files: list[tuple[Entry, bytes]]) -> list[Read]:
    """What the report needs of each file (run in worker processes for big queues)."""
    match = filters.where(where)
    found: list[Read] = []
    for entry, raw in files:
        try:
            task = parse_entry(entry, raw)
        except GitqueueError as exc:
            found.append(Problem(entry.path, str(exc)))
            continue
        found.append((row_of(task), runs_of(task)) if match is None or match(task) else None)
    return found
