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
import logging
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import IO

from gitqueue.errors import (
    AuthenticationFailed,
    CacheDamaged,
    GitqueueError,
    PushRefused,
    QueueNotFound,
    RemoteUnavailable,
)
from gitqueue.urls import redact, scrub

GIT_TIMEOUT = 60.0
FETCH_HEALS = 3  # rebuilds of a cache that goes away (is deleted) again and again within one fetch
MAINTAIN_EVERY = 2000  # pushes between looks at the cache's loose objects
LOOSE_PER_FOLDER = 27  # git gc --auto packs when objects/17 holds more than this
MAINTAIN_PAUSE = 3600.0  # seconds between two gc runs in one cache
TREE_CACHE_ENTRIES = 30_000  # tree entries kept in memory; claims keep sorted candidates, not trees
# Where runs keep their leases alive: one ref per run token, outside the queue branch.
LEASE_REFS = "refs/gitqueue/leases"
SEEN_FILE = "gitqueue-seen"  # in the cache: the branch's tip as last fetched, for shell completion
LANDED_FILE = "gitqueue-landed"  # in the cache: the last commit pushed from it that landed, and when
SSH_PERSIST = 60  # seconds an idle shared ssh connection stays open
SOCKET_PATH_MAX = 100  # a Unix socket's path must fit in 108 bytes; ssh adds a suffix while it sets up
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
# How git (and ssh, and an HTTP server) says that it knows the remote but will not let us in:
# retrying cannot help, the person must fix a key, a credential or a known_hosts entry.
AUTH_SIGNS = (
    "Authentication failed",
    "Permission denied",
    "Host key verification failed",
    "REMOTE HOST IDENTIFICATION HAS CHANGED",
    "could not read Username",
    "could not read Password",
    "The requested URL returned error: 401",
    "The requested URL returned error: 403",
    "HTTP Basic: Access denied",
)
# How git says that there is no repository at that address.
NOT_FOUND_SIGNS = (
    "does not appear to be a git repository",
    "The requested URL returned error: 404",
    "not found",
)
# Lines git adds to every failure of a remote, which say nothing about this one.
BOILERPLATE = (
    "Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)
# How git says that an object of the cache it runs in cannot be read (a truncated or deleted
# file, a broken pack): lines from the remote's side start with "remote:" and are not ours.
DAMAGE_SIGNS = (
    "is corrupt",
    "corrupt loose object",
    "inflate:",
    "unable to unpack",
    "too long, exceeds",
    "cannot read existing object",
    "bad object",
    "packfile",
    "bad packed object",
    "unable to read tree",
    "unable to read sha1",
    "did not send all necessary objects",
    "not a git repository",
    "object file",
    "missing blob",
    "missing tree",
    "missing commit",
    "invalid object",
    "Unable to read current working directory",  # the cache folder went away while git ran in it
    "invalid index-pack output",  # our index-pack died writing into it
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


def canonical_url(url: str) -> str:
    """The URL as a cache is named by it: a local path made absolute."""
    return str(Path(url).expanduser().resolve()) if is_local_path(url) else url


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


def run_git(
    args: list[str],
    *,
    cwd: Path | None = None,
    timeout: float = GIT_TIMEOUT,
    input: bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run one git command, never prompting, output captured (``env``: more variables).

    git runs in a session of its own, so a Ctrl-C meant for a worker cannot cut a push
    in half; the worker decides when to stop.
    """
    env = {**os.environ, **_ENV, **(env or {})}
    try:
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
    except (FileNotFoundError, NotADirectoryError):
        if cwd is not None and not os.path.isdir(cwd):  # the folder git was to run in is gone
            raise CacheDamaged(f"the folder {cwd} is gone") from None
        raise


def damage_in(output: str) -> str | None:
    """The line of git's output that says an object of our own repository is damaged, if any."""
    for line in output.splitlines():
        if not line.startswith("remote:") and any(sign in line for sign in DAMAGE_SIGNS):
            return line.strip()
    return None


def _folder_id(path: Path) -> tuple[int, int] | None:
    """Which folder is at ``path`` now (a rebuilt cache is another folder at the same path)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _warn(message: str) -> None:
    logging.getLogger("gitqueue").warning("%s", message)


def init_bare(path: Path, *, branch: str = "main") -> None:
    """Create a bare repository at ``path`` (used for the embedded default queue)."""
    proc = run_git(["init", "--bare", "-q", "-b", branch, str(path)])
    if proc.returncode:
        raise GitqueueError(f"cannot create a repository at {path}: {proc.stderr.decode().strip()}")
    # Git does not notice a bare repository inside a work tree; keep it out of `git add .`.
    (path / ".gitignore").write_text("*\n")


def is_local_path(url: str) -> bool:
    return "://" not in url and not _looks_like_scp(url)


def is_ssh(url: str) -> bool:
    return url.startswith(("ssh://", "git+ssh://", "ssh+git://")) or ("://" not in url and _looks_like_scp(url))


def ssh_socket(url: str, root: Path) -> Path:
    """Where the ssh connection to ``url`` is kept open: in ``root``, named by the URL."""
    return root / f"ssh-{hashlib.sha1(redact(url).encode()).hexdigest()[:12]}"


def ssh_env(url: str, root: Path) -> dict[str, str]:
    """For an ssh remote, a ``GIT_SSH_COMMAND`` that keeps one connection to it open for a
    short while (``ControlMaster=auto``, the socket beside the caches in ``root``, one per
    remote), so that a worker's fetches and pushes do not pay an ssh handshake each (~0.35 s).
    Nothing if the user chose their own ssh command (``GIT_SSH_COMMAND``, ``GIT_SSH`` or
    ``core.sshCommand``), or if the socket's path would be too long or need quoting."""
    if not is_ssh(url) or os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH"):
        return {}
    root.mkdir(parents=True, exist_ok=True)
    if run_git(["config", "--get", "core.sshCommand"], cwd=root).stdout.strip():
        return {}
    socket_path = str(ssh_socket(url, root))
    if len(socket_path) > SOCKET_PATH_MAX or any(c in socket_path for c in " \t%\"'\\$`"):
        return {}
    options = f"-o ControlMaster=auto -o ControlPersist={SSH_PERSIST} -o ControlPath={socket_path}"
    return {"GIT_SSH_COMMAND": f"ssh {options}"}


def _looks_like_scp(url: str) -> bool:
    head = url.split("/", 1)[0]
    return ":" in head and not (len(head) == 2 and head[1] == ":")


def local_git_dir(url: str) -> Path | None:
    """The git folder of a queue on this machine (a path or ``file://``), else None."""
    if url.startswith("file://"):
        from urllib.parse import unquote

        url = unquote(url.removeprefix("file://"))
    elif not is_local_path(url):
        return None
    path = Path(canonical_url(url))
    return path / ".git" if (path / ".git").exists() else path


@dataclass(frozen=True)
class RemoteRefs:
    """What a remote's refs say about where its queue lives.

    ``head`` is the branch the remote's HEAD names, whether or not that branch exists yet
    (a fresh ``git init --bare`` names ``master`` or ``init.defaultBranch``); None when HEAD
    names no branch or the remote does not say. ``branches`` maps each branch to its tip.
    """

    head: str | None
    branches: dict[str, str]

    @property
    def head_is_unborn(self) -> bool:
        return self.head is not None and self.head not in self.branches


def remote_refs(url: str, *, root: Path | None = None) -> RemoteRefs:
    """The remote's HEAD and branches: one ``git ls-remote``.

    git does not list an unborn HEAD, so for a remote whose HEAD names no branch yet, a
    local one is read directly and any other is asked by an empty ``git clone``, which
    learns it (protocol v2) without fetching any object.
    """
    url = canonical_url(url)
    env = ssh_env(url, root or cache_root())  # the connection the queue's cache then goes on using
    try:
        proc = run_git(["ls-remote", "--symref", url, "HEAD", "refs/heads/*"], env=env)
    except subprocess.TimeoutExpired:  # its message would quote the command, URL and all
        raise RemoteUnavailable(f"cannot fetch from {redact(url)}: no answer in {GIT_TIMEOUT:.0f} s") from None
    if proc.returncode:
        raise remote_error(url, proc.stderr.decode(errors="replace"), doing="fetch from")
    head: str | None = None
    branches: dict[str, str] = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        value, _, ref = line.partition("\t")
        if ref == "HEAD" and value.startswith("ref: refs/heads/"):
            head = value.removeprefix("ref: refs/heads/")
        elif ref.startswith("refs/heads/") and not value.startswith("ref: "):
            branches[ref.removeprefix("refs/heads/")] = value
    if head is None and not any(line.endswith("\tHEAD") for line in proc.stdout.decode().splitlines()):
        head = _unborn_head(url)
    return RemoteRefs(head, branches)


_UNKNOWN_HEAD = "gitqueue-remote-did-not-say"


def _unborn_head(url: str) -> str | None:
    """The branch an unborn HEAD names, or None if it cannot be learnt."""
    git_dir = local_git_dir(url)
    if git_dir is not None:
        proc = run_git(["--git-dir", str(git_dir), "symbolic-ref", "-q", "HEAD"])
        return proc.stdout.decode().strip().removeprefix("refs/heads/") or None if proc.returncode == 0 else None
    with tempfile.TemporaryDirectory(prefix="gitqueue-head-") as tmp:
        clone = Path(tmp) / "head.git"
        options = ["-c", f"init.defaultBranch={_UNKNOWN_HEAD}", "-c", "protocol.version=2"]
        try:
            proc = run_git([*options, "clone", "--bare", "-q", "--single-branch", "--depth=1", url, str(clone)])
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode:
            return None
        head = (clone / "HEAD").read_text().strip().removeprefix("ref: refs/heads/")
    return None if head == _UNKNOWN_HEAD else head


def set_local_head(url: str, branch: str) -> bool:
    """Point the HEAD of a repository on this machine at ``branch``; False if not local."""
    git_dir = local_git_dir(url)
    if git_dir is None:
        return False
    proc = run_git(["--git-dir", str(git_dir), "symbolic-ref", "HEAD", f"refs/heads/{branch}"])
    if proc.returncode:
        why = proc.stderr.decode(errors="replace").strip()
        raise GitqueueError(f"cannot point {git_dir}'s HEAD at {branch}: {why}")
    return True


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

    def __init__(self, url: str, *, branch: str = "main", cache: Path | None = None, patience: float = 120.0) -> None:
        self.url = canonical_url(url)  # what git is given, secrets included (they are never printed)
        self.display = redact(self.url)  # what gitqueue prints and stores
        self.branch = branch
        self.patience = patience  # how long an unreachable remote is retried to learn a push's outcome
        self.path = cache_path(self.url, branch, cache)
        self._ensure_cache()
        self.git_env = ssh_env(self.url, self.path.parent)  # for the commands that reach the remote
        self.namespace = f"refs/gitqueue/{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"
        self.ref = f"{self.namespace}/tip"
        self._objects = str(self.path / "objects")
        self._tmp_names = itertools.count()
        self._tmp_prefix = f".tmp-{os.getpid()}-{random.randrange(16**8):08x}"  # unique across hosts sharing a cache
        self.tell: Callable[[str], None] = _warn  # how a rebuilt cache is reported (a worker: its log)
        self.heals = 0  # times this instance rebuilt a damaged cache
        self._open()
        self._trees: OrderedDict[str, dict[str, tuple[bytes, str]]] = OrderedDict()
        self._tree_entries = 0
        self.pushes = 0
        self.rejected_pushes = 0
        self.fetches = 0
        self._local = threading.local()  # how deep this thread is in turn()
        self.seconds: defaultdict[str, float] = defaultdict(float)  # wall time in fetch, push (stats)
        self.last_rejection = ""  # what the remote said when it last refused a push
        self._seen: str | None = None  # the branch's newest tip we know of: fetched, or pushed by us

    # ------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        import git  # here, not at the top: a server hook reading objects should not pay for GitPython

        self._repo = git.Repo(self.path)
        self._opened = _folder_id(self.path)  # the folder this instance reads (see heal)

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
            if _folder_id(self.path) == self._opened or not (self.path / "HEAD").exists():
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
                self._fetch(True)

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
        if self.pushes:
            with contextlib.suppress(GitqueueError):  # a cache gone meanwhile needs no packing
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
            rebuilt = None  # the folder the last rebuild made
            for _ in range(FETCH_HEALS):
                try:
                    return self._fetch(leases)
                except CacheDamaged as exc:
                    if rebuilt is not None and _folder_id(self.path) == rebuilt:
                        # The cache we just rebuilt is still there, and damaged again: not our
                        # cache's fault, then, but the remote's own repository?
                        raise RemoteUnavailable(
                            f"cannot fetch from {self.display}, even into a rebuilt cache: "
                            f"is the remote's repository damaged? {exc}"
                        ) from None
                    self.heal(str(exc), fetch=False)  # first damage, or the folder went again
                    rebuilt = _folder_id(self.path)
            raise CacheDamaged(f"the local cache {self.path} keeps going away while it is rebuilt")
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
            env=self.git_env,
        )
        if proc.returncode:
            err = proc.stderr.decode(errors="replace").strip()
            self._check_fetch(err)
            if f"couldn't find remote ref refs/heads/{self.branch}" in err:
                return None
            raise remote_error(self.url, proc.stderr.decode(errors="replace"), doing="fetch from")
        self._seen = self._read_ref()
        return self._seen

    def _check_fetch(self, err: str) -> None:
        """A failed fetch that is not the remote's fault: our cache is damaged, or a queue on
        this machine's disks that we have fetched before is gone (a shared disk that dropped
        is a remote gone away, to be retried, not a wrong address)."""
        damage = damage_in(err)
        if damage is not None:
            raise CacheDamaged(f"git says: {damage}")
        folder = self._local_folder()
        if folder is not None and not _is_repository(folder) and self._has_fetched():
            raise RemoteUnavailable(
                f"the queue's repository {folder} is not there any more (a shared disk or mount that dropped?)"
            )

    def _local_folder(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(self.url.removeprefix("file://"))
        return Path(self.url) if is_local_path(self.url) else None

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
                env=self.git_env,
            )
        except subprocess.TimeoutExpired:
            self._note_landing(None)
            return PushOutcome.UNKNOWN
        finally:
            self.seconds["push"] += time.monotonic() - started
        if proc.returncode == 0:
            self._note_landing(new)
            self._seen = new
            return PushOutcome.LANDED
        self._note_landing(None)
        output = scrub((proc.stdout + proc.stderr).decode(errors="replace"), self.url)
        if any(sign in output for sign in AUTH_SIGNS):  # refused before anything landed
            raise remote_error(self.url, proc.stderr.decode(errors="replace"), doing="push to")
        if "hook declined" in output:
            raise PushRefused(remote_says(output) or "the remote's hook refused the push")
        damage = damage_in(output)
        if damage is not None:  # our side could not send the objects: rebuild, then fetch to see what landed
            self.heal(f"git says: {damage}")
            return PushOutcome.UNKNOWN
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
            except RemoteUnavailable as exc:
                if time.monotonic() > deadline:
                    raise
                if delay == 0.05:
                    tell_retrying(exc, self.patience)
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

    def leases(self) -> dict[str, str]:
        """Lease refs seen by the last ``fetch(leases=True)``: run token -> heartbeat commit."""
        folder = self.path / self.namespace / "leases"
        try:
            return {ref.name: ref.read_text().strip() for ref in folder.iterdir() if ref.is_file()}
        except FileNotFoundError:
            return {}

    def heartbeat(
        self, token: str, *, parent: str | None, message: str, author: Identity, when: float | None = None
    ) -> str | None:
        """Push a heartbeat commit (made at ``when``, else now) to the run's own lease ref; None if
        it could not be pushed.

        Heartbeats never touch the queue branch, so its history stays one commit per state
        change. Each heartbeat is a fast-forward of the previous one (never a forced push).
        """
        try:
            commit = self.write_commit(
                tree=self.write_tree({}), parent=parent, message=message, author=author, when=when
            )
            proc = run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f"{commit}:{LEASE_REFS}/{token}"],
                cwd=self.path,
                env=self.git_env,
            )
        except (subprocess.TimeoutExpired, CacheDamaged):  # the next read rebuilds a damaged cache
            return None  # (not here: this may be a second thread, and the cache's reader is not thread-safe)
        if proc.returncode == 0:
            return commit
        if parent is not None and not self.has(parent):  # lost with a rebuilt cache: go on from the remote's
            remote = self._fetch_lease(token)
            if remote is not None and self.has(remote):
                return self.heartbeat(token, parent=remote, message=message, author=author)
        return None

    def has(self, sha: str) -> bool:
        """Whether the cache holds the object ``sha``."""
        return run_git(["cat-file", "-e", sha], cwd=self.path).returncode == 0

    def _fetch_lease(self, token: str) -> str | None:
        """The remote's lease ref of one run, fetched; None if it has none (the run ended)."""
        ref = f"{self.namespace}/leases/{token}"
        proc = run_git(
            ["fetch", "-q", "--no-tags", "--no-write-fetch-head", self.url, f"+{LEASE_REFS}/{token}:{ref}"],
            cwd=self.path,
        )
        if proc.returncode:
            return None
        with contextlib.suppress(OSError):
            return (self.path / ref).read_text().strip() or None
        return None

    def drop_lease(self, token: str) -> None:
        """Delete a run's lease ref (a deletion, not a forced push); gone already is fine."""
        with contextlib.suppress(subprocess.TimeoutExpired, CacheDamaged):
            run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f":{LEASE_REFS}/{token}"],
                cwd=self.path,
                env=self.git_env,
            )

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

    # ------------------------------------------------------------ identity

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


def _abandon(stream: object) -> None:
    """Tell GitPython not to drain a half-read object from a cat-file that has died: its
    stream would try when collected, and print a traceback."""
    inner = getattr(stream, "stream", None)
    if inner is not None and hasattr(inner, "_size"):
        inner._nbr = inner._size


def _sound(sha: str, kind: bytes | str, data: bytes) -> bool:
    """Whether ``data`` is the object ``sha`` names (a truncated object reads back short)."""
    kind = kind.encode() if isinstance(kind, str) else kind
    return hashlib.sha1(kind + b" " + str(len(data)).encode() + b"\0" + data).hexdigest() == sha


def _is_repository(folder: Path) -> bool:
    return (folder / "HEAD").is_file() or (folder / ".git").exists()


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


def tell_retrying(exc: RemoteUnavailable, patience: float) -> None:
    """Say, once per outage, that an unreachable remote is being retried and for how long."""
    import logging

    logging.getLogger("gitqueue").warning(
        "%s; trying again for up to %gs (--patience, GITQUEUE_PATIENCE)", exc, patience
    )


def git_says(stderr: str) -> str:
    """git's reasons from its stderr, without the lines it adds to every failure of a remote:
    ``ssh: connect to host h port 22: Connection refused``, not ``... and the repository exists.``"""
    lines = [line.strip().removeprefix("fatal: ") for line in stderr.splitlines() if line.strip()]
    kept = [line for line in lines if not any(text in line for text in BOILERPLATE)]
    return "; ".join(kept or lines[-1:])[:1000]


def remote_error(url: str, stderr: str, *, doing: str) -> GitqueueError:
    """What a failed fetch or push means, in git's own words: AuthenticationFailed and
    QueueNotFound are final; RemoteUnavailable (refused, timed out, 5xx) may pass by itself."""
    stderr, url = scrub(stderr, url), redact(url)  # never a password in a message
    says = git_says(stderr) or "git gave no reason"
    if any(sign in stderr for sign in AUTH_SIGNS):
        return AuthenticationFailed(
            f"{url} refused us: {says} (gitqueue uses git's own credentials: check your ssh key, "
            "known_hosts or credential helper with plain git, e.g. `git ls-remote URL`)"
        )
    if any(sign in stderr for sign in NOT_FOUND_SIGNS):
        return QueueNotFound(f"{url} is not a git repository: {says}")
    return RemoteUnavailable(f"cannot {doing} {url}: {says}")


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
        self.url = self.display = str(path)
        self.branch = ""
        self.path = Path(path)
        self.namespace = self.ref = ""
        self._trees = OrderedDict()
        self._tree_entries = 0
        self.pushes = self.rejected_pushes = self.fetches = 0
        self.seconds = defaultdict(float)
        self._batch: subprocess.Popen[bytes] | None = None

    def heal(self, why: str, *, fetch: bool = True) -> None:
        """A repository that is no cache cannot be rebuilt: say what is wrong with it."""
        raise GitqueueError(f"cannot read {self.url}: {why}")

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
