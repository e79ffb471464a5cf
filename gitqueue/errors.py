"""Every error gitqueue raises on purpose.

The library raises these; only the CLI turns them into a message and an exit code.
"""

from __future__ import annotations


class GitqueueError(Exception):
    """Base of all of gitqueue's own errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class QueueNotFound(GitqueueError):
    """No queue was named and none is configured, or the named one is not a queue."""


class RemoteUnavailable(GitqueueError):
    """The queue's remote could not be reached, even after retrying."""

    exit_code = 5


class AuthenticationFailed(GitqueueError):
    """The remote answered but refused us (HTTP 401/403, a rejected ssh key, an unknown host
    key): retrying cannot help, so it is reported at once, in git's own words."""

    exit_code = 6


class CacheDamaged(GitqueueError):
    """The local cache of a queue (a bare repository under ``~/.cache/gitqueue``) is damaged or
    gone: a truncated object or pack, a deleted folder. It is only a cache: gitqueue rebuilds it
    from the remote and goes on; this reaches a caller only when rebuilding does not help."""


class InvalidTask(GitqueueError):
    """A task file (or a task given to ``submit``) breaks the task format."""

    def __init__(self, path: str, problem: str, *, line: int | None = None, column: int | None = None):
        self.path = path
        self.problem = problem
        self.line = line
        self.column = column
        where = path if line is None else f"{path}:{line}" + ("" if column is None else f":{column}")
        super().__init__(f"{where}: {problem}")


class InvalidId(GitqueueError):
    """A task id that is not of ``[A-Za-z0-9._-]``, at most 128 characters."""


class TaskNotFound(GitqueueError):
    """No task with that id is in the queue."""


class TaskExists(GitqueueError):
    """``submit`` met an id that already holds a task with different content."""


class InvalidTransition(GitqueueError):
    """A state change that makes no sense for the task's state, e.g. cancelling a done task."""


class NotHeld(GitqueueError):
    """A report from a run that no longer holds its task (its token no longer matches).

    Nothing in the queue was changed.
    """

    exit_code = 4

    def __init__(self, message: str, *, task_id: str = "") -> None:
        super().__init__(message)
        self.task_id = task_id


class NothingToClaim(GitqueueError):
    """No pending task this worker may take."""

    exit_code = 3


class LostRace(GitqueueError):
    """Another writer moved the branch first; the caller rebuilds on the new tip and retries."""


class Defer(Exception):
    """Raised by a change's ``build``: push nothing on this view, look again after a short pause
    (another worker's push is due to do this one's work: see :mod:`gitqueue.requests`)."""


class PushRefused(GitqueueError):
    """The remote's hook refused the push (it would leave the queue invalid); its reasons follow."""


class InvalidFilter(GitqueueError):
    """A ``--where`` expression that does not parse; the message points at the spot."""

    exit_code = 2


class InvalidSweep(GitqueueError):
    """A grid, sample or repeat spec that cannot be read (the message quotes it)."""

    exit_code = 2


class InvalidStudy(GitqueueError):
    """A study file for ``gitqueue tune`` that cannot be used (the message names the file)."""

    exit_code = 2


class EditConflict(GitqueueError):
    """Someone else changed a task's lines while a person was editing them; nothing was written.

    ``text`` is the person's version, so that it is not lost.
    """

    def __init__(self, message: str, *, text: str = "") -> None:
        super().__init__(message)
        self.text = text


class SchedulerError(GitqueueError):
    """A cluster scheduler (Slurm's sbatch) is missing or refused a job."""


class GpuError(GitqueueError):
    """A ``--gpus`` or ``--slots`` value a worker cannot use: an empty or repeated GPU id, more
    slots than GPUs, or ``--gpus all`` on a machine where ``nvidia-smi -L`` lists no GPU."""

    exit_code = 2
