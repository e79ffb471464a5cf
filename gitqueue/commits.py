"""Commits and their history in one git folder: who makes them, what they hold, how they follow.

Owns a commit's header (``commit_info``, ``commit_time``), the person's identity by git's
rules, ancestry (``is_ancestor``, ``rev_parse``, ``new_commits``) and the history walks that
hooks, ``validate``, ``log`` and the report read (``history``, ``recent``, ``LogEntry``).

Built on :class:`gitqueue.objects.Objects` (it reads commits as objects) and may call
:mod:`gitqueue.git`; knows nothing of caches or remotes.
"""

from __future__ import annotations

import heapq
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from gitqueue.errors import GitqueueError
from gitqueue.git import Identity, run_git
from gitqueue.objects import Objects, TreeChange

ENTRIES_KEPT = 4096  # commits' log entries kept in memory for recent(); all dropped when full


def _committer_time(raw: bytes) -> float | None:
    """The committer time in a commit's raw text (None: no committer line)."""
    for line in raw.split(b"\n"):
        if line.startswith(b"committer "):
            return float(line.rsplit(b" ", 2)[1])
        if not line:
            break
    return None


@dataclass(frozen=True)
class LogEntry:
    """A commit that touched a task's file."""

    commit: str
    parents: tuple[str, ...]
    author: str
    email: str
    time: float
    message: str
    changes: tuple[TreeChange, ...]

    @property
    def subject(self) -> str:
        return self.message.split("\n", 1)[0]

    def trailer(self, key: str) -> str | None:
        for line in reversed(self.message.splitlines()):
            name, sep, value = line.partition(": ")
            if sep and name == key:
                return value.strip()
        return None


class Commits(Objects):
    """The commits of one git folder, read through its objects."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._entries: dict[str, tuple[LogEntry, float]] = {}  # commit -> entry, committer time (recent)

    def identity(self, fallback: str) -> Identity:
        """The person's identity by git's own rules, else ``gitqueue <fallback>``.

        As for ``git commit``: ``GIT_AUTHOR_NAME`` and ``GIT_AUTHOR_EMAIL`` first, then
        ``author.name``/``author.email``, then ``user.name``/``user.email``, then ``$EMAIL``.
        """
        proc = run_git(["config", "--get-regexp", r"^(author|user)\.(name|email)$"], cwd=self.path)
        found: dict[str, str] = {}
        for line in proc.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            found[key.lower()] = value.strip()
        name = os.environ.get("GIT_AUTHOR_NAME") or found.get("author.name") or found.get("user.name") or ""
        email = os.environ.get("GIT_AUTHOR_EMAIL") or found.get("author.email") or found.get("user.email") or ""
        email = email or os.environ.get("EMAIL", "")
        return Identity(name.strip() or "gitqueue", email.strip() or fallback)

    def commit_info(self, commit: str) -> tuple[str, tuple[str, ...]]:
        """A commit's root tree and its parents."""
        tree, parents = "", []
        for line in self.read(commit).split(b"\n"):
            if not line:
                break
            if line.startswith(b"tree "):
                tree = line[5:].decode()
            elif line.startswith(b"parent "):
                parents.append(line[7:].decode())
        return tree, tuple(parents)

    def new_commits(self, old: str | None, new: str) -> list[str]:
        """Commits reachable from ``new`` but not from ``old`` (with no ``old``: from no ref
        at all), oldest first. One spawn-free look at ``new`` covers the usual one-commit push."""
        if old is not None:
            _, parents = self.commit_info(new)
            if parents == (old,):
                return [new]
        exclude = [f"^{old}"] if old is not None else ["--not", "--all"]
        proc = run_git(["rev-list", "--reverse", "--topo-order", new, *exclude], cwd=self.path)
        if proc.returncode:
            raise GitqueueError(f"cannot list the commits of {new}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode().split()

    def history(self, tip: str, paths: list[str]) -> list[LogEntry]:
        """Commits up to ``tip`` that touched any of ``paths``, oldest first, with their changes."""
        proc = run_git(
            ["log", "--reverse", "--no-renames", "--raw", "--no-abbrev", "-z", "--format=%x1e%H", tip, "--", *paths],
            cwd=self.path,
        )
        if proc.returncode:
            raise GitqueueError(f"cannot read the history of {tip}: {proc.stderr.decode(errors='replace').strip()}")
        entries = []
        for record in proc.stdout.split(b"\x1e")[1:]:
            head, _, raw = record.partition(b"\0")
            fields = raw.lstrip(b"\n").split(b"\0")
            changes = []
            for meta, path in zip(fields[0::2], fields[1::2], strict=False):
                if not meta.startswith(b":"):
                    continue
                old_mode, new_mode, old_sha, new_sha, _status = meta[1:].split(b" ")
                name = path.decode("utf-8", "surrogateescape")
                old = None if set(old_sha) == {ord("0")} else (old_mode, old_sha.decode())
                new = None if set(new_sha) == {ord("0")} else (new_mode, new_sha.decode())
                changes.append(TreeChange(name, old, new))
            entries.append(self._log_entry(head.strip().decode(), tuple(changes)))
        return entries

    def recent(self, tip: str, count: int) -> list[LogEntry]:
        """The last ``count`` commits up to ``tip``, newest first by commit time (as ``git
        rev-list`` lists them), without their changes. Walked in-process, each commit read once
        in a process's life: a worker reads the last 100 after every landed push to pace itself,
        which was a ``git rev-list`` and 100 reads each time. A parent this folder lacks ends
        its line of history (as at a shallow clone's edge)."""
        if count <= 0:
            return []
        first = self._dated(tip)
        if first is None:
            raise GitqueueError(f"cannot read the history of {tip}: it is not in {self.path}")
        order = itertools.count()
        found: list[LogEntry] = []
        queue = [(-first[1], next(order), first[0])]
        seen = {tip}
        while queue and len(found) < count:
            entry = heapq.heappop(queue)[2]
            found.append(entry)
            for parent in entry.parents:
                if parent not in seen and (dated := self._dated(parent)) is not None:
                    seen.add(parent)
                    heapq.heappush(queue, (-dated[1], next(order), dated[0]))
        return found

    def _dated(self, commit: str) -> tuple[LogEntry, float] | None:
        """A commit's entry (no changes) and its committer time, read once and kept (None: this
        folder lacks the commit; only a commit not kept yet is looked for)."""
        kept = self._entries.get(commit)
        if kept is None:
            if not self.has(commit):
                return None
            raw = self.read(commit)
            kept = self._entry_of(commit, raw, ()), _committer_time(raw) or 0.0
            if len(self._entries) >= ENTRIES_KEPT:
                self._entries.clear()
            self._entries[commit] = kept
        return kept

    def _log_entry(self, commit: str, changes: tuple[TreeChange, ...]) -> LogEntry:
        return self._entry_of(commit, self.read(commit), changes)

    @staticmethod
    def _entry_of(commit: str, raw: bytes, changes: tuple[TreeChange, ...]) -> LogEntry:
        head, _, message = raw.partition(b"\n\n")
        parents, author, email, when = [], "", "", 0.0
        for line in head.split(b"\n"):
            if line.startswith(b"parent "):
                parents.append(line[7:].decode())
            elif line.startswith(b"author "):
                who, _, stamp = line[7:].decode("utf-8", "replace").rpartition("> ")
                author, _, email = who.partition(" <")
                when = float(stamp.split(" ")[0] or 0)
        return LogEntry(commit, tuple(parents), author, email, when, message.decode("utf-8", "replace"), changes)

    def rev_parse(self, rev: str) -> str | None:
        proc = run_git(["rev-parse", "-q", "--verify", f"{rev}^{{commit}}"], cwd=self.path)
        return proc.stdout.decode().strip() or None

    def commit_time(self, commit: str) -> float:
        """The committer time of ``commit`` (as the committing machine's clock had it)."""
        when = _committer_time(self.read(commit))
        if when is None:
            raise GitqueueError(f"commit {commit} has no committer line")
        return when

    def is_ancestor(self, commit: str, tip: str) -> bool:
        if commit == tip:
            return True
        proc = run_git(["merge-base", "--is-ancestor", commit, tip], cwd=self.path)
        return proc.returncode == 0
