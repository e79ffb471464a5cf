"""The worker processes of one machine on one queue, and what they tell each other.

They share the machine's cache and take turns on it (:meth:`gitqueue.cache.Cache.turn`), so
they never race each other's pushes: the pacer (:mod:`gitqueue.worker.pace`) counts them for
the branch's and the budget's shares, never as machines that race. Each notes itself while it
works in a file of its own in ``<runs folder>/pace/`` (beside :mod:`gitqueue.leftovers`' notes),
with the time its tasks take once it knows it, so that a worker whose turn comes later sizes its
first claim by it instead of claiming one task to learn. A note whose process is gone is ignored
and dropped. Advice only: a lost note means a little more pacing, or a first claim of one.

Reads and writes small files in that folder; calls nothing of git.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gitqueue import leftovers

RETELL = 0.2  # a task time is noted again once it moved by more than this part of it


class Neighbours:
    """One worker's note among this machine's workers on ``queue``, and its look at theirs."""

    def __init__(self, folder: Path, *, queue: str, worker: str) -> None:
        self.folder, self.queue, self.worker = folder / "pace", queue, worker
        self.path = self.folder / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self._told: float | None = None

    def join(self, *, task_seconds: float | None = None) -> None:
        """Note this worker (and the time its tasks take, if known)."""
        note: dict[str, Any] = {"queue": self.queue, "worker": self.worker, "host": socket.gethostname()}
        note.update({"pid": os.getpid(), **({} if task_seconds is None else {"task_seconds": task_seconds})})
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(note))
            partial.replace(self.path)
        self._told = task_seconds

    def tell(self, task_seconds: float) -> None:
        """This worker's tasks take ``task_seconds`` now (noted again once it moved noticeably)."""
        told = self._told
        if told is None or abs(task_seconds - told) > RETELL * told:
            self.join(task_seconds=task_seconds)

    def leave(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)

    def names(self) -> frozenset[str]:
        """The workers of this machine working on this queue now (this one too, once joined)."""
        return frozenset(str(note["worker"]) for note in self._notes())

    def task_seconds(self) -> float | None:
        """What the others' tasks take, as they noted it (their mean); None if none knows yet."""
        times = [
            float(seconds)
            for note in self._notes()
            if note["worker"] != self.worker
            and isinstance(seconds := note.get("task_seconds"), int | float)
            and seconds > 0
        ]
        return sum(times) / len(times) if times else None

    def _notes(self) -> Iterator[dict[str, Any]]:
        """The notes of this machine's live workers on this queue (those of dead ones dropped)."""
        host = socket.gethostname()
        with contextlib.suppress(OSError):
            for path in self.folder.glob("*.json"):
                try:
                    note = json.loads(path.read_text())
                    mine = note["queue"] == self.queue and note["host"] == host and "worker" in note
                    pid = note["pid"]
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # being written, or not ours to judge
                if mine and isinstance(pid, int) and leftovers.running(pid):
                    yield note
                elif mine:
                    with contextlib.suppress(OSError):
                        path.unlink(missing_ok=True)  # its process is gone
