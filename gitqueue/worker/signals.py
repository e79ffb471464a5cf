"""The signals that stop a worker, and :class:`Stop`, which a run raises when one came.

:class:`Signals` installs the handlers (main thread only) and remembers the first signal; the
worker's loop, the lease watch and the ``@loop`` decorator read it. Imports nothing of gitqueue.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

# Signals that stop a worker: its runs go back to pending without spending an attempt.
# SIGUSR1 is the warning Slurm sends before a job's time limit (``--signal=B:USR1@120``).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class Stop(Exception):
    """Raised inside a run when the worker must stop (a signal arrived)."""


class Signals:
    """The stop signals one worker got: ``received`` is the first (None: none yet).

    While ``in_process`` is set (a runner works in this thread), a signal raises
    KeyboardInterrupt to stop it; a second Ctrl-C always does.
    """

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.received: int | None = None
        self.in_process = False

    def for_child(self) -> int:
        """What a stopping worker sends its command first: Ctrl-C as Ctrl-C, anything else
        (SIGTERM, Slurm's warning SIGUSR1) as SIGTERM, which every program takes as 'stop'."""
        return signal.SIGINT if self.received == signal.SIGINT else signal.SIGTERM

    def _handle(self, signum: int, frame: Any) -> None:
        again = self.received is not None
        if not again:
            self.received = signum
            self.say(f"got {signal.Signals(signum).name}: stopping the current run, returning its task")
        if self.in_process or (again and signum == signal.SIGINT):
            self.in_process = False
            raise KeyboardInterrupt  # stop a function running in this thread; a second Ctrl-C: stop now

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle the stop signals while inside (nothing off the main thread, which cannot)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
