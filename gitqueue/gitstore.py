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

import hashlib
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
import zlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import git

from gitqueue.errors import GitqueueError, QueueNotFound, RemoteUnavailable

GIT_TIMEOUT = 60.0
# Where runs keep their leases alive: one ref per run token, outside the queue branch.
LEASE_REFS = "refs/gitqueue/leases"
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


class PushOutcome(Enum):
    LANDED = "landed"
    LOST_RACE = "lost race"


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

    def __init__(self, url: str, *, branch: str = "main", cache: Path | None = None) -> None:
        self.url = url
        self.branch = branch
        root = cache or cache_root()
        name = hashlib.sha1(f"{url}\0{branch}".encode()).hexdigest()[:16]
        self.path = root / name
        self._ensure_cache()
        self.namespace = f"refs/gitqueue/{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"
        self.ref = f"{self.namespace}/tip"
        self._repo = git.Repo(self.path)
        self._trees: dict[str, dict[str, tuple[bytes, str]]] = {}
        self.pushes = 0
        self.rejected_pushes = 0

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

    def __enter__(self) -> GitStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ remote

    def fetch(self, *, leases: bool = False) -> str | None:
        """Bring the remote branch into the cache; return its tip, or None if it has none.

        With ``leases``, also mirror the remote's lease refs (see :meth:`leases`).
        """
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
        lease ref). Raises RemoteUnavailable only if the outcome cannot be learnt by
        fetching either.
        """
        self.pushes += 1
        extra = ["--atomic", *also] if also else []
        try:
            proc = run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f"{new}:refs/heads/{self.branch}", *extra],
                cwd=self.path,
            )
        except subprocess.TimeoutExpired:
            return self._settle(new)
        if proc.returncode == 0:
            return PushOutcome.LANDED
        output = (proc.stdout + proc.stderr).decode(errors="replace")
        if any(sign in output for sign in LOST_RACE_SIGNS):
            self.rejected_pushes += 1
            return PushOutcome.LOST_RACE
        return self._settle(new)

    def _settle(self, new: str) -> PushOutcome:
        """A push whose outcome we did not see: fetch (retrying) and look for our commit."""
        deadline = time.monotonic() + GIT_TIMEOUT
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

    def tree(self, sha: str) -> dict[str, tuple[bytes, str]]:
        """Entries of a tree object (cached: tree objects never change)."""
        entries = self._trees.get(sha)
        if entries is None:
            entries = parse_tree(self.read(sha))
            if len(self._trees) > 50_000:
                self._trees.clear()
            self._trees[sha] = entries
        return entries

    def commit_tree(self, commit: str) -> str:
        head = self.read(commit).split(b"\n", 1)[0]
        assert head.startswith(b"tree ")
        return head[5:].decode()

    def _store(self, kind: bytes, data: bytes) -> str:
        header = kind + b" " + str(len(data)).encode() + b"\0"
        sha = hashlib.sha1(header + data).hexdigest()
        path = self.path / "objects" / sha[:2] / sha[2:]
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as out:
                out.write(zlib.compress(header + data, 1))
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        return sha

    def write_blob(self, data: bytes) -> str:
        return self._store(b"blob", data)

    def write_tree(self, entries: dict[str, tuple[bytes, str]]) -> str:
        sha = self._store(b"tree", format_tree(entries))
        self._trees.setdefault(sha, dict(entries))
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
