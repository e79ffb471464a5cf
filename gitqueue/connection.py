"""A queue's connection: where it lives, opening and creating it, and the protocol its writes use.

Owns :class:`Connection`, the base of :class:`gitqueue.queue.Queue`: the URL (never shown with a
secret), the branch (told, or where the remote's HEAD points), the local cache and its task
cache, this worker's name and clocks, ``open`` and ``init`` (making a repository on this machine
and its ``.gitqueue`` file), closing, and the :class:`gitqueue.protocol.Protocol` every write
lands through. It may call the protocol and what lies below it (gitstore, snapshot, branches,
config, hooks), never the rooms of the queue above it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from gitqueue import branches, config
from gitqueue import validate as rules
from gitqueue.errors import GitqueueError, RemoteUnavailable
from gitqueue.git import Identity, RemoteRefs, init_bare, is_local_path, local_git_dir, remote_refs, set_local_head
from gitqueue.gitstore import GitStore
from gitqueue.protocol import Change, Protocol, wait_for_remote
from gitqueue.snapshot import Snapshot, TaskCache
from gitqueue.task import State
from gitqueue.urls import CREDENTIALS_ADVICE, has_secret, redact


def default_worker() -> str:
    """``host/pid``; under Slurm the job's own name for itself, ``slurm-<array job>_<task>``
    (or ``slurm-<job>``), so that status and the queue's history say which job ran what."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    return f"{socket.gethostname()}/{os.getpid()}"


class RemoteAsk:
    """One ``git ls-remote`` of a remote (see :func:`gitqueue.git.remote_refs`) in a thread of its
    own, while the caller goes on; :meth:`result` waits for it."""

    def __init__(self, url: str, *, root: Path | None) -> None:
        self.refs: RemoteRefs | None = None
        self._thread = threading.Thread(target=self._ask, args=(url, root), name="gitqueue-ls-remote", daemon=True)
        self._thread.start()

    def _ask(self, url: str, root: Path | None) -> None:
        with contextlib.suppress(GitqueueError, OSError):  # whoever wants the answer asks again, with retries
            self.refs = remote_refs(url, root=root)

    def result(self) -> RemoteRefs | None:
        """The remote's HEAD and branches, or None if asking failed."""
        self._thread.join()
        return self.refs


class Connection:
    """One queue's repository and branch, attached through a local cache (see :class:`gitqueue.queue.Queue`)."""

    def __init__(
        self,
        url: str,
        *,
        worker: str | None = None,
        branch: str | None = None,
        cache: Path | None = None,
        patience: float | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        max_skew: float = 30.0,
        remote: RemoteRefs | None = None,
        share_first_fetch: bool = False,
    ) -> None:
        self.url = redact(url)  # for people: never with a secret the URL holds
        self._git_url = url
        self.worker = worker or default_worker()
        patience = config.patience() if patience is None else patience
        self.patience = patience
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self._remote = remote
        self._cache_root = cache  # where caches (and a kept-open ssh connection) live; None: the default
        self._asking: RemoteAsk | None = None
        if share_first_fetch and branch and remote is None:  # a worker warns about the remote's HEAD first thing:
            self._asking = RemoteAsk(url, root=cache)  # ask while the cache opens and fetches, not after
        # No branch given: the queue is where the remote's HEAD points (git clone's default).
        self.branch = branch or self.remote_refs().head or config.DEFAULT_BRANCH
        self.store = GitStore(url, branch=self.branch, cache=cache, patience=patience)
        if share_first_fetch:  # a worker: one fetch for every read of its start (see GitStore.share_first_fetch)
            self.store.share_first_fetch(clock=monotonic)
        self.cache = TaskCache(self.store)
        self.max_skew = max_skew
        self.notes: list[str] = []  # what init did that people should know
        self.checks = rules.WorkerChecks()  # broken files a worker skips, reported once each
        # Long operations (a 100,000-task submit, validate) report (what, done, total or None) here.
        self.on_progress: Callable[[str, int, int | None], None] | None = None
        self.protocol = Protocol(
            self.store,
            self.cache,
            url=self.url,
            worker=self.worker,
            patience=patience,
            clock=clock,
            sleep=sleep,
            monotonic=monotonic,
            progress=self._progress,
        )

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> Self:
        """Attach to an initialised queue (``url``, else ``GITQUEUE_QUEUE``, else ``.gitqueue``).

        The branch is ``branch=``, else ``GITQUEUE_BRANCH`` or the ``.gitqueue`` file's, else
        the one the remote's HEAD names.
        """
        ref = config.resolve_queue(url)
        told = options.get("branch") or ref.branch
        queue = cls(ref.url, **{**options, "branch": told})
        try:
            ready = queue.snapshot().initialised
            if not ready and told is None:
                queue = queue._older_default(options)
                ready = queue.branch == config.DEFAULT_BRANCH and queue.snapshot().initialised
            if not ready:
                raise branches.not_a_queue(queue.url, queue.branch, queue.remote_refs())
        except BaseException:
            queue.close()
            raise
        return queue

    def _older_default(self, options: dict[str, Any]) -> Self:
        """A queue made before queues followed the remote's HEAD: on ``main`` whatever HEAD says.
        Returns that queue (and closes this one), or this one if ``main`` holds none."""
        refs = self.remote_refs()
        if self.branch == config.DEFAULT_BRANCH or config.DEFAULT_BRANCH not in refs.branches:
            return self
        older = type(self)(self._git_url, **{**options, "branch": config.DEFAULT_BRANCH, "remote": refs})
        try:
            found = older.snapshot().initialised
        except BaseException:
            older.close()
            raise
        if not found:
            older.close()
            return self
        self.close()
        return older

    @classmethod
    def init(
        cls,
        url: str | None = None,
        *,
        folder: Path | None = None,
        settings: config.Settings | None = None,
        branch: str | None = None,
        hooks: bool = True,
        **options: Any,
    ) -> Self:
        """Create or attach a queue. With no ``url``, an embedded bare repository in ``folder``.

        The queue goes on ``branch``, else on the branch the remote's HEAD names; a
        repository on this machine whose HEAD names no existing branch gets its HEAD
        pointed at the queue's. A repository that holds other work is refused unless
        ``branch`` names where the queue goes. A repository ``init`` creates gets the
        server hook unless ``hooks`` is off. The folder gets a ``.gitqueue`` file naming
        the queue (never a password its URL holds), so later commands find it.
        Attaching to an initialised queue changes nothing in it. ``notes`` on the
        returned queue say what ``init`` did that people should know.
        """
        folder = folder or Path.cwd()
        target = url or str(folder / config.EMBEDDED_REPO)
        notes: list[str] = []
        created = _create_local(target, branch=branch or config.DEFAULT_BRANCH)
        if is_local_path(target):
            target = str(Path(target).expanduser().resolve())
        refs = remote_refs(target)
        chosen = branches.init_branch(refs, branch)
        if created is not None and hooks:
            from gitqueue import hooks as server_hooks

            for path in server_hooks.install(server=created.resolve(), branch=chosen):
                notes.append(f"installed {path}: it refuses pushes that would break the queue (--no-hooks: none)")
        queue = cls(target, branch=chosen, remote=refs, **options)
        try:
            if not queue.snapshot().initialised and refs.branches and branch is None:
                raise branches.not_a_queue(queue.url, chosen, refs, initialising=True)
            queue._initialise(settings or config.Settings())
            # A local HEAD that shows nothing (it names no existing branch) now shows the queue.
            if local_git_dir(target) is not None and refs.head != chosen and (refs.head is None or refs.head_is_unborn):
                set_local_head(target, chosen)
                notes.append(f"pointed {queue.url}'s HEAD at {chosen}, so that `git clone` shows the queue")
                queue._remote = RemoteRefs(chosen, refs.branches)
        except BaseException:
            queue.close()
            raise
        folder.mkdir(parents=True, exist_ok=True)
        notes += _remember(folder, target if url else config.EMBEDDED_REPO, chosen)
        queue.notes = notes
        return queue

    def _initialise(self, settings: config.Settings) -> None:
        def build(snap: Snapshot) -> Change | None:
            if snap.initialised:
                return None
            files: dict[str, bytes | None] = {config.SETTINGS_FILE: settings.render()}
            for state in State:
                files[f"{state.value}/.gitkeep"] = b""
            return Change(subject="initialise gitqueue queue", files=files, trailers={"Gitqueue-Action": "init"})

        self._transact(build)

    def close(self) -> None:
        self.cache.close()
        self.store.close()

    def remote_refs(self) -> RemoteRefs:
        """The remote's HEAD and branches, asked once (retrying while it is unreachable)."""
        if self._remote is None and self._asking is not None:
            self._remote, self._asking = self._asking.result(), None  # None if it failed: asked again below
        deadline, delay = self.clock() + self.patience, 0.1
        while self._remote is None:
            try:
                self._remote = remote_refs(self._git_url, root=self._cache_root)
            except RemoteUnavailable as exc:
                delay = wait_for_remote(
                    exc, deadline, delay, clock=self.clock, sleep=self.sleep, patience=self.patience
                )
        return self._remote

    def head_warning(self) -> str | None:
        """Why people would miss the queue: the remote's HEAD names another branch. None if it does not."""
        return branches.head_warning(self.url, self.branch, self.remote_refs())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self, *, leases: bool = False) -> Snapshot:
        """Fetch, then view the queue at the remote's tip (retrying while it is unreachable,
        rebuilding a damaged cache)."""
        return self.protocol.snapshot(leases=leases)

    def _transact(
        self, build: Callable[[Snapshot], Change | None], *, leases: bool = False, patient: bool = True
    ) -> Any:
        """Land the change ``build`` makes of the tip (see :meth:`Protocol.transact`)."""
        return self.protocol.transact(build, leases=leases, patient=patient)

    def _backoff(self, lost: int) -> float:
        """A random pause after ``lost`` races lost in a row (see :meth:`Protocol.backoff`)."""
        return self.protocol.backoff(lost)

    def _commit(self, snap: Snapshot, change: Change) -> str:
        return self.protocol.commit(snap, change)

    def _progress(self, what: str, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(what, done, total)

    @property
    def identity(self) -> Identity:
        return self.protocol.identity

    @property
    def backed_off(self) -> float:
        """Seconds slept after lost races."""
        return self.protocol.backed_off

    @property
    def runs_folder(self) -> Path:
        """Where this machine's workers note their commands and claims (see ``leftovers``)."""
        return self.store.path.parent / "runs"

    @property
    def here(self) -> str:
        """How this queue is named in those notes: its remote and branch."""
        return f"{self.store.url} {self.store.branch}"


def _create_local(target: str, *, branch: str) -> Path | None:
    """Make the bare repository a local ``target`` names if nothing is there; returns it if made."""
    if not (is_local_path(target) or target.startswith("file://")):
        return None
    local = Path(target.removeprefix("file://")).expanduser()
    if local.exists() and not (local.is_dir() and not any(local.iterdir())):
        return None
    init_bare(local, branch=branch)
    return local


def _remember(folder: Path, url: str, branch: str) -> list[str]:
    """Write ``folder/.gitqueue``; returns what to tell people about it."""
    notes = []
    old = folder / config.CONFIG_FILE
    try:
        before = config.read_queue_ref(old) if old.is_file() else None
    except GitqueueError:  # unreadable: it is replaced, and named nothing one could reach
        before = None
    path = config.write_config(folder, url, branch=branch)
    now = config.read_queue_ref(path)
    if before is not None and (before.url, before.branch or now.branch) != (now.url, now.branch):
        where = before.url + (f" (branch {before.branch})" if before.branch else "")
        notes.append(
            f"{path} named another queue, {where}; it now names this one. That queue is unchanged: "
            f"`--queue {before.url}` still reaches it"
        )
    if has_secret(url):
        notes.append(
            f"{path} names {redact(url)}, without the password or token in the URL you gave. {CREDENTIALS_ADVICE}"
        )
    return notes
