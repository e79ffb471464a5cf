"""All of gitqueue's git I/O: a bare local cache of one queue remote.

Nothing else in gitqueue spawns git. Objects are read through GitPython's persistent
``git cat-file --batch`` and written in-process (gitdb's loose object store), so building a
commit costs no process spawns; only ``fetch`` and ``push`` run git.

A push is a compare-and-swap: the new commit's parent is the tip we fetched, and a plain
(never forced) push only lands if the remote branch is still at that tip. Every way git
reports a lost race counts as one; an outcome we could not observe (timeout, dropped
connection) is decided by fetching and looking for our commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from gitqueue.errors import GitqueueError, PushRefused, QueueNotFound, RemoteUnavailable

GIT_TIMEOUT = 60.0
MAINTAIN_EVERY = 2000  # pushes between looks at the cache's loose objects
LOOSE_PER_FOLDER = 27  # git gc --auto packs when objects/17 holds more than this
MAINTAIN_PAUSE = 3600.0  # seconds between two gc runs in one cache
TREE_CACHE_ENTRIES = 30_000  # tree entries kept in memory; claims keep sorted candidates, not trees
# Where runs keep their leases alive: one ref per run token, outside the queue branch.
LEASE_REFS = "refs/gitqueue/leases"
LANDED_FILE = "gitqueue-landed"  # in the cache: the last commit pushed from it that landed, and when
TREE_MODE = b"40000"
BLOB_MODE = b"100644"
# How git says "someone else moved the ref first"; every form leaves the ref unchanged.
LOST_RACE_SIGNS = (
    "[rejected]",
    "[remote rejected]",
    "non-fast-forward",
    "fetch first",
    "stale info",
    "failed to update ref",
    "cannot lock ref",
    "File exists",
    "failed to lock",
)
_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "LC_ALL": "C",
}


class CacheBusy(Exception):
    """Another process sharing the cache has its turn (see GitStore.turn)."""


class PushOutcome(Enum):
    LANDED = "landed"
    LOST_RACE = "lost race"
    UNKNOWN = "unknown"  # not seen (timeout, dropped connection): learn it with settle()


@dataclass(frozen=True)
class Identity:
    name: str
    email: str

    def signature(self, when: float) -> bytes:
        offset = -time.timezone if not time.localtime(when).tm_isdst else -time.altzone
        sign = "+" if offset >= 0 else "-"
        hhmm = f"{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
        return f"{self.name} <{self.email}> {int(when)} {sign}{hhmm}".encode()


def cache_root() -> Path:
    """Where local caches live: ``$GITQUEUE_CACHE``, else the XDG cache folder."""
    if os.environ.get("GITQUEUE_CACHE"):
        return Path(os.environ["GITQUEUE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gitqueue"


def run_git(
    args: list[str], *, cwd: Path | None = None, timeout: float = GIT_TIMEOUT, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run one git command, never prompting, output captured.

    git runs in a session of its own, so a Ctrl-C meant for a worker cannot cut a push
    in half; the worker decides when to stop.
    """
    env = {**os.environ, **_ENV}
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=env,
        input=input,
        capture_output=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )


def init_bare(path: Path, *, branch: str = "main") -> None:
    """Create a bare repository at ``path`` (used for the embedded default queue)."""
    proc = run_git(["init", "--bare", "-q", "-b", branch, str(path)])
    if proc.returncode:
        raise GitqueueError(f"cannot create a repository at {path}: {proc.stderr.decode().strip()}")
    # Git does not notice a bare repository inside a work tree; keep it out of `git add .`.
    (path / ".gitignore").write_text("*\n")


def is_local_path(url: str) -> bool:
    return "://" not in url and not _looks_like_scp(url)


def _looks_like_scp(url: str) -> bool:
    head = url.split("/", 1)[0]
    return ":" in head and not (len(head) == 2 and head[1] == ":")


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


class GitStore:
    """A bare cache of one remote's queue branch, shared by the processes of one machine.

    Each instance fetches into a ref of its own, so several workers on one machine can share
    the cache's objects without fighting over refs.
    """

    def __init__(
        self, url: str, *, branch: str = "main", cache: Path | None = None, patience: float = 120.0
    ) -> None:
        # git runs in the cache folder, so a relative path must be made absolute first.
        self.url = str(Path(url).expanduser().resolve()) if is_local_path(url) else url
        self.branch = branch
        self.patience = patience  # how long an unreachable remote is retried to learn a push's outcome
        root = cache or cache_root()
        name = hashlib.sha1(f"{self.url}\0{branch}".encode()).hexdigest()[:16]
        self.path = root / name
        self._ensure_cache()
        self.namespace = f"refs/gitqueue/{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"
        self.ref = f"{self.namespace}/tip"
        self._objects = str(self.path / "objects")
        self._tmp_names = itertools.count()
        self._tmp_prefix = f".tmp-{os.getpid()}-{random.randrange(16**8):08x}"  # unique across hosts sharing a cache
        import git  # here, not at the top: a server hook reading objects should not pay for GitPython

        self._repo = git.Repo(self.path)
        self._trees: OrderedDict[str, dict[str, tuple[bytes, str]]] = OrderedDict()
        self._tree_entries = 0
        self.pushes = 0
        self.rejected_pushes = 0
        self.fetches = 0
        self._local = threading.local()  # how deep this thread is in turn()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # wall time in fetch, push (stats)
        self.last_rejection = ""  # what the remote said when it last refused a push

    # ------------------------------------------------------------ lifecycle

    def _ensure_cache(self) -> None:
        if (self.path / "HEAD").exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.path.parent))
        proc = run_git(["init", "--bare", "-q", str(tmp)])
        if proc.returncode:
            raise GitqueueError(f"cannot create the local cache {tmp}: {proc.stderr.decode().strip()}")
        with open(tmp / "config", "a") as config:
            config.write(f"[gitqueue]\n\turl = {self.url}\n")
        try:
            tmp.rename(self.path)  # atomic: racing processes agree on one cache
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        """Release the cat-file processes and this instance's fetched refs."""
        shutil.rmtree(self.path / self.namespace, ignore_errors=True)
        self._repo.close()
        if self.pushes:
            self.maintain()

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

    def __enter__(self) -> GitStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ remote

    def fetch(self, *, leases: bool = False) -> str | None:
        """Bring the remote branch into the cache; return its tip, or None if it has none.

        With ``leases``, also mirror the remote's lease refs (see :meth:`leases`).
        """
        self.fetches += 1
        started = time.monotonic()
        try:
            return self._fetch(leases)
        finally:
            self.seconds["fetch"] += time.monotonic() - started

    def _fetch(self, leases: bool) -> str | None:
        refspecs = [f"+refs/heads/{self.branch}:{self.ref}"]
        if leases:
            refspecs.append(f"+{LEASE_REFS}/*:{self.namespace}/leases/*")
        proc = run_git(
            [
                "-c",
                "protocol.version=0",
                "fetch",
                "-q",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-auto-maintenance",
                *(["--prune"] if leases else []),
                self.url,
                *refspecs,
            ],
            cwd=self.path,
        )
        if proc.returncode:
            err = proc.stderr.decode(errors="replace").strip()
            if f"couldn't find remote ref refs/heads/{self.branch}" in err:
                return None
            if "does not appear to be a git repository" in err or "not found" in err.lower():
                raise QueueNotFound(f"{self.url} is not a git repository: {err.splitlines()[-1] if err else ''}")
            raise RemoteUnavailable(f"cannot fetch from {self.url}: {err.splitlines()[-1] if err else proc.returncode}")
        return self._read_ref()

    def _read_ref(self) -> str | None:
        try:
            return (self.path / self.ref).read_text().strip() or None
        except FileNotFoundError:
            proc = run_git(["rev-parse", "-q", "--verify", self.ref], cwd=self.path)
            return proc.stdout.decode().strip() or None

    def push(self, new: str, old: str | None, *, also: list[str] | None = None) -> PushOutcome:
        """Compare-and-swap the remote branch from ``old`` to ``new`` (a child of ``old``).

        ``also`` are refspecs pushed atomically with it (e.g. deleting a finished run's
        lease ref). UNKNOWN if git did not say (timeout, dropped connection): then the
        caller learns the outcome with :meth:`settle`.
        """
        self.pushes += 1
        if self.pushes % MAINTAIN_EVERY == 0:
            self.maintain()
        extra = ["--atomic", *also] if also else []
        started = time.monotonic()
        try:
            proc = run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f"{new}:refs/heads/{self.branch}", *extra],
                cwd=self.path,
            )
        except subprocess.TimeoutExpired:
            self._note_landing(None)
            return PushOutcome.UNKNOWN
        finally:
            self.seconds["push"] += time.monotonic() - started
        if proc.returncode == 0:
            self._note_landing(new)
            return PushOutcome.LANDED
        self._note_landing(None)
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if "hook declined" in output:
            raise PushRefused(remote_says(output) or "the remote's hook refused the push")
        if any(sign in output for sign in LOST_RACE_SIGNS):
            why = [line for line in output.splitlines() if any(sign in line for sign in LOST_RACE_SIGNS)]
            self.last_rejection = " ".join(" ".join(why).split())[:500]  # e.g. which lock file exists
            self.rejected_pushes += 1
            return PushOutcome.LOST_RACE
        return PushOutcome.UNKNOWN

    def settle(self, new: str) -> PushOutcome:
        """A push whose outcome we did not see: fetch (retrying) and look for our commit.
        Raises RemoteUnavailable if the remote stays unreachable for the store's patience."""
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                tip = self.fetch()
                break
            except RemoteUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if tip is not None and self.is_ancestor(new, tip):
            return PushOutcome.LANDED
        self.rejected_pushes += 1
        return PushOutcome.LOST_RACE

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
        with open(self.path / "gitqueue.lock", "a+b") as lock:
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

    def leases(self) -> dict[str, str]:
        """Lease refs seen by the last ``fetch(leases=True)``: run token -> heartbeat commit."""
        folder = self.path / self.namespace / "leases"
        try:
            return {ref.name: ref.read_text().strip() for ref in folder.iterdir() if ref.is_file()}
        except FileNotFoundError:
            return {}

    def heartbeat(self, token: str, *, parent: str | None, message: str, author: Identity) -> str | None:
        """Push a heartbeat commit to the run's own lease ref; None if it could not be pushed.

        Heartbeats never touch the queue branch, so its history stays one commit per state
        change. Each heartbeat is a fast-forward of the previous one (never a forced push).
        """
        commit = self.write_commit(tree=self.write_tree({}), parent=parent, message=message, author=author)
        try:
            proc = run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f"{commit}:{LEASE_REFS}/{token}"], cwd=self.path
            )
        except subprocess.TimeoutExpired:
            return None
        return commit if proc.returncode == 0 else None

    def drop_lease(self, token: str) -> None:
        """Delete a run's lease ref (a deletion, not a forced push); gone already is fine."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            run_git(["push", "--porcelain", "--no-verify", "-q", self.url, f":{LEASE_REFS}/{token}"], cwd=self.path)

    def commit_time(self, commit: str) -> float:
        """The committer time of ``commit`` (as the committing machine's clock had it)."""
        for line in self.read(commit).split(b"\n"):
            if line.startswith(b"committer "):
                return float(line.rsplit(b" ", 2)[1])
            if not line:
                break
        raise GitqueueError(f"commit {commit} has no committer line")

    def is_ancestor(self, commit: str, tip: str) -> bool:
        if commit == tip:
            return True
        proc = run_git(["merge-base", "--is-ancestor", commit, tip], cwd=self.path)
        return proc.returncode == 0

    # ------------------------------------------------------------ objects

    def read(self, sha: str) -> bytes:
        return self._repo.odb.stream(bytes.fromhex(sha)).read()

    def read_many(self, shas: list[str]) -> dict[str, bytes]:
        """Many objects at once: one ``git cat-file --batch`` pass instead of a round trip each."""
        if len(shas) < 64:
            return {sha: self.read(sha) for sha in shas}
        proc = run_git(["cat-file", "--batch"], cwd=self.path, input="".join(f"{s}\n" for s in shas).encode())
        out, pos, found = proc.stdout, 0, {}
        for sha in shas:
            end = out.index(b"\n", pos)
            header = out[pos:end].split()
            if len(header) != 3:
                raise GitqueueError(f"object {sha} is missing from the local cache {self.path}")
            size = int(header[2])
            found[sha] = out[end + 1 : end + 1 + size]
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
            os.makedirs(folder, exist_ok=True)
            tmp = f"{folder}/{self._tmp_prefix}-{threading.get_ident()}-{next(self._tmp_names)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
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

    # ------------------------------------------------------------ identity

    def identity(self, fallback: str) -> Identity:
        """The person's git identity where one is configured, else ``gitqueue <fallback>``."""
        name = run_git(["config", "--get", "user.name"], cwd=self.path).stdout.decode().strip()
        email = run_git(["config", "--get", "user.email"], cwd=self.path).stdout.decode().strip()
        if name and email:
            return Identity(name, email)
        return Identity(name or "gitqueue", email or fallback)

    # ------------------------------------------------------------ history (for hooks, validate and log)

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
        """The last ``count`` commits up to ``tip``, newest first, without their changes."""
        proc = run_git(["rev-list", f"--max-count={count}", tip], cwd=self.path)
        if proc.returncode:
            raise GitqueueError(f"cannot read the history of {tip}: {proc.stderr.decode(errors='replace').strip()}")
        return [self._log_entry(commit, ()) for commit in proc.stdout.decode().split()]

    def _log_entry(self, commit: str, changes: tuple[TreeChange, ...]) -> LogEntry:
        raw = self.read(commit)
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


LINK_MODE = b"120000"
ZERO_SHA = "0" * 40


@dataclass(frozen=True)
class TreeChange:
    """One file that differs between two trees: (mode, blob) before and after, None if absent."""

    path: str
    old: tuple[bytes, str] | None
    new: tuple[bytes, str] | None


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


def remote_says(output: str) -> str:
    """What a remote's hook printed (git's ``remote:`` lines), without the prefix and padding."""
    lines = [line[len("remote:") :].strip() for line in output.splitlines() if line.startswith("remote:")]
    return "\n".join(line for line in lines if line)


class LocalRepo(GitStore):
    """Read-only access to a repository on this machine, with no cache and no GitPython.

    Used inside a server's ``pre-receive`` hook (the pushed objects are still in git's
    quarantine, which the ``git cat-file`` started here sees through the hook's environment)
    and in a person's clone (``pre-commit``, ``validate``). Starts fast: one ``cat-file``.
    """

    def __init__(self, path: Path | str = ".") -> None:  # no super(): there is no cache to make
        self.url = str(path)
        self.branch = ""
        self.path = Path(path)
        self.namespace = self.ref = ""
        self._trees = OrderedDict()
        self._tree_entries = 0
        self.pushes = self.rejected_pushes = self.fetches = 0
        self.seconds = defaultdict(float)
        self._batch: subprocess.Popen[bytes] | None = None

    def read(self, sha: str) -> bytes:
        if self._batch is None:
            self._batch = subprocess.Popen(
                ["git", "cat-file", "--batch"],
                cwd=self.path,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, **_ENV},
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
