"""What choosing and counting need to know about every task, without keeping every task.

A :class:`Summary` is the small part of a task file that claiming and ``status`` read:
priority, requires, whether it has a ``cmd``, what it waits ``after``, and the claim of a
running task. Summaries are keyed by the file's path and blob id, so a summary never goes
stale: a changed file is a new blob. They are kept in memory for the life of a process and
in a SQLite file in the local cache, shared by every gitqueue process on the machine, so that
a new worker or a ``status`` call on a 100,000-task queue parses only what no process has
parsed before. Equal summaries are one object (the tasks of one submit usually share theirs:
a worker's memory, and so the cost of each child it forks, does not grow by one per task).
A folder's summaries are also kept as one row per folder (:meth:`SummaryStore.load_folders`):
a new process reads a 100,000-task pending folder in a few hundred rows, not 100,000.

Claiming reads the pending folder as groups (the flat files, and each fan-out subfolder);
each group's candidates are sorted once per tree id, so after a claim only the one or two
groups whose trees changed are sorted again. A group whose tasks wait ``after`` others is
filtered once per tree id and states of the ids they wait on, not at every claim.
"""

from __future__ import annotations

import json
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gitqueue.errors import InvalidTask
from gitqueue.task import Task


@dataclass(frozen=True, slots=True)
class Summary:
    """The part of one task file that choosing a task and counting tasks need."""

    priority: int = 0
    requires: tuple[tuple[str, tuple[str, ...]], ...] = ()
    has_cmd: bool = False
    submitted_at: str | None = None
    worker: str | None = None
    claimed_at: str | None = None
    attempt: int | None = None
    error: str | None = None  # the file is not a valid task: why
    after: tuple[str, ...] = ()  # ids that must be done before it is claimed

    @classmethod
    def of(cls, task: Task) -> Summary:
        requires = tuple(
            (str(k), tuple(str(o) for o in (v if isinstance(v, list) else [v]))) for k, v in task.requires.items()
        )
        run = task.run or {}
        return cls(
            priority=task.priority,
            requires=requires,
            has_cmd=task.cmd is not None,
            submitted_at=(task.submitted or {}).get("at"),
            worker=run.get("worker"),
            claimed_at=run.get("claimed_at"),
            attempt=run.get("attempt"),
            after=tuple(task.after),
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True if a worker with ``labels`` satisfies this task's ``requires``."""
        return all(k in labels and str(labels[k]) in options for k, options in self.requires)

    def dump(self) -> str:
        return json.dumps([getattr(self, name) for name in self.__slots__], separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> Summary:
        values = json.loads(text)
        summary = cls(*values)  # JSON has lists where the summary has tuples (it must hash: equal ones are shared)
        object.__setattr__(summary, "requires", tuple((k, tuple(v)) for k, v in summary.requires))
        object.__setattr__(summary, "after", tuple(summary.after))
        return summary


def _db_key(path: str, blob: str) -> str:
    # A file name that is not UTF-8 (a hostile push) must not break the cache: escape its bytes.
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") + "\0" + blob


def connect(path: Path, table: str) -> sqlite3.Connection | None:
    """The machine's shared cache file at ``path`` with a ``table`` of keys and data, or None if
    it cannot be opened: it is a cache, not a source of truth, so work goes on without it."""
    db = None
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(f"CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, data TEXT NOT NULL)")
    except sqlite3.Error:
        if db is not None:
            db.close()
        return None
    return db


READ_CHUNK = 5000  # files read and parsed at a time
# Named after the Summary's layout: a process that knows more fields (``after``) must not read
# the summaries an older one made of the same blobs (it refused them as unknown fields).
TABLE = "summary_v2"
FOLDERS = "folder_" + TABLE  # one row per folder: its files' blobs and summaries at one tree


class SummaryStore:
    """Summaries in memory, backed by a SQLite file shared by the machine's processes."""

    def __init__(
        self,
        path: Path | None,
        *,
        read_blobs: Callable[[list[str]], dict[str, bytes]],
        parse: Callable[[Any, bytes], Task],
    ) -> None:
        self.read_blobs = read_blobs
        self.parse = parse
        self._memory: dict[tuple[str, str], Summary] = {}
        self._shared: dict[Summary, Summary] = {}  # one object per distinct summary
        self._loaded: dict[str, Summary] = {}  # a stored summary's text -> the summary (parsed once)
        self._db = None if path is None else connect(path, TABLE)
        if self._db is not None:
            try:
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {FOLDERS} (key TEXT PRIMARY KEY, data TEXT NOT NULL)")
            except sqlite3.Error:
                self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, entry: Any) -> Summary:
        """The summary of one entry (anything with ``path`` and ``blob``)."""
        found = self._memory.get((entry.path, entry.blob))
        if found is None:
            self.load([entry])
            found = self._memory[(entry.path, entry.blob)]
        return found

    def load(self, entries: Iterable[Any]) -> None:
        """Make sure every entry has a summary: from memory, else SQLite, else by parsing."""
        todo = {(e.path, e.blob): e for e in entries if (e.path, e.blob) not in self._memory}
        if not todo:
            return
        missing = self._from_db(list(todo)) if self._db is not None else list(todo)
        if not missing:
            return
        # only regular files are read: a submodule's id names no object here (parse refuses it by mode)
        readable = (b"100644", b"100755")
        for start in range(0, len(missing), READ_CHUNK):  # bounded memory for 100,000 files
            chunk = missing[start : start + READ_CHUNK]
            wanted = {b for p, b in chunk if getattr(todo[(p, b)], "mode", b"100644") in readable}
            blobs = self.read_blobs(sorted(wanted))
            made = {}
            for key in chunk:
                try:
                    summary = Summary.of(self.parse(todo[key], blobs.get(key[1], b"")))
                except InvalidTask as exc:
                    summary = Summary(error=str(exc))
                made[key] = self._shared.setdefault(summary, summary)
            self._memory.update(made)
            self._save(made)

    def load_folders(self, folders: Mapping[str, list[Any]]) -> None:
        """:meth:`load` for whole folders: ``folders`` maps a folder's path (``pending/ab/``) to
        the entries directly in it at one tree. A folder read whole from SQLite is one row (its
        last stored version: the files whose blob is unchanged take their summary from it); the
        rest is loaded as :meth:`load` does, and the folder's row is stored again as it is now."""
        todo = {p: es for p, es in folders.items() if any((e.path, e.blob) not in self._memory for e in es)}
        if not todo:
            return
        stale = self._folders_from_db(todo) if self._db is not None else set(todo)
        self.load(e for p in stale for e in todo[p])
        self._save_folders({p: todo[p] for p in stale})

    def _folders_from_db(self, folders: Mapping[str, list[Any]]) -> set[str]:
        """Fill memory from the folders' rows; the folders whose row is missing or out of date."""
        assert self._db is not None
        rows: dict[str, str] = {}
        names = [_db_key(prefix, "") for prefix in folders]
        try:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows.update(self._db.execute(f"SELECT key, data FROM {FOLDERS} WHERE key IN ({marks})", chunk))
        except sqlite3.Error:
            return set(folders)
        stale = set()
        for prefix, entries in folders.items():
            if not self._from_folder_row(prefix, entries, rows.get(_db_key(prefix, ""))):
                stale.add(prefix)
        return stale

    def _from_folder_row(self, prefix: str, entries: list[Any], row: str | None) -> bool:
        """Summaries of ``entries`` whose blob the folder's ``row`` knows; True if it knew all."""
        if row is None:
            return False
        try:
            palette, files = json.loads(row)
            known = [self._remember(json.dumps(values, separators=(",", ":"))) for values in palette]
            complete = True
            for entry in entries:
                found = files.get(entry.path[len(prefix) :])
                if found is not None and found[0] == entry.blob:
                    self._memory.setdefault((entry.path, entry.blob), known[found[1]])
                else:
                    complete = False
        except (ValueError, TypeError, KeyError, IndexError):
            return False
        return complete

    def _save_folders(self, folders: Mapping[str, list[Any]]) -> None:
        if self._db is None or not folders:
            return
        rows = []
        for prefix, entries in folders.items():
            palette: dict[Summary, int] = {}
            files = {}
            for entry in entries:
                summary = self._memory[(entry.path, entry.blob)]
                files[entry.path[len(prefix) :]] = (entry.blob, palette.setdefault(summary, len(palette)))
            values = [[getattr(s, name) for name in Summary.__slots__] for s in palette]
            rows.append((_db_key(prefix, ""), json.dumps([values, files], separators=(",", ":"))))
        try:
            self._db.executemany(f"INSERT OR REPLACE INTO {FOLDERS} VALUES (?, ?)", rows)
        except sqlite3.Error:
            pass  # a cache: the next process reads file by file

    def _remember(self, text: str) -> Summary:
        """The summary stored as ``text``, parsed once per process and shared."""
        found = self._loaded.get(text)
        if found is None:
            summary = Summary.load(text)
            found = self._loaded[text] = self._shared.setdefault(summary, summary)
        return found

    def _save(self, made: dict[tuple[str, str], Summary]) -> None:
        if self._db is None:
            return
        rows = [(_db_key(p, b), s.dump()) for (p, b), s in made.items()]
        try:
            self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?)", rows)
        except sqlite3.Error:
            pass  # a cache: the next process parses again

    def _from_db(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        assert self._db is not None
        wanted = {_db_key(p, b): (p, b) for p, b in keys}
        names = list(wanted)
        try:
            for start in range(0, len(names), 500):
                chunk = names[start : start + 500]
                marks = ",".join("?" * len(chunk))
                for key, data in self._db.execute(f"SELECT key, data FROM {TABLE} WHERE key IN ({marks})", chunk):
                    self._memory[wanted[key]] = self._remember(data)
        except (sqlite3.Error, ValueError, TypeError, KeyError):
            pass
        return [key for key in keys if key not in self._memory]


Candidate = tuple[int, str, Any]  # (-priority, id_order(id), entry): sorts best first
K = TypeVar("K")
V = TypeVar("V")


def _remembered(memo: OrderedDict[K, V], key: K, make: Callable[[], V], limit: int) -> V:
    """``memo[key]``, made by ``make`` if missing; the least recently used go beyond ``limit``."""
    found = memo.get(key)
    if found is None:
        found = memo[key] = make()
        if len(memo) > limit:
            memo.popitem(last=False)
    else:
        memo.move_to_end(key)
    return found


class CandidateOrder:
    """Sorted pending candidates per group of entries, remembered by the group's tree id."""

    def __init__(self, limit: int = 2048) -> None:
        self.limit = limit
        self._sorted: OrderedDict[str, list[Candidate]] = OrderedDict()
        self._waits_on: OrderedDict[str, tuple[str, ...]] = OrderedDict()  # ids a group's tasks wait after
        self._ready: OrderedDict[tuple[str, tuple[bool, ...]], list[Candidate]] = OrderedDict()
        self._latest: dict[str, list[Candidate]] = {}  # folder -> its sorted group at the last tree seen

    def waits_on(self, key: str, make: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        """The ids the tasks of group ``key`` name in ``after`` (sorted; made once per tree id)."""
        return _remembered(self._waits_on, key, make, self.limit)

    def ready(self, key: str, done: tuple[bool, ...], make: Callable[[], list[Candidate]]) -> list[Candidate]:
        """Group ``key`` without its waiting tasks, given which of :meth:`waits_on` are ``done``."""
        return _remembered(self._ready, (key, done), make, self.limit)

    def has(self, key: str) -> bool:
        return key in self._sorted

    def note(self, folder: str, ranked: list[Candidate]) -> None:
        """``ranked`` is the sorted group of ``folder`` at the last tree seen (where a newer
        version of the folder is ranked from: see ``Snapshot._derive``)."""
        self._latest[folder] = ranked

    def latest(self, folder: str) -> list[Candidate] | None:
        """The sorted group of ``folder`` :meth:`note` was last told of."""
        return self._latest.get(folder)

    def sorted(self, key: str, make: Callable[[], list[Candidate]]) -> list[Candidate]:
        found = self._sorted.get(key)
        if found is None:
            found = sorted(make(), key=lambda c: (c[0], c[1]))
            self._sorted[key] = found
            if len(self._sorted) > self.limit:
                self._sorted.popitem(last=False)
        else:
            self._sorted.move_to_end(key)
        return found
