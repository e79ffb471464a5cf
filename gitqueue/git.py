"""The process-level git runner, below every other git room: how gitqueue spawns git and
how it reads git's failures.

Owns ``run_git`` (never prompting, output captured, in a session of its own), the
``Identity`` a commit is signed with, the signs by which git's words are classified (a lost
race, refused credentials, no repository, a damaged local repository) and told
(``git_says``, ``remote_error``, ``remote_says``, ``tell_retrying``), the ssh connection
shared by one remote's commands (its socket beside the caches, in ``cache_root``), URL and
path helpers, and the looks at a remote's refs that need no cache (``remote_refs``,
``set_local_head``, ``init_bare``).

May call only ``gitqueue.errors`` and ``gitqueue.urls``: the object store
(:mod:`gitqueue.objects`), the cache (:mod:`gitqueue.cache`) and the transport
(:mod:`gitqueue.gitstore`) are built on it, never the other way round.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gitqueue.errors import (
    AuthenticationFailed,
    CacheDamaged,
    GitqueueError,
    QueueNotFound,
    RemoteUnavailable,
)
from gitqueue.urls import redact, scrub

GIT_TIMEOUT = 60.0
SSH_PERSIST = 60  # seconds an idle shared ssh connection stays open
SOCKET_PATH_MAX = 100  # a Unix socket's path must fit in 108 bytes; ssh adds a suffix while it sets up
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
    "unresolved deltas",  # a thin pack's bases are damaged in the cache (a truncated object)
)
GIT_ENV = {  # every git gitqueue spawns runs with these
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "true",
    "LC_ALL": "C",
}


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
    env = {**os.environ, **GIT_ENV, **(env or {})}
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
