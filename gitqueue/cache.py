"""The local cache: one remote's queue branch kept in a bare repository on this machine.

Owns the cache's folder (where it lives, named by the URL without its secrets), making it,
the damage that gets it moved aside and rebuilt (``heal``), the turn its processes take
(``turn``, a lock beside the objects), its upkeep (``maintain``), the refs each instance
fetches into (its ``namespace``), and the notes it keeps for every process sharing it (the
tip last seen, for shell completion; the commit last landed from it).

Built on :class:`gitqueue.commits.Commits` (the objects it holds) and may call
:mod:`gitqueue.git`. It never reaches the remote itself: what a rebuilt cache must fetch
again is the transport's to say (:meth:`Cache._refill`, which
:class:`gitqueue.gitstore.GitStore` fills in).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from gitqueue.commits import Commits
from gitqueue.errors import CacheDamaged, GitqueueError
from gitqueue.git import cache_root, canonical_url, run_git
from gitqueue.urls import redact

LOOSE_PER_FOLDER = 27  # git gc --auto packs when objects/17 holds more than this
MAINTAIN_PAUSE = 3600.0  # seconds between two gc runs in one cache
SEEN_FILE = "gitqueue-seen"  # in the cache: the branch's tip as last fetched, for shell completion
LANDED_FILE = "gitqueue-landed"  # in the cache: the last commit pushed from it that landed, and when


class CacheBusy(Exception):
    """Another process sharing the cache has its turn (see Cache.turn)."""


def cache_path(url: str, branch: str = "main", cache: Path | None = None) -> Path:
    """The local cache folder of one queue (``url`` as :func:`canonical_url` gives it), named
    by the URL without its secrets, so that a password is not kept even in a folder's name."""
    name = hashlib.sha1(f"{redact(url)}\0{branch}".encode()).hexdigest()[:16]
    return (cache or cache_root()) / name


def seen_tip(path: Path) -> str | None:
    """The queue branch's tip as the last process using the cache at ``path`` saw it (no fetch)."""
    try:
        return (path / SEEN_FILE).read_text().split()[0]
    except (OSError, IndexError):
        return None


def folder_id(path: Path) -> tuple[int, int] | None:
    """Which folder is at ``path`` now (a rebuilt cache is another folder at the same path)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _warn(message: str) -> None:
    logging.getLogger("gitqueue").warning("%s", message)


class Cache(Commits):
    """A bare cache of one remote's queue branch, shared by the processes of one machine.

    Each instance fetches into a ref of its own (below its ``namespace``), so several workers
    on one machine can share the cache's objects without fighting over refs.
    """

    def __init__(self, url: str, *, branch: str = "main", cache: Path | None = None) -> None:
        self.url = canonical_url(url)  # what git is given, secrets included (they are never printed)
        self.display = redact(self.url)  # what gitqueue prints and stores
        self.branch = branch
        self.path = cache_path(self.url, branch, cache)
        self._ensure_cache()
        self.namespace = f"refs/gitqueue/{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"
        self.ref = f"{self.namespace}/tip"
        self.tell: Callable[[str], None] = _warn  # how a rebuilt cache is reported (a worker: its log)
        self.heals = 0  # times this instance rebuilt a damaged cache
        super().__init__(self.path)
        self._local = threading.local()  # how deep this thread is in turn()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # wall time in fetch, push (stats)
        self._seen: str | None = None  # the branch's newest tip we know of: fetched, or pushed by us

    @property
    def seen(self) -> str | None:
        """The branch's newest tip this instance knows of (fetched, or pushed by it)."""
        return self._seen

    # ------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        super()._open()
        self._opened = folder_id(self.path)  # the folder this instance reads (see heal)

    def _ensure_cache(self) -> None:
        if (self.path / "HEAD").exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # a remnant without HEAD (half deleted, say): not a cache
            self._move_aside()
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.path.parent))
        proc = run_git(["init", "--bare", "-q", str(tmp)])
        if proc.returncode:
            raise GitqueueError(f"cannot create the local cache {tmp}: {proc.stderr.decode().strip()}")
        with open(tmp / "config", "a") as config:
            config.write(f"[gitqueue]\n\turl = {self.display}\n")
        try:
            tmp.rename(self.path)  # atomic: racing processes agree on one cache
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    def _rebuild(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".heal-lock"), "a+b") as lock:
            with contextlib.suppress(OSError):
                fcntl.flock(lock, fcntl.LOCK_EX)
            if folder_id(self.path) == self._opened or not (self.path / "HEAD").exists():
                self._move_aside()
            self._ensure_cache()
        self._open()

    def _move_aside(self) -> None:
        """Take the folder at ``path`` out of the way (atomically) and delete it."""
        aside = self.path.with_name(f".damaged-{self.path.name}-{os.getpid()}-{random.randrange(16**6):06x}")
        try:
            self.path.rename(aside)
        except OSError:
            return  # gone already (another process moved it)
        shutil.rmtree(aside, ignore_errors=True)

    def heal(self, why: str, *, fetch: bool = True) -> None:
        """Rebuild a damaged cache: move it aside, make a fresh one, reopen it, and (with
        ``fetch``) fetch the branch and the lease refs into it again.

        The cache is only a cache: everything in it that matters is on the remote. Processes
        sharing it take turns here (a lock beside it); one that finds a cache rebuilt since it
        opened it only reopens it. Objects this process wrote and did not push are lost, which
        is harmless: every write is built again on a fetched tip.
        """
        import git

        self.heals += 1
        self.tell(f"the local cache {self.path} is damaged ({why}); rebuilding it from {self.url}")
        self._repo.close()  # its cat-file reads the old folder
        for attempt in range(1, 4):
            try:
                self._rebuild()
                break
            except (GitqueueError, OSError, git.GitError) as exc:  # the folder went away again meanwhile
                if attempt == 3:
                    raise CacheDamaged(f"cannot rebuild the local cache {self.path}: {exc}") from None
        if fetch:
            with contextlib.suppress(GitqueueError):  # the next read or fetch says what is wrong
                self._refill()

    def _refill(self) -> None:
        """Fetch into a rebuilt cache what this instance reads from it: the transport knows how."""

    def close(self) -> None:
        """Release the cat-file processes and this instance's fetched refs, noting the tip
        last fetched (what shell completion reads)."""
        tip = self._seen
        if tip:
            tmp = self.path / f"{self._tmp_prefix}-seen"
            with contextlib.suppress(OSError):
                tmp.write_text(tip + "\n")
                tmp.replace(self.path / SEEN_FILE)
        shutil.rmtree(self.path / self.namespace, ignore_errors=True)
        self._repo.close()

    def maintain(self) -> None:
        """Let git pack the cache's loose objects once there are many, at most hourly.

        Most objects we write are reachable only from the remote once our fetch refs are
        gone, so git leaves them loose until its two-week grace lets it prune them; this is
        what bounds the cache. git gc --auto's own estimate (one fan-out folder against
        gc.auto's 6,700 / 256) is read here, and a stamp file keeps the walk to once an hour,
        so one-shot commands do not pay for it.
        """
        folder, stamp = Path(self._objects) / "17", self.path / "gitqueue-maintained"
        if not folder.is_dir() or len(os.listdir(folder)) <= LOOSE_PER_FOLDER:
            return
        if stamp.exists() and time.time() - stamp.stat().st_mtime < MAINTAIN_PAUSE:
            return
        stamp.touch()
        # Refs stay loose files: each instance reads its fetched refs straight from disk.
        with contextlib.suppress(subprocess.TimeoutExpired):
            options = ["-c", "gc.packRefs=false", "-c", "gc.autoDetach=false"]
            run_git([*options, "gc", "--auto", "--quiet"], cwd=self.path, timeout=600)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def turn(self, *, wait: bool = True) -> Iterator[None]:
        """Exclusive use of the remote among the processes sharing this cache, for one
        fetch-build-push try; without ``wait``, CacheBusy if another process has it now.

        Workers on one machine share a cache (the default): taking turns here, they never
        race each other's pushes, and each builds on the commit the one before it landed
        without fetching. Correctness never rests on it: the push is still a compare-and-
        swap, and workers on other machines still race. The kernel drops the lock of a
        process that dies.
        """
        if getattr(self._local, "depth", 0):  # already ours (a transaction inside another)
            yield
            return
        try:
            opened = open(self.path / "gitqueue.lock", "a+b")  # noqa: SIM115 (the with below closes it)
        except (FileNotFoundError, NotADirectoryError):
            raise CacheDamaged(f"the folder {self.path} is gone") from None
        with opened as lock:
            asked = time.monotonic()
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                locked = True
            except BlockingIOError:
                raise CacheBusy(f"another process is pushing from {self.path}") from None
            except OSError:  # a file system without locks (some network mounts): race as if alone
                locked = False
            if not locked:
                yield
                return
            got = time.monotonic()
            self.seconds["turn_wait"] += got - asked
            self._local.depth = 1
            try:
                yield
            finally:
                self._local.depth = 0
                fcntl.flock(lock, fcntl.LOCK_UN)
                self.seconds["turn_held"] += time.monotonic() - got

    def recent_landing(self, window: float) -> str | None:
        """The last commit pushed from this cache, if it landed less than ``window`` s ago
        (on this machine's monotonic clock) and nothing pushed from here lost since."""
        try:
            commit, branch, host, when = (self.path / LANDED_FILE).read_text().split()
        except (OSError, ValueError):
            return None
        if (branch, host) != (self.branch, socket.gethostname()) or not 0 <= time.monotonic() - float(when) <= window:
            return None
        return commit

    def _note_landing(self, commit: str | None) -> None:
        """Remember (for every process sharing the cache) what we landed, or forget it."""
        path = self.path / LANDED_FILE
        if commit is None:
            with contextlib.suppress(OSError):
                path.unlink()
            return
        tmp = self.path / f"{self._tmp_prefix}-landed"
        with contextlib.suppress(OSError):
            tmp.write_text(f"{commit} {self.branch} {socket.gethostname()} {time.monotonic()}\n")
            tmp.replace(path)  # atomic: readers see the old note or the new one

    def _has_fetched(self) -> bool:
        """Whether this cache holds objects: it fetched from the remote before (a new cache
        for a mistyped path holds none)."""
        objects = Path(self._objects)
        try:
            return any(len(p.name) == 2 for p in objects.iterdir()) or any((objects / "pack").glob("*.pack"))
        except OSError:
            return False

    def _read_ref(self) -> str | None:
        try:
            return (self.path / self.ref).read_text().strip() or None
        except FileNotFoundError:
            proc = run_git(["rev-parse", "-q", "--verify", self.ref], cwd=self.path)
            return proc.stdout.decode().strip() or None
