"""``gitqueue report``: what a sweep did, gathered from the queue for one HTML page.

Everything comes from the queue branch: each task's file (its args, result, state and the
record of every attempt: which worker ran it, when it started and ended, how it ended) and
the branch's recent commits (who changed what). :class:`Reporter` reads a snapshot into a
:class:`Sweep`; :mod:`gitqueue.report_page` draws it. A reporter keeps what it read by blob
id, so ``--watch`` re-reads only the task files that changed since its last page, and
:mod:`gitqueue.report_cache` keeps it on the machine, so the next report parses only new files.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from gitqueue import filters, history
from gitqueue.errors import InvalidFilter
from gitqueue.queue import Queue
from gitqueue.report_cache import ReadCache
from gitqueue.report_data import Read, Row, RunSpan, Sweep, first_metric, read_files
from gitqueue.snapshot import FILE_MODES, Entry, Problem, Snapshot
from gitqueue.task import id_order

HISTORY_COMMITS = 30  # the branch's last commits listed on the page
RATE_COMMITS = 200  # how far back the rate may look when the tasks hold too few ended runs
READ_CHUNK = 2000  # task files read and parsed at a time
PARALLEL_FROM = 8000  # files to parse before it pays to start processes for them
MAX_PROCESSES = 8


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


def _with_bytes(snap: Snapshot, entries: list[Entry]) -> list[tuple[Entry, bytes]]:
    raw = snap.store.read_many(sorted({e.blob for e in entries if e.mode in FILE_MODES}))
    return [(entry, raw.get(entry.blob, b"")) for entry in entries]


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


__all__ = ["Reporter", "read_files", "write_atomically"]
