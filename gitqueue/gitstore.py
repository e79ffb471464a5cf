"""The transport: one remote's queue, reached through its local cache (:class:`GitStore`).

A push is a compare-and-swap: the new commit's parent is the tip we fetched, and a plain
(never forced) push only lands if the remote branch is still at that tip. Every way git
reports a lost race counts as one; an outcome we could not observe (timeout, dropped
connection) is decided by fetching and looking for our commit. Lease refs (one per run,
outside the queue branch) carry the runs' heartbeats; request refs (one per worker asking for
work, :class:`RequestRefs`) carry requests that the next push to land serves.

Nothing outside the git rooms spawns git. The rooms, from the bottom: :mod:`gitqueue.git`
(running git, reading its failures), :mod:`gitqueue.objects` (reading and writing objects
in-process, so building a commit costs no spawn), :mod:`gitqueue.commits` (history),
:mod:`gitqueue.cache` (the cache's folder, turns and healing), then this module, which may
call all of them and is called by the queue. :class:`GitStore` inherits the cache (and so
the objects and commits) rather than holding it: every caller above reads, writes and
pushes through one ``store`` with one set of names (``store.tree``, ``store.push``), and a
damaged object met by any read heals the very cache the transport fetches into.

The names the queue imports from the rooms below are re-exported here, as the face of the
git layer for the rooms above.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from gitqueue.cache import Cache, folder_id
from gitqueue.errors import CacheDamaged, GitqueueError, PushRefused, RemoteUnavailable
from gitqueue.git import (
    AUTH_SIGNS,
    LOST_RACE_SIGNS,
    Identity,
    damage_in,
    is_local_path,
    remote_error,
    remote_says,
    run_git,
    ssh_env,
    tell_retrying,
)
from gitqueue.urls import scrub

FETCH_HEALS = 3  # rebuilds of a cache that goes away (is deleted) again and again within one fetch
MAINTAIN_EVERY = 2000  # pushes between looks at the cache's loose objects
ASKED_LATELY = 30.0  # seconds since a fetch last saw requests for work, during which every claim fetches first
# Where runs keep their leases alive: one ref per run token, outside the queue branch.
LEASE_REFS = "refs/gitqueue/leases"
# Where workers that need work ask for it: one ref per worker (see gitqueue.requests).
REQUEST_REFS = "refs/gitqueue/requests"
# Seconds a shared first fetch serves the fetches after it (see GitStore.share_first_fetch): as long
# as the protocol builds on a push of its own without fetching (protocol.OPTIMISTIC_WINDOW).
SHARED_FOR = 2.0


@dataclass(frozen=True)
class SharedFetch:
    """A fetch's view (the tip it found, and when it was asked for) that the fetches after it get."""

    tip: str | None
    at: float


class PushOutcome(Enum):
    LANDED = "landed"
    LOST_RACE = "lost race"
    UNKNOWN = "unknown"  # not seen (timeout, dropped connection): learn it with settle()


def _is_repository(folder: Path) -> bool:
    return (folder / "HEAD").is_file() or (folder / ".git").exists()


class SideRefs(Cache):
    """Refs of one remote beside the queue branch (``refs/gitqueue/<kind>/<name>``), each
    written by one process and deleted by whoever ends it: their mirror in the cache, one
    fetched on its own, one deleted (a deletion, never a forced push)."""

    git_env: dict[str, str]

    def _mirrored(self, kind: str) -> dict[str, str]:
        """The refs of ``kind`` the last fetch of them brought: name -> commit."""
        folder = self.path / self.namespace / kind
        try:
            return {ref.name: ref.read_text().strip() for ref in folder.iterdir() if ref.is_file()}
        except FileNotFoundError:
            return {}

    def _fetch_one(self, prefix: str, kind: str, name: str) -> str | None:
        """The remote's ref ``prefix/name``, fetched into the mirror of ``kind``; None if it has none."""
        ref = f"{self.namespace}/{kind}/{name}"
        proc = run_git(
            ["fetch", "-q", "--no-tags", "--no-write-fetch-head", self.url, f"+{prefix}/{name}:{ref}"],
            cwd=self.path,
            env=self.git_env,
        )
        if proc.returncode:
            return None
        with contextlib.suppress(OSError):
            return (self.path / ref).read_text().strip() or None
        return None

    def _drop(self, prefix: str, name: str) -> None:
        """Delete the remote's ref ``prefix/name``; gone already is fine."""
        with contextlib.suppress(subprocess.TimeoutExpired, CacheDamaged):
            run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f":{prefix}/{name}"],
                cwd=self.path,
                env=self.git_env,
            )


class RequestRefs(SideRefs):
    """The request refs of one remote (see :mod:`gitqueue.requests`): mirrored by a fetch with
    ``requests``, pushed by the worker that asks, deleted by whoever serves them (atomically,
    with the claims) or by the worker that takes its request back."""

    asked_at = float("-inf")  # when (monotonic) a fetch last brought request refs
    requests_fetched_at = float("-inf")  # when (monotonic) the last fetch mirroring the request refs began

    def requests(self) -> dict[str, str]:
        """Request refs seen by the last ``fetch(requests=True)``: ref name -> request commit."""
        return self._mirrored("requests")

    def request_gone(self, name: str, *, since: float) -> bool:
        """Whether a fetch after ``since`` (monotonic: when we last pushed request ref ``name``)
        found the ref gone: whoever served it deleted it in the push that served it, which that
        fetch's tip holds."""
        return self.requests_fetched_at > since and name not in self.requests()

    def asked_lately(self, within: float = ASKED_LATELY) -> bool:
        """Whether a fetch in the last ``within`` seconds brought request refs: workers ask for
        work on this queue, and only a fetch shows new requests."""
        return time.monotonic() - self.asked_at < within

    def _forget_requests(self, refspecs: list[str]) -> None:
        """Request refs a landed push deleted are gone from our mirror too (an optimistic try,
        which does not fetch, must not serve them again)."""
        for spec in refspecs:
            if spec.startswith(f":{REQUEST_REFS}/"):
                name = spec.removeprefix(f":{REQUEST_REFS}/")
                with contextlib.suppress(OSError):
                    (self.path / self.namespace / "requests" / name).unlink()

    def _request_leases(self, refspecs: list[str]) -> list[str]:
        """Options that make each request deletion among ``refspecs`` a compare-and-swap: the
        ref is deleted only if it still holds the request commit our last fetch saw. Git deletes
        a ref that is gone without a word, so without this a push built on a request its worker
        had taken back (it stopped) would still land the claims made for it, stranded until their
        lease runs out; and a request asked anew meanwhile would be deleted unserved. A lease that
        fails rejects the whole atomic push: a lost race, tried again on a fresh fetch. (No ref
        is ever forced: a deletion only, of a ref outside the branch, and only if unchanged.)"""
        seen = self.requests()
        names = [spec.removeprefix(f":{REQUEST_REFS}/") for spec in refspecs if spec.startswith(f":{REQUEST_REFS}/")]
        return [f"--force-with-lease={REQUEST_REFS}/{name}:{seen[name]}" for name in names if name in seen]

    def push_request(self, name: str, *, message: str, author: Identity, parent: str | None) -> str | None:
        """Push a request commit (empty tree, on ``parent``: our last request, if any) to the
        request ref ``name``; return it, or None if it could not be pushed.

        Only its worker writes that ref, and the workers that serve it only delete it, so the
        push is a fast-forward or a creation (never a forced push). A ref left by an earlier
        process of the same worker name is fetched and built on, once. Asking is best effort: a
        damaged cache (another worker of this machine may be rebuilding it) pushes nothing, and
        the next claim's try heals it.
        """
        try:
            return self._push_request(name, message=message, author=author, parent=parent)
        except (subprocess.TimeoutExpired, CacheDamaged):
            return None

    def _push_request(self, name: str, *, message: str, author: Identity, parent: str | None) -> str | None:
        for _ in range(2):
            if parent is not None and not self.has(parent):
                parent = None
            commit = self.write_commit(tree=self.write_tree({}), parent=parent, message=message, author=author)
            proc = run_git(
                ["push", "--porcelain", "--no-verify", "-q", self.url, f"{commit}:{REQUEST_REFS}/{name}"],
                cwd=self.path,
                env=self.git_env,
            )
            if proc.returncode == 0:
                return commit
            parent = self._fetch_one(REQUEST_REFS, "requests", name)
            if parent is None:
                return None
        return None

    def drop_request(self, name: str) -> None:
        """Delete our request ref (a deletion, not a forced push); gone already is fine."""
        self._drop(REQUEST_REFS, name)


class LeaseRefs(SideRefs):
    """The lease refs of one remote: one per run (``refs/gitqueue/leases/<token>``), renewed by
    heartbeat commits, mirrored by a fetch with ``leases``, deleted when the run's end lands."""

    heartbeat_pushes: int

    def leases(self) -> dict[str, str]:
        """Lease refs seen by the last ``fetch(leases=True)``: run token -> heartbeat commit."""
        return self._mirrored("leases")

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
            self.heartbeat_pushes += 1
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
            remote = self._fetch_one(LEASE_REFS, "leases", token)
            if remote is not None and self.has(remote):
                return self.heartbeat(token, parent=remote, message=message, author=author)
        return None

    def heartbeats(
        self, beats: dict[str, tuple[str | None, str]], *, author: Identity, when: float | None = None
    ) -> dict[str, str]:
        """Many runs' heartbeats in ONE push (token -> (last heartbeat, message)): those that landed.
        One refspec per run, not atomic, so a refused ref does not stop the others (``--porcelain``,
        never ``-q``, tells each ref's fate); a lost parent is retried alone (see :meth:`heartbeat`)."""
        if not beats:
            return {}
        try:
            empty = self.write_tree({})
            made = {
                t: self.write_commit(tree=empty, parent=p, message=m, author=author, when=when)
                for t, (p, m) in beats.items()
            }
            self.heartbeat_pushes += 1
            refspecs = [f"{commit}:{LEASE_REFS}/{token}" for token, commit in made.items()]
            proc = run_git(["push", "--porcelain", "--no-verify", self.url, *refspecs], cwd=self.path, env=self.git_env)
        except (subprocess.TimeoutExpired, CacheDamaged):  # the next read rebuilds a damaged cache
            return {}
        landed = pushed_refs(proc.stdout.decode(errors="replace"), prefix=f"{LEASE_REFS}/")
        out = {token: commit for token, commit in made.items() if token in landed}
        for token in made.keys() - landed:
            parent, message = beats[token]
            if parent is not None and not self.has(parent):
                again = self.heartbeat(token, parent=parent, message=message, author=author, when=when)
                out.update({token: again} if again else {})
        return out

    def drop_lease(self, token: str) -> None:
        """Delete a run's lease ref (a deletion, not a forced push); gone already is fine."""
        self._drop(LEASE_REFS, token)


class GitStore(LeaseRefs, RequestRefs):
    """One remote's queue branch: fetched into and pushed from a cache shared by the
    processes of one machine (see :class:`gitqueue.cache.Cache`)."""

    def __init__(self, url: str, *, branch: str = "main", cache: Path | None = None, patience: float = 120.0) -> None:
        super().__init__(url, branch=branch, cache=cache)
        self.patience = patience  # how long an unreachable remote is retried to learn a push's outcome
        self.git_env = ssh_env(self.url, self.path.parent)  # for the commands that reach the remote
        self.pushes = 0
        self.rejected_pushes = 0
        self.fetches = 0
        self.heartbeat_pushes = 0  # pushes to lease refs (one per heartbeat push, however many refs it holds)
        self.last_rejection = ""  # what the remote said when it last refused a push
        self._share_next = False  # the next fetch brings every ref and serves those after it
        self._shared: SharedFetch | None = None
        self._share_clock: Callable[[], float] = time.monotonic

    def close(self) -> None:
        """Close the cache (see :meth:`Cache.close`), and pack it if this instance pushed."""
        super().close()
        if self.pushes:
            with contextlib.suppress(GitqueueError):  # a cache gone meanwhile needs no packing
                self.maintain()

    def _refill(self) -> None:
        self._fetch(True)

    def heal(self, why: str, *, fetch: bool = True) -> None:
        """Rebuild the damaged cache (see :meth:`Cache.heal`); a shared first fetch is spent with it."""
        self._shared = None
        super().heal(why, fetch=fetch)

    # ------------------------------------------------------------ remote

    def share_first_fetch(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        """Let the next fetch bring the lease and request refs too, and give its view to the
        fetches after it, up to and including the first that asks for request refs (a worker's
        first claim try), for at most SHARED_FOR seconds (on ``clock``) and until this store
        pushes or heals.

        A worker's start reads the queue several times in a row before its first push (opening
        it, looking for dead runs, learning the fleet, claiming): over a forge far away each read
        is a round trip, and a fleet launched at once makes them all at once. One fetch answers
        them all; a view that old is what the protocol already builds on after a push of its
        own, and the claim's push is still a compare-and-swap on the tip it saw.
        """
        self._share_next, self._share_clock = True, clock

    def _from_shared(self, *, requests: bool) -> SharedFetch | None:
        """The shared first fetch, if it still serves this fetch (spent by the first with ``requests``)."""
        shared = self._shared
        if shared is None or self._share_clock() - shared.at >= SHARED_FOR:
            self._shared = None
            return None
        if requests:
            self._shared = None
        return shared

    def fetch(self, *, leases: bool = False, requests: bool = False) -> str | None:
        """Bring the remote branch into the cache; return its tip, or None if it has none.

        With ``leases``, also mirror the remote's lease refs (see :meth:`leases`); with
        ``requests``, its request refs (see :meth:`requests`). A shared first fetch (see
        :meth:`share_first_fetch`) may answer instead, without reaching the remote.
        """
        shared = self._from_shared(requests=requests)
        if shared is not None:
            return shared.tip
        sharing = self._share_next  # until one lands: a remote unreachable at first is retried alike
        asked = self._share_clock() if sharing else 0.0
        self.fetches += 1
        started = time.monotonic()
        try:
            rebuilt = None  # the folder the last rebuild made
            for _ in range(FETCH_HEALS):
                try:
                    tip = self._fetch(leases or sharing, requests or sharing)
                    if sharing:
                        self._share_next, self._shared = False, SharedFetch(tip, asked)
                    return tip
                except CacheDamaged as exc:
                    if rebuilt is not None and folder_id(self.path) == rebuilt:
                        # The cache we just rebuilt is still there, and damaged again: not our
                        # cache's fault, then, but the remote's own repository?
                        raise RemoteUnavailable(
                            f"cannot fetch from {self.display}, even into a rebuilt cache: "
                            f"is the remote's repository damaged? {exc}"
                        ) from None
                    self.heal(str(exc), fetch=False)  # first damage, or the folder went again
                    rebuilt = folder_id(self.path)
            raise CacheDamaged(f"the local cache {self.path} keeps going away while it is rebuilt")
        finally:
            self.seconds["fetch"] += time.monotonic() - started

    def _fetch(self, leases: bool, requests: bool = False) -> str | None:
        started = time.monotonic()
        refspecs = [f"+refs/heads/{self.branch}:{self.ref}"]
        if leases:
            refspecs.append(f"+{LEASE_REFS}/*:{self.namespace}/leases/*")
        if requests:
            refspecs.append(f"+{REQUEST_REFS}/*:{self.namespace}/requests/*")
        proc = run_git(
            [
                "-c",
                "protocol.version=0",
                "fetch",
                "-q",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-auto-maintenance",
                *(["--prune"] if leases or requests else []),
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
        if requests:
            self.requests_fetched_at = started  # it saw every request pushed before it started
            if self.requests():
                self.asked_at = time.monotonic()
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

    def push(self, new: str, old: str | None, *, also: list[str] | None = None) -> PushOutcome:
        """Compare-and-swap the remote branch from ``old`` to ``new`` (a child of ``old``).

        ``also`` are refspecs pushed atomically with it (e.g. deleting a finished run's
        lease ref). UNKNOWN if git did not say (timeout, dropped connection): then the
        caller learns the outcome with :meth:`settle`.
        """
        self.pushes += 1
        self._shared = None  # what follows a push of ours sees what it did
        if self.pushes % MAINTAIN_EVERY == 0:
            self.maintain()
        extra = ["--atomic", *self._request_leases(also), *also] if also else []
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
            self._forget_requests(also or [])
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


def pushed_refs(porcelain: str, *, prefix: str) -> set[str]:
    """The names (below ``prefix``) of the refs a ``git push --porcelain`` updated or found
    up to date; a refused ref (flag ``!``) is not among them."""
    names = set()
    for line in porcelain.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0] or parts[0][0] not in " +*=":
            continue
        target = parts[1].rpartition(":")[2]
        if target.startswith(prefix):
            names.add(target[len(prefix) :])
    return names
