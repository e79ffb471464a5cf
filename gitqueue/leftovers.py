"""Processes a dead worker left running, and how the next worker on the machine stops them.

A worker starts each command in a process group of its own. If the worker dies without
stopping it (SIGKILL, the OOM killer), Linux sends the command itself SIGTERM (see
``worker._die_with``), but not what the command started: the ``python train.py`` that a
shell script runs, say, keeps its GPU while the task runs again elsewhere.

So while a command runs, its worker keeps a record of it in ``<cache>/runs/<group>.json``.
A worker on the same machine (one sharing the cache) that finds the record of a worker that
is no longer alive stops that process group: SIGTERM first, SIGKILL once the grace period
has passed. It stops a group only if a process in it still carries the run's task id and
worker name in its environment, so a process group id that the system has since handed to
something else is never signalled.

Linux only (it reads ``/proc``); elsewhere nothing is recorded.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
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
