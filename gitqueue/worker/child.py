"""Running one command as a child process: its process group, pipes and log, time limit and stop.

A :class:`ChildRun` is one child run, so that several can run at once. It is given the argv,
the environment, the log's path, a time limit, how long a stop may take, and a ``check``
callable that raises to say "stop now"; it returns an :class:`Outcome` and calls nothing of the
worker. It notes the child in the runs folder (see :mod:`gitqueue.leftovers`) while it runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gitqueue import leftovers
from gitqueue.worker.lease import TakenAway
from gitqueue.worker.signals import Stop

TAIL_LINES = 64  # last lines of each stream kept for the error of a failed run


@dataclass(frozen=True)
class Outcome:
    """How a child run ended: its exit status, whether its time ran out, its output's last lines
    (stdout's, then stderr's), or why it could not start."""

    code: int | None = None
    timed_out: bool = False
    output: str = ""
    start_error: OSError | None = None


class ChildRun:
    """One command run as a child process in a session (process group) of its own.

    ``say`` tells the worker's log; ``task_id`` and ``worker`` name the run in its notes.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str],
        log_path: Path,
        notes: list[str],
        grace: float,
        runs_folder: Path,
        task_id: str,
        worker: str,
        say: Callable[[str], None],
    ) -> None:
        self.argv, self.env, self.log_path, self.notes = argv, env, log_path, notes
        self.grace = grace
        self.runs_folder, self.task_id, self.worker = runs_folder, task_id, worker
        self.say = say

    def run(
        self,
        *,
        check: Callable[[], None],
        limit: float | None,
        stopping: Callable[[], None],
        first_signal: Callable[[], int],
    ) -> Outcome:
        """Start the child, and wait for it while calling ``check`` often. When ``check`` raises
        Stop or TakenAway, ``stopping()`` is told, the child is stopped (``first_signal()``, then
        SIGKILL after the grace), and the exception goes on; anything else kills it at once."""
        with open(self.log_path, "wb") as log:
            for line in self.notes:
                log.write(f"# {line}\n".encode())
            log.flush()
            try:
                child = subprocess.Popen(
                    self.argv,
                    env=self.env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    preexec_fn=_die_with(os.getpid()),
                )
            except OSError as exc:
                return Outcome(start_error=exc)
            running = leftovers.record(self.runs_folder, child.pid, self.task_id, self.worker)
            try:
                return self._supervise(child, log, check, limit, stopping, first_signal)
            finally:
                leftovers.forget(running)

    def _supervise(
        self,
        child: subprocess.Popen[bytes],
        log: IO[bytes],
        check: Callable[[], None],
        limit: float | None,
        stopping: Callable[[], None],
        first_signal: Callable[[], int],
    ) -> Outcome:
        # Each stream keeps its own last lines: their interleaving across two pipes is not
        # knowable. An error records stdout's, then stderr's, where its story usually ends.
        out_tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        err_tail: deque[bytes] = deque(maxlen=TAIL_LINES)
        lock = threading.Lock()
        pumps = [
            threading.Thread(target=_pump, args=(child.stdout, sys.stdout, log, out_tail, lock), daemon=True),
            threading.Thread(target=_pump, args=(child.stderr, sys.stderr, log, err_tail, lock), daemon=True),
        ]
        for pump in pumps:
            pump.start()
        try:
            timed_out = self._wait(child, check, limit)
        except (Stop, TakenAway):
            stopping()  # `gitqueue status` on this machine shows it stopping
            self.stop(child, first=first_signal())
            for pump in pumps:
                pump.join(timeout=5)
            raise
        except BaseException:  # anything else ends the worker: never leave the child running
            self.stop(child, first=signal.SIGKILL)
            raise
        for pump in pumps:
            pump.join(timeout=5)
        output = (b"".join(out_tail) + b"".join(err_tail)).decode(errors="replace")
        return Outcome(code=child.returncode, timed_out=timed_out, output=output)

    def _wait(self, child: subprocess.Popen[bytes], check: Callable[[], None], limit: float | None) -> bool:
        """Wait for the child, calling ``check``; past ``limit`` seconds stop its process
        group (SIGTERM, SIGKILL after the grace) and return True."""
        deadline = None if limit is None else time.monotonic() + limit
        while child.poll() is None:
            check()
            if deadline is not None and time.monotonic() >= deadline:
                self.say(f"{self.task_id}: over its time limit of {limit:g}s; stopping it")
                self.stop(child)
                return True
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=wait)
        return False

    def stop(self, child: subprocess.Popen[bytes], *, first: int = signal.SIGTERM) -> None:
        """Signal the child's process group (the signal the worker got, else SIGTERM), then
        SIGKILL what is left of it after the grace period: the child, or (on Linux) processes
        it started that outlive it. A second Ctrl-C meanwhile cuts the grace short."""
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, first)
            deadline = time.monotonic() + self.grace
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=self.grace)
            while child.poll() is not None and leftovers.members(child.pid) and time.monotonic() < deadline:
                time.sleep(0.05)  # the child is gone; what it started gets the rest of the grace
            if child.poll() is not None and not leftovers.members(child.pid):
                return
        except KeyboardInterrupt:
            self.say("stopping the run now")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5.0)


def _die_with(worker_pid: int) -> Callable[[], None] | None:
    """On Linux, the child gets SIGTERM if its worker dies without stopping it (SIGKILL, OOM).

    The dead worker's task goes back to the queue and runs elsewhere; its orphaned child
    must not run on beside the rerun (on the same GPU, say). Only the child itself is told,
    not processes it started: the next worker on the machine stops those (see leftovers).
    """
    if _prctl is None:
        return None

    def arm() -> None:  # runs in the child between fork and exec: nothing but syscalls
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != worker_pid:  # the worker died before we armed
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_PR_SET_PDEATHSIG = 1
_prctl = _load_prctl()


def _pump(source: IO[bytes] | None, sink: IO[str], log: IO[bytes], tail: deque[bytes], lock: threading.Lock) -> None:
    """Copy a child's stream to our own stream and the run's log, keeping the last lines."""
    if source is None:
        return
    out = getattr(sink, "buffer", None)
    echo = True
    for line in iter(source.readline, b""):
        with lock:
            log.write(line)
            log.flush()
            tail.append(line)
        if not echo:
            continue
        try:
            if out is not None:
                out.write(line)
                out.flush()
            else:
                sink.write(line.decode(errors="replace"))
                sink.flush()
        except (OSError, ValueError):  # our terminal or pipe went away: keep draining, or the child blocks
            echo = False
