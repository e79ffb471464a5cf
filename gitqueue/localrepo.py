"""A person's own repository (or a server's, inside its hook), read with no cache.

Owns :class:`LocalRepo`: reading objects through one plain ``git cat-file --batch`` (no
GitPython, so a hook starts fast), the staged tree, the work tree's top and hooks folder.

Built on :class:`gitqueue.gitstore.GitStore` for the reading it shares (trees, history,
diffs), so that the checks written against a store (``validate``, ``hooks``) take a
``LocalRepo`` as well; it never fetches or pushes. May call :mod:`gitqueue.git`.
"""

from __future__ import annotations

import os
import subprocess
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import IO

from gitqueue.errors import GitqueueError
from gitqueue.git import GIT_ENV, run_git
from gitqueue.gitstore import GitStore


class LocalRepo(GitStore):
    """Read-only access to a repository on this machine, with no cache and no GitPython.

    Used inside a server's ``pre-receive`` hook (the pushed objects are still in git's
    quarantine, which the ``git cat-file`` started here sees through the hook's environment)
    and in a person's clone (``pre-commit``, ``validate``). Starts fast: one ``cat-file``.
    """

    def __init__(self, path: Path | str = ".") -> None:  # no super(): there is no cache to make
        self.url = self.display = str(path)
        self.branch = ""
        self.path = Path(path)
        self.namespace = self.ref = ""
        self._trees = OrderedDict()
        self._tree_entries = 0
        self._entries = {}
        self.pushes = self.rejected_pushes = self.fetches = 0
        self.seconds = defaultdict(float)
        self._batch: subprocess.Popen[bytes] | None = None

    def heal(self, why: str, *, fetch: bool = True) -> None:
        """A repository that is no cache cannot be rebuilt: say what is wrong with it."""
        raise GitqueueError(f"cannot read {self.url}: {why}")

    def has(self, sha: str) -> bool:
        """Whether the repository holds the object ``sha``: one ``git cat-file -e`` (no GitPython)."""
        return run_git(["cat-file", "-e", sha], cwd=self.path).returncode == 0

    def read(self, sha: str) -> bytes:
        if self._batch is None:
            self._batch = subprocess.Popen(
                ["git", "cat-file", "--batch"],
                cwd=self.path,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **GIT_ENV},
            )
        stdin, stdout = _pipes(self._batch)
        stdin.write(sha.encode() + b"\n")
        stdin.flush()
        header = stdout.readline()
        if header.endswith(b" missing\n") or not header:
            raise GitqueueError(f"object {sha} is not in {self.path}")
        size = int(header.split()[2])
        data = stdout.read(size)
        stdout.read(1)
        return data

    def index_tree(self) -> str:
        """The tree the next commit would have: the staged files (``git write-tree``)."""
        proc = run_git(["write-tree"], cwd=self.path)
        if proc.returncode:
            raise GitqueueError(f"cannot read the staged files: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode().strip()

    def top(self) -> Path | None:
        """The work tree's top folder, or None in a bare repository."""
        proc = run_git(["rev-parse", "--show-toplevel"], cwd=self.path)
        return Path(proc.stdout.decode().strip()) if proc.returncode == 0 else None

    def hooks_dir(self) -> Path:
        """Where this repository's hooks live (``core.hooksPath`` honoured)."""
        proc = run_git(["rev-parse", "--git-path", "hooks"], cwd=self.path)
        if proc.returncode:
            raise GitqueueError(f"{self.path} is not a git repository: {proc.stderr.decode(errors='replace').strip()}")
        path = Path(proc.stdout.decode().strip())
        return path if path.is_absolute() else self.path / path

    def first_commit(self, tip: str) -> str:
        """The oldest commit in ``tip``'s history (its root; the oldest of several)."""
        proc = run_git(["rev-list", "--max-parents=0", "--reverse", tip], cwd=self.path)
        roots = proc.stdout.decode().split()
        if proc.returncode or not roots:
            raise GitqueueError(f"cannot read the history of {tip}: {proc.stderr.decode(errors='replace').strip()}")
        return roots[0]

    def __enter__(self) -> LocalRepo:
        return self

    def close(self) -> None:
        if self._batch is not None:
            for pipe in (self._batch.stdin, self._batch.stdout):
                if pipe is not None:
                    pipe.close()
            self._batch.wait()
            self._batch = None


def _pipes(proc: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert proc.stdin is not None and proc.stdout is not None
    return proc.stdin, proc.stdout
