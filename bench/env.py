"""The sandbox every benchmark runs in, the loopback remotes, and the machine's description.

Nothing here touches the user's caches, git identity or queue config: HOME, the XDG folders
and GITQUEUE_CACHE point into one temporary folder that is removed at the end, and every
server listens on 127.0.0.1 only and is stopped on the way out, also on error.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gitqueue.testing import GitDaemon, SmartHTTPServer, make_bare_repo

TRANSPORTS = ("path", "daemon", "http")
# Variables that would let a run see the user's queue, identity or repositories.
_SCRUB = (
    "GITQUEUE_QUEUE", "GITQUEUE_WORKER", "GITQUEUE_TOKEN", "GITQUEUE_STATS_FILE", "GIT_DIR", "GIT_WORK_TREE",
    "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_EMAIL", "GIT_CONFIG", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT",
)  # fmt: skip
# Raw git needs an identity for commit-tree; gitqueue gets none (its fallback is measured).
RAW_IDENTITY = {
    "GIT_AUTHOR_NAME": "raw git",
    "GIT_AUTHOR_EMAIL": "raw@bench.invalid",
    "GIT_COMMITTER_NAME": "raw git",
    "GIT_COMMITTER_EMAIL": "raw@bench.invalid",
}


@contextlib.contextmanager
def sandbox(*, keep: bool = False) -> Iterator[Path]:
    """A temporary root with its own HOME, caches and no git identity; os.environ restored after."""
    root = Path(tempfile.mkdtemp(prefix="gitqueue-bench-"))
    saved = dict(os.environ)
    home = root / "home"
    home.mkdir()
    for name in _SCRUB:
        os.environ.pop(name, None)
    os.environ.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        GITQUEUE_CACHE=str(root / "cache"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    try:
        yield root
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if keep:
            print(f"bench: kept {root}")
        else:
            t = time.monotonic()
            shutil.rmtree(root, ignore_errors=True)
            print(f"bench: removed {root} in {time.monotonic() - t:.0f}s", file=sys.stderr)


def git(
    *args: str,
    cwd: Path | None = None,
    input: bytes | None = None,
    identity: bool = False,
    env: dict[str, str] | None = None,
) -> bytes:
    """Run git (for raw-git measurements and checks), fail loudly, return stdout."""
    full = {**os.environ, **(RAW_IDENTITY if identity else {}), **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True, env=full, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"git {' '.join(args[:3])} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Remote:
    """One bare repository on disk and the URL that reaches it over one transport."""

    transport: str
    url: str
    path: Path


class Transport:
    """Bare repositories under one folder, reached by path, ``git daemon`` or smart HTTP."""

    def __init__(self, kind: str, base: Path) -> None:
        self.kind = kind
        self.base = base
        self.server: GitDaemon | SmartHTTPServer | None = None
        self._count = 0

    def new_remote(self, label: str = "queue") -> Remote:
        self._count += 1
        name = f"{label}-{self._count}.git"
        path = make_bare_repo(self.base / name)
        url = str(path) if self.server is None else self.server.url(name)
        return Remote(self.kind, url, path)


@contextlib.contextmanager
def transport(kind: str, base: Path) -> Iterator[Transport]:
    """Serve ``base`` over ``kind``; the server is stopped when the block ends, also on error."""
    base.mkdir(parents=True, exist_ok=True)
    t = Transport(kind, base)
    if kind == "path":
        yield t
        return
    server = GitDaemon(base) if kind == "daemon" else SmartHTTPServer(base)
    with server:
        t.server = server
        yield t


def machine() -> dict[str, str]:
    """Date, cores, CPU model and versions: the header of every results file."""
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import gitqueue

    mem = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "git": git("--version").decode().strip().removeprefix("git version "),
        "python": platform.python_version(),
        "gitqueue": gitqueue.__version__,
        "commit": _head(),
    }


def _head() -> str:
    here = Path(__file__).resolve().parent.parent
    with contextlib.suppress(RuntimeError, OSError):
        sha = git("rev-parse", "--short", "HEAD", cwd=here).decode().strip()
        dirty = git("status", "--porcelain", "--untracked-files=no", cwd=here).strip()
        return sha + ("+dirty" if dirty else "")
    return "unknown"


def repo_bytes(path: Path) -> tuple[int, int]:
    """(bytes in packs, bytes in loose objects) of a bare repository."""
    packed = loose = 0
    objects = path / "objects"
    for entry in objects.iterdir():
        if entry.name == "pack":
            packed += sum(f.stat().st_size for f in entry.glob("*.pack"))
        elif len(entry.name) == 2 and entry.is_dir():
            loose += sum(f.stat().st_size for f in entry.iterdir())
    return packed, loose


def seed_queue(url: str, tasks: int, folder: Path, *, args: str = "i") -> tuple[list[str], str]:
    """Initialise a queue at ``url`` with ``tasks`` pending tasks in one submit; (ids, tip)."""
    from gitqueue import Queue

    folder.mkdir(parents=True, exist_ok=True)
    with Queue.init(url, folder=folder, cache=folder / "seed-cache", worker="bench-seed") as q:
        ids = q.submit([{"args": {args: i}} for i in range(tasks)]) if tasks else []
        tip = q.store.fetch()
    shutil.rmtree(folder / "seed-cache", ignore_errors=True)
    assert tip is not None
    return ids, tip


def compile_gitqueue() -> None:
    """Write gitqueue's bytecode once, as a user's machine has it after the first run: where
    PYTHONDONTWRITEBYTECODE is set (this project's own machine sets it) every worker process
    would otherwise compile the package again, about 75 ms of CPU each."""
    import gitqueue

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(gitqueue.__file__).parent)], check=False)


def gitqueue_command() -> list[str]:
    """The installed ``gitqueue`` entry point, else ``python -m gitqueue``."""
    found = shutil.which("gitqueue")
    return [found] if found else [sys.executable, "-m", "gitqueue"]
