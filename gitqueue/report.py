"""``gitqueue report``: what a sweep did, gathered from the queue for one HTML page.

Everything comes from the queue branch: each task's file (its args, result, state and the
record of every attempt: which worker ran it, when it started and ended, how it ended) and
the branch's recent commits (who changed what). :class:`Reporter` reads a snapshot into a
:class:`Sweep`; :mod:`gitqueue.report_page` draws it. A reporter keeps what it read by blob
id, so ``--watch`` re-reads only the task files that changed since its last page, and
:mod:`gitqueue.report_cache` keeps it on the machine, so the next report parses only new files.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitqueue import filters, history, progress
from gitqueue.errors import GitqueueError, InvalidFilter
from gitqueue.queue import Queue
from gitqueue.snapshot import FILE_MODES, Entry, Problem, Snapshot, parse_entry
from gitqueue.task import State, Task, id_order, parse_time

HISTORY_COMMITS = 30  # the branch's last commits listed on the page
RATE_COMMITS = 200  # how far back the rate may look when the tasks hold too few ended runs
READ_CHUNK = 2000  # task files read and parsed at a time
PARALLEL_FROM = 8000  # files to parse before it pays to start processes for them
MAX_PROCESSES = 8


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


class Reporter:
    """Makes :class:`Sweep` views of one queue, re-reading only task files that changed."""

    def __init__(
        self,
        queue: Queue,
        *,
        metric: str | None = None,
        where: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if metric is not None and not metric.strip(". "):
            raise InvalidFilter(f"--metric {metric!r}: name a result field, e.g. result.acc")
        self.queue = queue
        self.metric = metric
        self.where = where
        filters.where(where)  # a bad filter is refused before anything is read
        self.clock = clock
        self._read: dict[tuple[str, str], tuple[Row, list[RunSpan]] | Problem | None] = {}
        from gitqueue.report_cache import ReadCache  # it imports Row and RunSpan from here

        self._cache = ReadCache(queue.store.path / "gitqueue-summaries.sqlite", where=where)

    def sweep(self, snap: Snapshot | None = None) -> Sweep:
        """The queue as it is now (or as ``snap`` shows it)."""
        snap = snap or self.queue.snapshot()
        now = self.clock()
        entries = list(snap.all_entries())
        self._read_new(snap, entries)
        self._read = {(e.path, e.blob): self._read[(e.path, e.blob)] for e in entries}  # forget what is gone
        sweep = Sweep(queue=self.queue.url, tip=snap.tip, made_at=now, where=self.where, metric=self.metric)
        for entry in sorted(entries, key=lambda e: id_order(e.id)):
            found = self._read[(entry.path, entry.blob)]
            if isinstance(found, Problem):
                sweep.problems.append(found)
            elif found is not None:
                sweep.rows.append(found[0])
                sweep.runs.extend(found[1])
        if sweep.metric is None:
            sweep.metric = first_metric(sweep.rows)
        if snap.tip is not None:
            sweep.commits = history.recent_commits(self.queue.store, snap.tip, max(HISTORY_COMMITS, RATE_COMMITS))
        return sweep

    def _read_new(self, snap: Snapshot, entries: list[Entry]) -> None:
        """Read the files not read yet: on every core when there are many (a first report
        of 100,000 tasks is mostly YAML parsing)."""
        missing = [e for e in entries if (e.path, e.blob) not in self._read]
        cached = self._cache.get([e for e in missing if e.mode in FILE_MODES]) if missing else {}
        for entry, found in cached.items():  # what another process read before
            self._read[(entry.path, entry.blob)] = found
        missing = [e for e in missing if e not in cached]
        cores = min(os.cpu_count() or 1, MAX_PROCESSES)
        chunks = [missing[i : i + READ_CHUNK] for i in range(0, len(missing), READ_CHUNK)]
        # Forked children only parse the bytes they are sent. Other ways of starting them run the
        # caller's main module again, which a script without a __main__ guard does not survive.
        if len(missing) < PARALLEL_FROM or cores < 2 or sys.platform != "linux":
            for chunk in chunks:
                self._store(chunk, read_files(self.where, _with_bytes(snap, chunk)))
            return
        with ProcessPoolExecutor(max_workers=cores, mp_context=multiprocessing.get_context("fork")) as pool:

            def submit(chunk: list[Entry]) -> Future[list[Read]]:
                return pool.submit(read_files, self.where, _with_bytes(snap, chunk))

            pending = [(chunk, submit(chunk)) for chunk in chunks[:cores]]
            for chunk in chunks[cores:]:  # every core busy, and at most a chunk per core read ahead
                done, future = pending.pop(0)
                pending.append((chunk, submit(chunk)))
                self._store(done, future.result())
            for done, future in pending:
                self._store(done, future.result())

    def _store(self, entries: list[Entry], found: list[Read]) -> None:
        for entry, item in zip(entries, found, strict=True):
            self._read[(entry.path, entry.blob)] = item
        self._cache.put([(e, item) for e, item in zip(entries, found, strict=True) if e.mode in FILE_MODES])

    def write(self, path: Path, snap: Snapshot | None = None) -> Sweep:
        """Write the page for the queue as it is now to ``path``; a reader never sees half a file."""
        from gitqueue.report_page import render_page  # plotly is an optional extra

        sweep = self.sweep(snap)
        write_atomically(path, render_page(sweep))
        return sweep

    def watch(
        self,
        path: Path,
        *,
        interval: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        on_write: Callable[[Sweep], None] | None = None,
        rounds: int | None = None,
    ) -> None:
        """Rewrite ``path`` each time the queue's branch moves (and once at the start).

        Looks every ``interval`` seconds, ``rounds`` times (for ever if None)."""
        written: str | None = None
        done = 0
        while rounds is None or done < rounds:
            if done:
                sleep(interval)
            done += 1
            snap = self.queue.snapshot()
            if written is not None and snap.tip == written:
                continue
            sweep = self.write(path, snap)
            written = snap.tip or ""
            if on_write is not None:
                on_write(sweep)


Read = tuple[Row, list[RunSpan]] | Problem | None  # a task the filter selected, an invalid file, or neither


def _with_bytes(snap: Snapshot, entries: list[Entry]) -> list[tuple[Entry, bytes]]:
    raw = snap.store.read_many(sorted({e.blob for e in entries if e.mode in FILE_MODES}))
    return [(entry, raw.get(entry.blob, b"")) for entry in entries]


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


def write_atomically(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


__all__ = ["Reporter", "Row", "RunSpan", "Sweep", "first_metric", "lookup"]
