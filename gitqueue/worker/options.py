"""What a worker is told (:class:`Options`, the flags of ``gitqueue work``) and what it tallies
(:class:`Summary`), with the exit codes it ends with. Plain data: imports nothing of gitqueue."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

EXIT_NO_COMMAND = 127
EXIT_WRONG_COMMAND = 2  # bad usage: the worker's command names an arg no task it tried has
EXIT_TASKS_FAILED = 7  # the worker ended as asked, but some of the tasks it ran failed


@dataclass
class Options:
    """How a worker behaves (the flags of ``gitqueue work``)."""

    command: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    max_tasks: int | None = None
    idle_timeout: float | None = None  # keep polling this long when idle (None: exit at once)
    wait: bool = False  # keep polling for ever
    max_failures: int | None = None  # stop after this many failures in a row (None or 0: never)
    allow_task_cmd: bool = False  # run a task's own `cmd` (whoever can push gains code execution)
    log_dir: Path = Path("gitqueue-logs")
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL when stopping a command
    heartbeat: float | None = None  # seconds between heartbeats (default: a third of the lease)
    reap_every: float = 30.0  # seconds between looks for runs whose lease ran out
    look_every: float = 3.0  # seconds between looks (fetches) for a cancel of the running task
    poll_max: float = 30.0  # longest wait between polls of an idle queue
    max_batch: int = 64  # short tasks: hold up to this many claims, report them in one push
    batch_seconds: float = 1.0  # size a batch to take about this long (longer while pushes collide)
    task_timeout: float | None = None  # wall-clock seconds a run may take (a task's `timeout` wins)
    slots: int = 1  # runs at once (see gitqueue.gpus.slot_count)
    gpus: tuple[str, ...] | None = None  # the GPUs this worker owns (None: it leaves CUDA_VISIBLE_DEVICES alone)


@dataclass
class Summary:
    done: int = 0
    failed: int = 0
    lost: int = 0  # cancelled, reaped or requeued under us
    failures_in_a_row: int = 0
    started: float = field(default_factory=time.monotonic)
