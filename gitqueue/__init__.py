"""gitqueue: a task queue for experiments in which the queue is a git repository."""

from gitqueue.errors import (
    GitqueueError,
    InvalidTask,
    InvalidTransition,
    NotHeld,
    NothingToClaim,
    QueueNotFound,
    RemoteUnavailable,
    TaskExists,
    TaskNotFound,
)
from gitqueue.queue import Queue, Run
from gitqueue.task import State, Task

__version__ = "0.1.0"

__all__ = [
    "GitqueueError",
    "InvalidTask",
    "InvalidTransition",
    "NotHeld",
    "NothingToClaim",
    "Queue",
    "QueueNotFound",
    "RemoteUnavailable",
    "Run",
    "State",
    "Task",
    "TaskExists",
    "TaskNotFound",
    "__version__",
]
