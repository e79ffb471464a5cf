"""How long ``gitqueue report`` takes on a big sweep, and how big its page is.

``python -m bench.report_scale [--tasks 100000]`` writes a queue whose tasks are all done
(each with a result and an attempt record from one of 16 workers, 2% after a failed first
attempt) in one commit with ``git fast-import``, then times ``gitqueue report`` on it from a
cold cache (every file parsed), in a second process (what the first stored in the local cache
is not parsed again), and a second time from the same process's reporter (what ``--watch``
does after a change: nothing is read again).
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

from bench.env import git, gitqueue_command, sandbox
from gitqueue import Queue
from gitqueue.report import Reporter
from gitqueue.task import State, Task, fan, now_iso, render


def done_task(index: int, start: float, rng: random.Random) -> Task:
    lr, bs, depth = 10 ** rng.uniform(-4, -1), rng.choice([16, 32, 64, 128]), rng.randint(1, 8)
    task_id = f"{index + 1:06d}-lr{lr:.4g}-bs{bs}-depth{depth}"
    began = start + index * 0.5
    attempts = []
    if rng.random() < 0.02:
        attempts.append({"attempt": 1, "outcome": "failed", "worker": f"box{index % 16}/0", "token": "f" * 16,
                         "started": now_iso(began - 30), "ended": now_iso(began - 10), "duration": 20.0,
                         "exit_code": 1, "error": "CUDA out of memory"})  # fmt: skip
    attempts.append({"attempt": len(attempts) + 1, "outcome": "done", "worker": f"box{index % 16}/0",
                     "token": "a" * 16, "started": now_iso(began), "ended": now_iso(began + 8),
                     "duration": 8.0})  # fmt: skip
    acc = 0.9 - 0.05 * abs(lr * 1000 - 1) / 100 + depth / 100 + rng.gauss(0, 0.01)
    return Task(id=task_id, state=State.DONE, args={"lr": lr, "bs": bs, "depth": depth},
                submitted={"at": now_iso(start - 60), "by": "bench"}, attempts=attempts,
                result={"acc": round(acc, 4), "loss": round(1 - acc, 4)})  # fmt: skip


def seed(remote: Path, tasks: int) -> None:
    """One commit on top of the initialised queue holding ``tasks`` done tasks, fanned out."""
    rng = random.Random(0)
    start = time.time() - tasks * 0.5
    parent = git("rev-parse", "refs/heads/main", cwd=remote).decode().strip()
    lines = [b"commit refs/heads/main\n", b"committer bench <bench@example.org> 1700000000 +0000\n",
             b"data 20\nseed the done tasks\n", f"from {parent}\n".encode()]  # fmt: skip
    for index in range(tasks):
        task = done_task(index, start, rng)
        data = render(task)
        lines.append(f"M 100644 inline done/{fan(task.id)}/{task.id}.yaml\ndata {len(data)}\n".encode())
        lines.append(data + b"\n")
    git("fast-import", "--quiet", cwd=remote, input=b"".join(lines))


def report(remote: Path, page: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    """How long one ``gitqueue report`` process takes, and what it printed."""
    t = time.monotonic()
    proc = subprocess.run([*gitqueue_command(), "report", "--queue", str(remote), "-o", str(page)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode:
        sys.exit(proc.stderr)
    return time.monotonic() - t, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=100_000)
    options = parser.parse_args()
    with sandbox() as root:
        remote = root / "queue.git"
        git("init", "-q", "--bare", "-b", "main", str(remote))
        Queue.init(str(remote), folder=root / "work").close()
        t = time.monotonic()
        seed(remote, options.tasks)
        print(f"seeded {options.tasks:,} done tasks in {time.monotonic() - t:.1f}s")
        page = root / "report.html"
        cold, proc = report(remote, page)
        print(
            f"gitqueue report, cold cache: {cold:.1f}s, page {page.stat().st_size / 1e6:.1f} MB ({proc.stderr.strip()})"
        )
        warm, _ = report(remote, page)
        print(f"gitqueue report again, in a new process: {warm:.1f}s")
        with Queue.open(str(remote)) as q:
            reporter = Reporter(q)
            t = time.monotonic()
            reporter.write(page)
            first = time.monotonic() - t
            t = time.monotonic()
            reporter.write(page)
            again = time.monotonic() - t
        print(f"in one process (cache warm): first page {first:.1f}s, the next (--watch after a change) {again:.1f}s")


if __name__ == "__main__":
    main()
