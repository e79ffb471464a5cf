"""Shared fixtures: every test gets its own caches, identity and bare remotes in tmp_path.

``remote_url`` is parametrised over three real transports on loopback: a bare repository
by path, ``git daemon`` and git's smart HTTP backend. Tests that take it run once per
transport.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from gitqueue import Queue
from gitqueue.testing import GitDaemon, SmartHTTPServer, make_bare_repo

T = TypeVar("T")

# Tests run the entry point of the environment running them (`.venv/bin/gitqueue`), whether or
# not that environment is activated, never one installed elsewhere on the machine.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def poll_until(check: Callable[[], T], *, what: str, timeout: float = 20.0) -> T:
    """Call ``check`` until it returns something true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.03)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test sees the user's caches, queue config or git identity."""
    return isolate(tmp_path, monkeypatch)


def isolate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME, the caches and git's config into ``tmp_path`` and work in tmp_path/work (also
    for module-scoped fixtures, which run before ``isolated_env``); returns the new HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GITQUEUE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GITQUEUE_QUEUE", "GITQUEUE_BRANCH", "GITQUEUE_WORKER", "GITQUEUE_TOKEN", "GIT_DIR", "GIT_WORK_TREE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    # Config that would reach git around HOME (a CI's global file, `git -c` from a hook).
    for name in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


@pytest.fixture
def bare_remote(tmp_path: Path) -> Path:
    """An empty bare repository, the queue's remote, reached by path."""
    return make_bare_repo(tmp_path / "srv" / "queue.git")


@pytest.fixture(params=["path", "daemon", "http"])
def remote_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty queue remote over each transport in turn."""
    base = tmp_path / "srv"
    make_bare_repo(base / "queue.git")
    if request.param == "path":
        yield str(base / "queue.git")
        return
    server_class = GitDaemon if request.param == "daemon" else SmartHTTPServer
    with server_class(base) as server:
        yield server.url("queue.git")


@pytest.fixture
def queue(bare_remote: Path) -> Iterator[Queue]:
    """An initialised queue on a local bare remote."""
    with Queue.init(str(bare_remote), worker="test-box/0") as q:
        yield q


class RemoteRepo:
    """A queue's remote read with plain git (and edited as a person would: clone, commit, push)."""

    _clones = itertools.count()

    def __init__(self, path: Path) -> None:
        self.path = path

    def git(self, *args: str, cwd: Path | None = None) -> str:
        proc = subprocess.run(["git", *args], cwd=cwd or self.path, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, f"git {' '.join(args)} failed: {proc.stderr}"
        return proc.stdout

    def tip(self) -> str:
        return self.git("rev-parse", "refs/heads/main").strip()

    def count(self) -> int:
        """Commits on the queue branch."""
        return int(self.git("rev-list", "--count", "refs/heads/main"))

    def files(self) -> list[str]:
        return self.git("ls-tree", "-r", "--name-only", "refs/heads/main").split()

    def read(self, path: str) -> str:
        return self.git("show", f"refs/heads/main:{path}")

    def locations(self) -> dict[str, list[str]]:
        """Task id -> every path holding a file for it (a sound queue has exactly one)."""
        found: dict[str, list[str]] = {}
        for path in self.files():
            if "/" in path and path.endswith(".yaml"):
                found.setdefault(path.rsplit("/", 1)[1].removesuffix(".yaml"), []).append(path)
        return found

    def states(self) -> dict[str, str]:
        """Task id -> its state folder; fails if a task sits in more than one place."""
        places = self.locations()
        doubled = {i: p for i, p in places.items() if len(p) > 1}
        assert not doubled, f"tasks in more than one place: {doubled}"
        return {i: p[0].split("/", 1)[0] for i, p in places.items()}

    def log(self, fmt: str = "%s") -> list[str]:
        """One formatted entry per commit on the branch, oldest first."""
        out = self.git("log", "--reverse", f"--format={fmt}%x00", "refs/heads/main")
        return [entry.strip("\n") for entry in out.split("\0")[:-1]]

    def fsck(self) -> None:
        proc = subprocess.run(
            ["git", "fsck", "--strict", "--no-progress"], cwd=self.path, capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, f"git fsck failed: {proc.stdout}{proc.stderr}"
        bad = [line for line in (proc.stdout + proc.stderr).splitlines() if not line.startswith("dangling ")]
        assert not bad, f"git fsck reports: {bad}"

    def person_commit(self, files: dict[str, str | None], message: str = "edit tasks by hand") -> str:
        """Write (or, with None, delete) files on main as a person would; returns the new tip."""
        clone = self.path.parent / f"person-{next(self._clones)}"
        self.git("clone", "-q", str(self.path), str(clone), cwd=self.path.parent)
        for name, text in files.items():
            target = clone / name
            if text is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text)
        self.git("add", "-A", cwd=clone)
        self.git("-c", "user.name=A Person", "-c", "user.email=person@example.org", "commit", "-q", "-m", message,
                 cwd=clone)  # fmt: skip
        self.git("push", "-q", "origin", "HEAD:main", cwd=clone)
        return self.tip()


@pytest.fixture
def remote_repo(tmp_path: Path) -> RemoteRepo:
    """The remote of ``bare_remote`` or ``remote_url`` (tmp_path/srv/queue.git), read with plain git."""
    return RemoteRepo(tmp_path / "srv" / "queue.git")
