"""Git objects in one git folder: blobs, trees and commits, read and written.

Owns the tree format (``parse_tree``/``format_tree``, the modes), reading objects (a loose
one from its file in-process, else through GitPython's long-lived ``git cat-file --batch``)
with a check of every object against its id (or one ``cat-file --batch`` pass for many), an
in-memory cache of recently read trees, writing objects in-process (gitdb's loose object
format, no git spawn), ``edit_tree``, and walking or comparing trees (``walk``,
``diff_trees``, ``TreeChange``).

May call only :mod:`gitqueue.git` (and ``gitqueue.errors``). What to do about an object
that reads back wrong is not decided here: :meth:`Objects.heal` says so, and the cache
(:class:`gitqueue.cache.Cache`) overrides it to rebuild itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gitqueue.errors import CacheDamaged, GitqueueError
from gitqueue.git import Identity, run_git

# Tree entries kept in memory: above the pending folders of a 100,000-task queue, whose first claim
# passes over every one twice (ranking, stray files); with less, each pass pushed out the next tree.
TREE_CACHE_ENTRIES = 150_000
TREE_MODE = b"40000"
BLOB_MODE = b"100644"
LINK_MODE = b"120000"
ZERO_SHA = "0" * 40


def parse_tree(data: bytes) -> dict[str, tuple[bytes, str]]:
    """A raw tree object as {name: (mode, hex sha)}."""
    out: dict[str, tuple[bytes, str]] = {}
    pos, end = 0, len(data)
    while pos < end:
        space = data.index(b" ", pos)
        nul = data.index(b"\0", space)
        mode = data[pos:space]
        name = data[space + 1 : nul].decode("utf-8", "surrogateescape")
        out[name] = (mode, data[nul + 1 : nul + 21].hex())
        pos = nul + 21
    return out


def _tree_key(item: tuple[str, tuple[bytes, str]]) -> bytes:
    name, (mode, _) = item
    raw = name.encode("utf-8", "surrogateescape")
    return raw + b"/" if mode == TREE_MODE else raw


def format_tree(entries: dict[str, tuple[bytes, str]]) -> bytes:
    """The inverse of :func:`parse_tree`, in git's own entry order."""
    return b"".join(
        mode + b" " + name.encode("utf-8", "surrogateescape") + b"\0" + bytes.fromhex(sha)
        for name, (mode, sha) in sorted(entries.items(), key=_tree_key)
    )


def _abandon(stream: object) -> None:
    """Tell GitPython not to drain a half-read object from a cat-file that has died: its
    stream would try when collected, and print a traceback."""
    inner = getattr(stream, "stream", None)
    if inner is not None and hasattr(inner, "_size"):
        inner._nbr = inner._size


def _batch_knows(repo: Any, sha: str) -> bool:
    """Whether the ``git.Repo``'s long-lived ``cat-file --batch-check`` finds ``sha`` (one that
    died says no, and is replaced for the next ask: a signal to the whole job reaches it too)."""
    try:
        repo.odb.info(bytes.fromhex(sha))
        return True
    except ValueError:  # missing, as far as it knows
        return False
    except Exception:  # it died: BrokenPipeError and the like
        repo.git.clear_cache()
        return False


def _sound(sha: str, kind: bytes | str, data: bytes) -> bool:
    """Whether ``data`` is the object ``sha`` names (a truncated object reads back short)."""
    kind = kind.encode() if isinstance(kind, str) else kind
    return hashlib.sha1(kind + b" " + str(len(data)).encode() + b"\0" + data).hexdigest() == sha


@dataclass(frozen=True)
class TreeChange:
    """One file that differs between two trees: (mode, blob) before and after, None if absent."""

    path: str
    old: tuple[bytes, str] | None
    new: tuple[bytes, str] | None


class Objects:
    """The objects of the git folder at ``path``: read (checked), written (in-process), trees cached.

    Trees never change, so recently read ones are kept in memory (up to TREE_CACHE_ENTRIES
    entries in all); a written object is a loose file renamed into place, so a reader sees all
    of it or none.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._objects = str(path / "objects")
        self._tmp_names = itertools.count()
        self._tmp_prefix = f".tmp-{os.getpid()}-{random.randrange(16**8):08x}"  # unique across hosts sharing a cache
        self._trees: OrderedDict[str, dict[str, tuple[bytes, str]]] = OrderedDict()
        self._tree_entries = 0
        self._open()

    def _open(self) -> None:
        import git  # here, not at the top: a server hook reading objects should not pay for GitPython

        self._repo = git.Repo(self.path)

    def heal(self, why: str, *, fetch: bool = True) -> None:
        """What a read that met a damaged object does before it reads once more: here, nothing
        can mend the folder, so say what is wrong (the cache rebuilds itself instead)."""
        raise GitqueueError(f"cannot read {self.path}: {why}")

    def read(self, sha: str) -> bytes:
        """One object, checked against its id. A damaged cache is rebuilt and read again once;
        CacheDamaged if the object is still not there (the caller reads from a fetched tip again)."""
        try:
            return self._read_checked(sha)
        except CacheDamaged as exc:
            self.heal(str(exc))
        return self._read_checked(sha)

    def _read_checked(self, sha: str) -> bytes:
        try:
            return self._read_once(sha)
        except CacheDamaged:
            # GitPython's long-lived `git cat-file` may have died: a signal for the whole job (Slurm's
            # scancel signals every process in it, a terminal's Ctrl-C the whole process group)
            # reaches it too. A fresh one decides whether the cache itself is damaged.
            self._repo.git.clear_cache()
            return self._read_once(sha)

    def _read_once(self, sha: str) -> bytes:
        loose = self._read_loose(sha)
        if loose is not None:
            return loose
        stream = None
        try:
            stream = self._repo.odb.stream(bytes.fromhex(sha))
            data: bytes = stream.read()
        except Exception as exc:  # missing, or a cat-file that died on a broken object: ValueError, BrokenPipeError
            _abandon(stream)
            raise CacheDamaged(f"object {sha} is missing or unreadable: {type(exc).__name__}") from None
        if len(data) != stream.size or not _sound(sha, stream.type, data):
            _abandon(stream)
            raise CacheDamaged(f"object {sha} reads back wrong ({len(data)} of {stream.size} bytes)")
        return data

    def _read_loose(self, sha: str) -> bytes | None:
        """Object ``sha`` read in-process from its loose file, checked against its id: what this
        machine's gitqueue processes write (new trees, commits) and small fetches leave loose, read
        without a round trip to ``git cat-file``. None if it is not loose, or reads back wrong
        (then ``git cat-file`` reads it, and says what is wrong as it always did)."""
        try:
            with open(f"{self._objects}/{sha[:2]}/{sha[2:]}", "rb") as loose:
                raw = zlib.decompress(loose.read())
        except (OSError, ValueError, zlib.error):
            return None
        header, nul, data = raw.partition(b"\0")
        kind, _, size = header.partition(b" ")
        if not nul or size != str(len(data)).encode() or not _sound(sha, kind, data):
            return None
        return data

    def read_many(self, shas: list[str]) -> dict[str, bytes]:
        """Many objects at once: one ``git cat-file --batch`` pass instead of a round trip each."""
        if len(shas) < 64:
            return {sha: self.read(sha) for sha in shas}
        try:
            return self._read_many(shas)
        except CacheDamaged as exc:
            self.heal(str(exc))
        return self._read_many(shas)

    def _read_many(self, shas: list[str]) -> dict[str, bytes]:
        proc = run_git(["cat-file", "--batch"], cwd=self.path, input="".join(f"{s}\n" for s in shas).encode())
        out, pos, found = proc.stdout, 0, {}
        for sha in shas:
            end = out.find(b"\n", pos)
            header = out[pos:end].split() if end >= 0 else []
            if len(header) != 3:
                said = header[-1].decode(errors="replace") if header else "no answer"
                raise CacheDamaged(f"object {sha} is missing or unreadable (git cat-file: {said})")
            size = int(header[2])
            found[sha] = data = out[end + 1 : end + 1 + size]
            if len(data) != size or not _sound(sha, header[1], data):
                raise CacheDamaged(f"object {sha} reads back wrong ({len(data)} of {size} bytes)")
            pos = end + 1 + size + 1
        return found

    def tree(self, sha: str) -> dict[str, tuple[bytes, str]]:
        """Entries of a tree object (cached: tree objects never change)."""
        entries = self._trees.get(sha)
        if entries is None:
            entries = parse_tree(self.read(sha))
            self._remember(sha, entries)
        else:
            self._trees.move_to_end(sha)
        return entries

    def count_files(self, sha: str, suffix: bytes = b".yaml") -> int:
        """How many entries of a tree are files named ``*suffix``: from the parsed tree if it
        is kept, else from the raw object, without parsing it into the cache (a count of a
        whole queue's folders would push out the trees its claims read)."""
        kept = self._trees.get(sha)
        if kept is not None:
            named = suffix.decode()
            return sum(1 for name, (mode, _) in kept.items() if mode != TREE_MODE and name.endswith(named))
        data, count, pos = self.read(sha), 0, 0
        while pos < len(data):
            nul = data.index(b"\0", pos)
            if not data.startswith(TREE_MODE + b" ", pos) and data.endswith(suffix, pos, nul):
                count += 1
            pos = nul + 21  # the name's NUL, then the 20-byte object id
        return count

    def _remember(self, sha: str, entries: dict[str, tuple[bytes, str]]) -> None:
        """Keep recently used trees, up to TREE_CACHE_ENTRIES entries in all: every claim
        makes new versions of a few large trees, and their old versions are rarely read."""
        self._trees[sha] = entries
        self._tree_entries += len(entries) + 1
        while self._tree_entries > TREE_CACHE_ENTRIES and len(self._trees) > 1:
            _, dropped = self._trees.popitem(last=False)
            self._tree_entries -= len(dropped) + 1

    def commit_tree(self, commit: str) -> str:
        head = self.read(commit).split(b"\n", 1)[0]
        assert head.startswith(b"tree ")
        return head[5:].decode()

    def _store(self, kind: bytes, data: bytes) -> str:
        """Write one loose object in-process (no git spawn); a no-op if it exists."""
        header = kind + b" " + str(len(data)).encode() + b"\0"
        sha = hashlib.sha1(header + data).hexdigest()
        folder = f"{self._objects}/{sha[:2]}"
        path = f"{folder}/{sha[2:]}"
        if not os.path.exists(path):
            tmp = f"{folder}/{self._tmp_prefix}-{threading.get_ident()}-{next(self._tmp_names)}"
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder)  # not makedirs: a cache folder that is gone must not come back half made
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except (FileNotFoundError, NotADirectoryError):
                raise CacheDamaged(f"the folder {self._objects} is gone") from None
            try:
                os.write(fd, zlib.compress(header + data, 1))
            finally:
                os.close(fd)
            os.replace(tmp, path)  # atomic: a reader sees all of the object or none
        return sha

    def write_blob(self, data: bytes) -> str:
        return self._store(b"blob", data)

    def write_tree(self, entries: dict[str, tuple[bytes, str]]) -> str:
        sha = self._store(b"tree", format_tree(entries))
        if sha not in self._trees:
            self._remember(sha, dict(entries))
        return sha

    def write_commit(
        self, *, tree: str, parent: str | None, message: str, author: Identity, when: float | None = None
    ) -> str:
        when = time.time() if when is None else when
        sig = author.signature(when)
        lines = [b"tree " + tree.encode()]
        if parent:
            lines.append(b"parent " + parent.encode())
        lines += [b"author " + sig, b"committer " + sig, b"", message.encode()]
        return self._store(b"commit", b"\n".join(lines))

    def edit_tree(self, root: str | None, changes: dict[str, str | None]) -> str:
        """A new root tree: ``changes`` maps a file path to a blob sha, or None to delete it.

        Only the trees on changed paths are rewritten. Emptied folders disappear, as in git.
        """
        grouped: dict[str, dict[str, str | None]] = {}
        files: dict[str, str | None] = {}
        for path, blob in changes.items():
            head, sep, rest = path.partition("/")
            if sep:
                grouped.setdefault(head, {})[rest] = blob
            else:
                files[path] = blob
        entries = dict(self.tree(root)) if root else {}
        for name, blob in files.items():
            if blob is None:
                entries.pop(name, None)
            else:
                entries[name] = (BLOB_MODE, blob)
        for name, sub in grouped.items():
            old = entries.get(name)
            subtree = self.edit_tree(old[1] if old and old[0] == TREE_MODE else None, sub)
            if self.tree(subtree):
                entries[name] = (TREE_MODE, subtree)
            else:
                entries.pop(name, None)
        return self.write_tree(entries)

    def has(self, sha: str) -> bool:
        """Whether the cache holds the object ``sha``: a loose file, else what GitPython's
        long-lived ``git cat-file --batch-check`` says (a ``git cat-file -e`` each was ~800
        processes a drain); in doubt, ``git cat-file -e``."""
        if os.path.isfile(f"{self._objects}/{sha[:2]}/{sha[2:]}") or _batch_knows(self._repo, sha):
            return True
        return run_git(["cat-file", "-e", sha], cwd=self.path).returncode == 0

    def diff_trees(self, old: str | None, new: str | None, prefix: str = "") -> Iterator[TreeChange]:
        """Files that differ between two trees, reading only the subtrees that differ."""
        if old == new:
            return
        before = self.tree(old) if old else {}
        after = self.tree(new) if new else {}
        for name in sorted(before.keys() | after.keys()):
            a, b = before.get(name), after.get(name)
            if a == b:
                continue
            path = prefix + name
            a_tree = a[1] if a and a[0] == TREE_MODE else None
            b_tree = b[1] if b and b[0] == TREE_MODE else None
            if a_tree or b_tree:
                yield from self.diff_trees(a_tree, b_tree, path + "/")
            a_file = a if a and a[0] != TREE_MODE else None
            b_file = b if b and b[0] != TREE_MODE else None
            if a_file or b_file:
                yield TreeChange(path, a_file, b_file)

    def walk(self, tree: str | None, prefix: str = "") -> Iterator[tuple[str, bytes, str]]:
        """Every file below ``tree`` as (path, mode, sha)."""
        for name, (mode, sha) in (self.tree(tree) if tree else {}).items():
            if mode == TREE_MODE:
                yield from self.walk(sha, prefix + name + "/")
            else:
                yield prefix + name, mode, sha
