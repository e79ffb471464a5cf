"""Workers as a Slurm array job: the scheduler starts workers, the queue decides what they run.

:func:`render_script` writes a plain sbatch script that people can read and edit: one
``gitqueue work`` per array task, exec'd so that Slurm's signals reach the worker itself.
``--signal=B:USR1@N`` asks Slurm to warn the batch shell (``B:``: by default Slurm signals
only job steps, and a batch script that runs no ``srun`` has none) N seconds before the time
limit; the worker, which *is* the batch shell after ``exec``, then stops its run and returns
the task without spending an attempt. ``scancel`` sends SIGTERM, with the same effect.
:func:`submit` hands the script to ``sbatch``.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitqueue.config import resolve_queue_url
from gitqueue.errors import GitqueueError, SchedulerError
from gitqueue.git import is_local_path

WARN_SIGNAL = "USR1"  # the worker stops on it as on SIGTERM (gitqueue.worker.STOP_SIGNALS)
NODE_CACHE = "${TMPDIR:-/tmp}/gitqueue-cache-$(id -u)"  # node-local disk, unless GITQUEUE_CACHE says otherwise
_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")  # Slurm's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S


@dataclass(frozen=True)
class ArrayJob:
    """An array of ``workers`` Slurm jobs, each one ``gitqueue work -- command`` on ``queue_url``."""

    queue_url: str
    command: Sequence[str]
    workers: int
    time: str | None = None  # Slurm's --time (e.g. 4:00:00); None: the partition's default
    partition: str | None = None
    gpus_per_worker: int | None = None
    job_name: str = "gitqueue"
    log_dir: str = "gitqueue-logs"  # sbatch's output files and the runs' logs
    warn_seconds: int = 120  # how long before the time limit Slurm sends the warning signal
    sbatch_options: Sequence[str] = ()  # more #SBATCH lines, e.g. --mem=16G, --account=lab
    worker_options: Sequence[str] = ()  # more `gitqueue work` options, e.g. --idle-timeout 300
    program: Sequence[str] = ("gitqueue",)  # how the nodes run gitqueue (e.g. /path/to/venv/bin/gitqueue)
    worker_gpus: bool = False  # `gitqueue work` takes --gpus: give it the allocation's GPUs

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise GitqueueError(f"--workers must be at least 1, not {self.workers}")
        if self.time is not None and not _TIME.match(self.time):
            raise GitqueueError(f"--time {self.time!r} is not a Slurm time (e.g. 30, 4:00:00 or 1-12:00:00)")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 1:
            raise GitqueueError(f"--gpus-per-worker must be at least 1, not {self.gpus_per_worker}")
        if any("\n" in option for option in self.sbatch_options):
            raise GitqueueError("an sbatch option cannot hold a line break")
        if not self.command and "--allow-task-cmd" not in self.worker_options:
            raise GitqueueError("no command for the workers: give one after --, or --allow-task-cmd")


def render_script(job: ArrayJob) -> str:
    """The sbatch script for ``job``: #SBATCH lines, the node's cache, and the exec'd worker."""
    lines = [
        "#!/bin/bash",
        f"# {job.workers} gitqueue worker(s) as a Slurm array job: each array task runs one `gitqueue work`,",
        "# which claims tasks from the queue and runs them until none is left. Submit it with",
        f"# `mkdir -p {job.log_dir} && sbatch FILE` (Slurm does not create the folder of its --output).",
        *(f"#SBATCH {option}" for option in _sbatch_options(job)),
        "set -euo pipefail",
        "",
        "# The queue's git cache on this node's own disk: nodes must not share one cache on a network",
        "# file system (its lock is not reliable across machines there); the queue itself may live on one.",
        f'export GITQUEUE_CACHE="${{GITQUEUE_CACHE:-{NODE_CACHE}}}"',
        "",
        "# exec: the worker replaces this shell, so Slurm's signals reach it. On the warning before the",
        "# time limit (SIG" + WARN_SIGNAL + ") or scancel's SIGTERM it stops its run and returns the task to the",
        "# queue without spending an attempt. It names itself slurm-<array job>_<array task>.",
        *_gpu_note(job),
        "exec " + " \\\n    ".join(shlex.join(part) for part in _work_argv(job)),
        "",
    ]
    return "\n".join(lines)


def _gpu_note(job: ArrayJob) -> list[str]:
    if job.gpus_per_worker is None:
        return []
    if job.worker_gpus:
        return ["# --gpus all: the worker gives its runs the GPUs Slurm allocated to this array task."]
    return ["# Slurm sets CUDA_VISIBLE_DEVICES to the GPUs it allocated to this array task."]


def _sbatch_options(job: ArrayJob) -> list[str]:
    options = [f"--job-name={job.job_name}", f"--array=0-{job.workers - 1}"]
    if job.time is not None:
        options.append(f"--time={job.time}")
    if job.partition is not None:
        options.append(f"--partition={job.partition}")
    if job.gpus_per_worker is not None:
        options.append(f"--gres=gpu:{job.gpus_per_worker}")
    options.append(f"--output={job.log_dir}/slurm-%A_%a.out")
    options.append(f"--signal=B:{WARN_SIGNAL}@{job.warn_seconds}")
    options.extend(job.sbatch_options)  # sbatch reads these lines itself; no shell sees them
    return options


def _work_argv(job: ArrayJob) -> list[list[str]]:
    """`gitqueue work`'s words, in parts that make one line each: program, queue, options, command."""
    parts = [[*job.program, "work"], ["--queue", job.queue_url, "--log-dir", job.log_dir]]
    options = list(job.worker_options)
    if job.gpus_per_worker is not None and job.worker_gpus:
        options = ["--gpus", "all", *options]  # the GPUs Slurm allocated to this array task
    if options:
        parts.append(options)
    parts.append(["--", *job.command])
    return parts


def split_options(args: Sequence[str], *, worker_options: Mapping[str, bool]) -> tuple[list[str], list[str]]:
    """Sort the options ``slurm submit`` does not know itself into (sbatch's, the worker's).

    ``worker_options`` maps each option name of ``gitqueue work`` to whether it takes a value:
    those go to the workers (with their value), anything else to sbatch, so options either
    command gains later pass through unchanged. An sbatch option's value may follow it as the
    next word (``--mem 16G``, ``-A lab``) or be joined to it (``--mem=16G``). A flag of
    sbatch's is taken to have no value when the next word is an option.
    """
    sbatch: list[str] = []
    worker: list[str] = []
    words = list(args)
    while words:
        word = words.pop(0)
        if not word.startswith("-"):
            raise GitqueueError(f"unexpected {word!r}: the workers' command goes after --")
        name, joined, _ = word.partition("=")
        if name in worker_options:
            worker.append(word)
            if worker_options[name] and not joined:
                if not words:
                    raise GitqueueError(f"{name} needs a value")
                worker.append(words.pop(0))
            continue
        if joined or not words or words[0].startswith("-"):
            sbatch.append(word)
        else:  # --mem 16G -> --mem=16G; -A lab stays -A lab
            sbatch.append(f"{word}{'=' if word.startswith('--') else ' '}{words.pop(0)}")
    return sbatch, worker


def queue_url(explicit: str | None) -> str:
    """The queue's URL as every node must see it: a local path made absolute (it must be on a
    disk all nodes mount), anything else as it is."""
    url = resolve_queue_url(explicit)
    return str(Path(url).expanduser().resolve()) if is_local_path(url) else url


def script_path(log_dir: Path, *, now: dt.datetime | None = None) -> Path:
    """Where a submitted script is kept: beside its logs, named by when it was submitted."""
    moment = now or dt.datetime.now()
    return log_dir / f"gitqueue-workers-{moment:%Y%m%d-%H%M%S-%f}.sbatch"


def find_sbatch(name: str = "sbatch") -> str:
    """The path of Slurm's sbatch, or SchedulerError saying where to run this instead."""
    program = shutil.which(name)
    if program is None:
        raise SchedulerError(f"{name} not found: run this on a Slurm login node (or use --dry-run to see the script)")
    return program


def submit(job: ArrayJob, *, script: Path, sbatch: str | None = None) -> str:
    """Write the job's script to ``script`` (creating its log folder) and submit it; the job id."""
    program = sbatch or find_sbatch()
    Path(job.log_dir).mkdir(parents=True, exist_ok=True)  # Slurm does not create the folder of --output
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(render_script(job))
    proc = subprocess.run([program, "--parsable", str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        said = (proc.stderr or proc.stdout).strip()
        raise SchedulerError(f"sbatch refused {script}: {said}")
    return proc.stdout.strip().split(";", 1)[0]


__all__ = ["ArrayJob", "find_sbatch", "queue_url", "render_script", "script_path", "split_options", "submit"]
