"""(g) A lab's fleet: W machines sharing one queue on a forge far away, tasks of fixed seconds.

The forge is ``git daemon`` behind bench/proxy.py's latency proxy on 127.0.0.1 (40 ms each way
by default: an 80 ms round trip, a nearby forge). Each machine is one ``gitqueue work`` process
with a cache of its own (as on separate machines), running ``sleep SECONDS`` per task. The
figures issue 12 asks for:

- efficiency = (tasks x seconds / machines) / drain time, 1.0 = the queue costs nothing; the
  drain runs from launching the first worker to the last worker's exit;
- from launch until every machine ran its first task;
- landed pushes per minute on the branch (commits on the remote) and push attempts, rejected
  pushes per task (the workers' GITQUEUE_STATS_FILE);
- the spread of tasks per machine (fair is tasks / machines);
- exactly-once, read from the remote with plain git (bench/checks.py).

Run alone: ``python -m bench.fleet --machines 16 --tasks 256 --seconds 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench.checks import Check, exactly_once
from bench.drain import run_workers
from bench.env import sandbox, seed_queue
from bench.proxy import LatencyProxy
from gitqueue.testing import GitDaemon, make_bare_repo

# Quick set: the first three rows of issue 12's table; --full adds the rest.
QUICK = ((1, 8, 1.0), (4, 32, 1.0), (16, 128, 1.0))
FULL = (*QUICK, (16, 256, 1.0), (16, 64, 5.0))


@dataclass
class FleetResult:
    machines: int
    tasks: int
    seconds: float
    delay: float
    wall: float
    finished: bool
    first_run_all: float  # launch until the last machine started its first task
    per_machine: list[int]  # tasks started by each machine (retries included)
    pushes: int
    rejected: int
    check: Check

    @property
    def efficiency(self) -> float:
        return (self.tasks * self.seconds / self.machines) / self.wall if self.wall > 0 else float("nan")

    @property
    def landed_per_min(self) -> float:
        return self.check.commits / self.wall * 60 if self.wall > 0 else float("nan")

    @property
    def spread(self) -> str:
        return f"{min(self.per_machine)} to {max(self.per_machine)} (fair {self.tasks / self.machines:.0f})"


def _starts(path: Path, launch_wall: float) -> tuple[dict[str, float], Counter[str]]:
    """Per machine: seconds from launch to its first task, and how many tasks it started."""
    first: dict[str, float] = {}
    count: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            at, machine = float(parts[0]), parts[1]
            count[machine] += 1
            first[machine] = min(first.get(machine, float("inf")), at - launch_wall)
    return first, count


def fleet(root: Path, *, machines: int, tasks: int, seconds: float, delay: float, budget: float) -> FleetResult:
    """One drain of ``tasks`` tasks of ``seconds`` by ``machines`` workers behind the proxy."""
    base = root / f"fleet-{machines}-{tasks}-{seconds:g}"
    served = base / "srv"
    remote = make_bare_repo(served / "queue.git")
    ids, seed = seed_queue(str(remote), tasks, base / "seed")  # the seed goes by path: not measured
    starts = base / "starts.txt"
    # The task: note (wall clock, machine, task) then sleep. The shell is the benchmark's, not a task's.
    note = f'echo "$(date +%s.%N) $GITQUEUE_WORKER $GITQUEUE_TASK_ID" >> {shlex.quote(str(starts))}'
    command = ["sh", "-c", f"{note}; exec sleep {seconds:g}"]
    with GitDaemon(served) as daemon, LatencyProxy(daemon.port, delay=delay) as proxy:
        launch_wall = time.time()
        wall, finished, stats = run_workers(
            proxy.url("queue.git"), base / "workers", workers=machines, budget=budget, command=command
        )
    first, count = _starts(starts, launch_wall)
    check = exactly_once(remote, ids, seed)
    names = [f"bench-{i}" for i in range(machines)]
    result = FleetResult(
        machines=machines,
        tasks=tasks,
        seconds=seconds,
        delay=delay,
        wall=wall,
        finished=finished,
        first_run_all=max(first.get(n, float("inf")) for n in names),
        per_machine=[count.get(n, 0) for n in names],
        pushes=int(sum(s["pushes"] for s in stats)),
        rejected=int(sum(s["rejected_pushes"] for s in stats)),
        check=check,
    )
    shutil.rmtree(base, ignore_errors=True)
    return result


def row(r: FleetResult) -> list[object]:
    done = "" if r.finished else " (timed out)"
    return [
        f"{r.machines} x {r.tasks // r.machines if r.machines else 0} of {r.seconds:g} s",
        r.efficiency,
        f"{r.first_run_all:.1f} s" if r.first_run_all < float("inf") else f"never: {r.per_machine.count(0)} ran none",
        r.landed_per_min,
        r.pushes / r.tasks,
        r.rejected / r.tasks,
        r.spread,
        r.check.summary(),
        f"{r.wall:.1f}s{done}",
    ]


COLUMNS = ["machines x tasks each", "efficiency", "all machines busy after", "landed pushes/min",
           "push attempts/task", "rejected/task", "tasks per machine", "exactly once", "drain"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from bench.report import fmt

    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n")[0])
    p.add_argument("--machines", type=int, default=16)
    p.add_argument("--tasks", type=int, default=256)
    p.add_argument("--seconds", type=float, default=1.0, help="what each task sleeps")
    p.add_argument("--delay", type=float, default=0.040, help="one-way latency in seconds [0.040]")
    p.add_argument("--budget", type=float, default=300.0)
    opts = p.parse_args(argv)
    with sandbox() as root:
        r = fleet(root, machines=opts.machines, tasks=opts.tasks, seconds=opts.seconds, delay=opts.delay,
                  budget=opts.budget)  # fmt: skip
    print(" | ".join(COLUMNS))
    print(" | ".join(fmt(c) for c in row(r)))
    return 0 if r.check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
