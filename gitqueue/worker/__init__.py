"""The worker: claim, run, report, repeat.

A worker runs one task at a time, or with ``--slots``/``--gpus`` several at once, each run as a
single run is (see :mod:`~gitqueue.worker.slots`). A running task is watched while its command runs: the run's
lease is kept alive by heartbeats pushed to a ref of the run's own (``refs/gitqueue/leases/<token>``,
never the queue branch), and at each heartbeat the worker checks that it still holds the task,
stopping the command if a person cancelled it or a reaper handed it on. Finishing a task and
claiming the next share one commit and one push. Commands are argv lists: ``{name}`` and ``{a.b}``
in an argument are replaced by the task's args, and nothing ever passes through a shell.

The parts, each above the ones after it (imports go down this list only, all above
:mod:`gitqueue.queue`):

- :mod:`~gitqueue.worker.decorator`: ``@gitqueue.loop`` and ``current_task()``, the script API;
- :mod:`~gitqueue.worker.worker`: :class:`Worker`, the loop (when to claim, reap, run, stop);
- :mod:`~gitqueue.worker.slots`: :class:`~gitqueue.worker.slots.Slots`, the loop of many runs at once
  (their GPUs, one push per cycle, one heartbeat push for all);
- :mod:`~gitqueue.worker.runner`: the default runner, a task's command as a child process;
- :mod:`~gitqueue.worker.hand`: the runs in hand, and the one push that reports and claims;
- :mod:`~gitqueue.worker.pace`: batch sizing;
- :mod:`~gitqueue.worker.neighbours`: this machine's workers on a queue, and their tasks' time;
- :mod:`~gitqueue.worker.child`: one child process (process group, pipes, log, time limit, stop);
- :mod:`~gitqueue.worker.lease`: :class:`Watch`, heartbeats and looks for a cancel, ``TakenAway``;
- :mod:`~gitqueue.worker.signals`: the stop signals and ``Stop``;
- :mod:`~gitqueue.worker.command`: command templates (:func:`expand`, :class:`MissingArg`);
- :mod:`~gitqueue.worker.options`: :class:`Options`, :class:`Summary` and the exit codes.
"""

from gitqueue.worker.command import MissingArg, expand
from gitqueue.worker.decorator import current_task, loop
from gitqueue.worker.lease import TakenAway, Watch
from gitqueue.worker.options import EXIT_NO_COMMAND, EXIT_TASKS_FAILED, EXIT_WRONG_COMMAND, Options, Summary
from gitqueue.worker.signals import STOP_SIGNALS, Stop
from gitqueue.worker.worker import Worker

__all__ = [
    "EXIT_NO_COMMAND",
    "EXIT_TASKS_FAILED",
    "EXIT_WRONG_COMMAND",
    "STOP_SIGNALS",
    "MissingArg",
    "Options",
    "Stop",
    "Summary",
    "TakenAway",
    "Watch",
    "Worker",
    "current_task",
    "expand",
    "loop",
]
