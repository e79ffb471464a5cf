"""Processes a dead worker left running, and how the next worker on the machine stops them.

A worker starts each command in a process group of its own. If the worker dies without
stopping it (SIGKILL, the OOM killer), Linux sends the command itself SIGTERM (see
``worker.child._die_with``), but not what the command started: the ``python train.py`` that a
shell script runs, say, keeps its GPU while the task runs again elsewhere.

So while a command runs, its worker keeps a record of it in ``<cache>/runs/<group>.json``.
A worker on the same machine (one sharing the cache) that finds the record of a worker that
is no longer alive stops that process group: SIGTERM first, SIGKILL once the grace period
has passed. It stops a group only if a process in it still carries the run's task id and
worker name in its environment, so a process group id that the system has since handed to
something else is never signalled.

The same folder holds, in ``workers/``, what each worker process holds on a queue: the
runs it claimed and whether each has started. A worker or ``gitqueue reap`` on the same
machine that finds such a record of a process that is gone returns its tasks at once,
instead of waiting out their leases: the started run with its attempt spent, the claims it
never started with none. A record from another machine, or of a process still alive, is
never acted on (its pids mean nothing here, or its owner looks after its runs).

Linux only (it reads ``/proc``); elsewhere nothing is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
ENABLED = (PROC / "self" / "stat").exists()


def record(folder: Path, group: int, task_id: str, worker: str) -> Path | None:
    """Note that this process runs ``task_id`` as process group ``group``; None if not on Linux."""
    owner = _owner(os.getpid())
    if owner is None:
        return None
    path = folder / f"{group}.json"
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        _write(path, {"group": group, "task": task_id, "worker": worker, **owner})
        return path
    return None  # a full disk must not stop the run: it only loses the clean-up


@functools.cache
def _owner(pid: int) -> dict[str, object] | None:
    """What names this process in a record (read once per process: a fork has a new pid)."""
    started = _start_time(pid)
    return None if started is None else {"host": socket.gethostname(), "pid": pid, "pid_started": started}


def forget(path: Path | None) -> None:
    """The command ended (and its group was stopped if need be): drop its record."""
    if path is not None:
        with contextlib.suppress(OSError):  # as in record(): the run matters, its note does not
            path.unlink(missing_ok=True)


def stop_leftovers(folder: Path, grace: float, *, now: float | None = None) -> list[str]:
    """Stop the process groups that dead workers left running; say what was done.

    Never waits: a group that SIGTERM has not ended gets SIGKILL on a later call, once
    ``grace`` seconds have passed since the SIGTERM (``now`` is ``time.time()``).
    """
    if not ENABLED or not folder.is_dir():
        return []
    now = time.time() if now is None else now
    host = socket.gethostname()
    said = []
    for path in sorted(folder.glob("*.json")):
        try:
            run = json.loads(path.read_text())
            group, task_id, worker = int(run["group"]), str(run["task"]), str(run["worker"])
            owner, owner_started = int(run["pid"]), run["pid_started"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not ours to judge
        if run.get("host", host) != host:
            continue  # a cache shared over the network: pids name processes of another machine
        if _start_time(owner) == owner_started:
            continue  # its worker is alive and looks after it
        ours = [pid for pid in members(group) if _carries(pid, task_id, worker)]
        if not ours:
            with contextlib.suppress(OSError):  # another worker may be dropping it too
                path.unlink(missing_ok=True)  # ended, or the group id now belongs to someone else
            continue
        since = run.get("terminated")
        if since is None:
            _signal(group, signal.SIGTERM)
            run["terminated"] = now
            with contextlib.suppress(OSError):  # unnoted, the next look sends SIGTERM again: no harm
                _write(path, run)
            said.append(f"stopping {len(ours)} process(es) of {task_id} that dead worker {worker} left running")
        elif now - float(since) >= grace:
            _signal(group, signal.SIGKILL)
            said.append(f"killing {len(ours)} process(es) of {task_id} that outlived SIGTERM for {grace:g}s")
    return said


class Holdings:
    """This worker's note, in ``<runs>/workers/``, of the runs it holds on one queue.

    ``note`` is called whenever that changes (a claim landed, a run started, reports landed);
    it costs one small file write, no git. Nothing rests on it for correctness: a missing or
    stale note only means a dead worker's tasks wait for their leases, as they would anyway.
    """

    def __init__(self, folder: Path, *, queue: str, worker: str) -> None:
        # Several workers may share a process (threads, tests): a name of its own each.
        self.path = folder / "workers" / f"{os.getpid()}-{secrets.token_hex(4)}.json"
        self.queue, self.worker = queue, worker
        self._noted: dict[str, dict[str, object]] | None = None

    def note(self, runs: Mapping[str, tuple[str, bool]], *, stopping: str | None = None) -> None:
        """Record ``runs`` (run token -> (task id, started)), and which of them is being
        stopped (cancelled, say: its command gets its grace period); none left drops the note."""
        held: dict[str, dict[str, object]] = {
            token: {"task": task_id, "started": started} for token, (task_id, started) in runs.items()
        }
        if stopping in held:
            held[stopping]["stopping"] = True
        if held == self._noted:
            return
        owner = _owner(os.getpid()) if ENABLED else None
        if owner is None:
            return
        self._noted = held
        with contextlib.suppress(OSError):  # as in record(): the run matters, its note does not
            if not held:
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _write(self.path, {"queue": self.queue, "worker": self.worker, "runs": held, **owner})


@dataclass(frozen=True)
class NotedRun:
    """A run that a worker process of this machine noted it holds."""

    token: str
    task_id: str
    worker: str
    started: bool
    alive: bool  # its worker process still runs
    note: Path
    stopping: bool = False  # its task was taken away (cancelled, say): its command is being stopped


def noted_runs(folder: Path, *, queue: str) -> dict[str, NotedRun]:
    """The runs on ``queue`` that worker processes of this machine noted they hold, by token."""
    if not ENABLED or not (folder / "workers").is_dir():
        return {}
    host = socket.gethostname()
    found: dict[str, NotedRun] = {}
    for path in sorted((folder / "workers").glob("*.json")):
        try:
            note = json.loads(path.read_text())
            if note["queue"] != queue or note["host"] != host:
                continue  # another queue, or another machine's pids
            alive = _start_time(int(note["pid"])) == note["pid_started"]
            runs = {
                str(t): (str(r["task"]), bool(r["started"]), bool(r.get("stopping"))) for t, r in note["runs"].items()
            }
            worker = str(note["worker"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # being written, or not ours to judge
        for token, (task_id, started, stopping) in runs.items():
            found[token] = NotedRun(token, task_id, worker, started, alive, path, stopping)
    return found


def dead_runs(folder: Path, *, queue: str) -> dict[str, NotedRun]:
    """The runs on ``queue`` that workers of this machine held when they died, by token."""
    return {token: run for token, run in noted_runs(folder, queue=queue).items() if not run.alive}


def forget_dead(runs: Mapping[str, NotedRun], settled: set[str]) -> None:
    """Drop the notes of dead workers all of whose runs are ``settled`` (no longer held)."""
    notes: dict[Path, set[str]] = {}
    for run in runs.values():
        notes.setdefault(run.note, set()).add(run.token)
    for path, tokens in notes.items():
        if tokens <= settled:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


def _write(path: Path, data: dict[str, object]) -> None:
    partial = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # two workers may note the same group
    partial.write_text(json.dumps(data))
    partial.replace(path)


def _signal(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state is [0]), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for its reaper does not)."""
    return _start_time(pid) is not None


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot): with the pid, it names one process."""
    fields = _stat(pid)
    return None if fields is None or fields[0] == "Z" else fields[19]


def members(group: int) -> list[int]:
    """The running processes in process group ``group`` (zombies do not count)."""
    return list(_members(group))


def _members(group: int) -> Iterator[int]:
    for entry in PROC.glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == group:
            yield int(entry.name)


def _carries(pid: int, task_id: str, worker: str) -> bool:
    """Whether process ``pid`` was started for this run (its environment says so)."""
    try:
        environ = (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"GITQUEUE_TASK_ID={task_id}".encode() in environ and f"GITQUEUE_WORKER={worker}".encode() in environ
