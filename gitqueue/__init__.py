"""gitqueue: a task queue for experiments in which the queue is a git repository."""

from typing import TYPE_CHECKING, Any

from gitqueue.errors import (
    AuthenticationFailed,
    GitqueueError,
    InvalidSweep,
    InvalidTask,
    InvalidTransition,
    NotHeld,
    NothingToClaim,
    QueueNotFound,
    RemoteUnavailable,
    TaskExists,
    TaskNotFound,
)
from gitqueue.task import State, Task

if TYPE_CHECKING:
    from gitqueue.queue import Queue, Run
    from gitqueue.sweep import Sweep
    from gitqueue.worker import current_task, loop

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "GitqueueError",
    "InvalidSweep",
    "InvalidTask",
    "InvalidTransition",
    "NotHeld",
    "NothingToClaim",
    "Queue",
    "QueueNotFound",
    "RemoteUnavailable",
    "Run",
    "State",
    "Sweep",
    "Task",
    "TaskExists",
    "TaskNotFound",
    "__version__",
    "current_task",
    "loop",
]


def __getattr__(name: str) -> Any:
    # Queue and Run load on first use, so that a git hook importing gitqueue.hooks starts fast.
    if name in ("Queue", "Run"):
        from gitqueue import queue

        return getattr(queue, name)
    if name == "Sweep":
        from gitqueue.sweep import Sweep

        return Sweep
    if name in ("loop", "current_task"):  # the experiment-script API (issue 3): @gitqueue.loop
        from gitqueue import worker

        return getattr(worker, name)
    raise AttributeError(f"module 'gitqueue' has no attribute {name!r}")
