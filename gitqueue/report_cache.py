"""What ``gitqueue report`` read of each task file, kept between processes.

A report of 100,000 tasks spends most of its time parsing YAML. What it keeps of a file (its
row and run spans, the problem of an invalid file, or nothing when ``--where`` leaves it out)
depends only on the file's bytes, its path and the filter, so it is stored in a SQLite table
beside the summaries of :mod:`gitqueue.index`, keyed by filter, path and blob id: a blob never
changes, so a key never goes stale. It is a cache, never a source of truth: a file it cannot
open or a row it cannot read means "parse it again". Only what reads back exactly as it was is
stored (a result holding a date or a NaN is parsed every time).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from gitqueue.index import _db_key, connect
from gitqueue.report_data import Read, Row, RunSpan
from gitqueue.snapshot import Entry, Problem

# Named after what a stored read holds: change Row, RunSpan, row_of or runs_of, and the version.
TABLE = "report_read_v1"
BATCH = 500  # keys looked up per query


def encode(found: Read) -> str:
    if found is None:
        return "null"
    if isinstance(found, Problem):
        return json.dumps(["problem", found.path, found.message])
    row, runs = found
    fields = [getattr(row, name) for name in Row.__dataclass_fields__]
    spans = [[getattr(span, name) for name in RunSpan.__dataclass_fields__] for span in runs]
    return json.dumps(["row", fields, spans], separators=(",", ":"))


def decode(text: str) -> Read:
    data: Any = json.loads(text)
    if data is None:
        return None
    if data[0] == "problem":
        return Problem(str(data[1]), str(data[2]))
    if data[0] != "row":
        raise ValueError(f"unknown kind {data[0]!r}")
    return Row(*data[1]), [RunSpan(*span) for span in data[2]]


def _key(where: str | None, entry: Entry) -> str:
    return _db_key(f"{where or ''}\0{entry.path}", entry.blob)


class ReadCache:
    """Reads by (filter, path, blob), in the SQLite file at ``path``."""

    def __init__(self, path: Path, *, where: str | None) -> None:
        self.where = where
        self._db = connect(path, TABLE)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def get(self, entries: list[Entry]) -> dict[Entry, Read]:
        """The stored reads of those ``entries`` that have one."""
        found: dict[Entry, Read] = {}
        if self._db is None:
            return found
        wanted = {_key(self.where, e): e for e in entries}
        names = list(wanted)
        try:
            for start in range(0, len(names), BATCH):
                chunk = names[start : start + BATCH]
                marks = ",".join("?" * len(chunk))
                for key, text in self._db.execute(f"SELECT key, data FROM {TABLE} WHERE key IN ({marks})", chunk):
                    entry = wanted.get(key)
                    if entry is not None:
                        found[entry] = decode(text)
        except (sqlite3.Error, ValueError, TypeError, KeyError, IndexError):
            return found  # what was read so far is sound; the rest is parsed again
        return found

    def put(self, reads: list[tuple[Entry, Read]]) -> None:
        """Store the reads that read back exactly as they are."""
        if self._db is None:
            return
        rows = []
        for entry, found in reads:
            text = encode_exactly(found)
            if text is not None:
                rows.append((_key(self.where, entry), text))
        try:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?)", rows)
        except sqlite3.Error:
            pass  # a cache: the next process parses again


def encode_exactly(found: Read) -> str | None:
    """``found`` as text, or None if its text would not read back equal to it."""
    try:
        text = encode(found)
        return text if decode(text) == found else None
    except (ValueError, TypeError):  # a date, bytes, a set, ... in args or result
        return None


__all__ = ["ReadCache"]
