"""(g) A lab's fleet: machines with slots sharing one queue on a forge far away (issue 12).

The forge is ``git daemon`` behind bench/proxy.py's latency proxy on 127.0.0.1 (40 ms each way
by default: an 80 ms round trip). Each machine has a cache of its own and S slots: one
``gitqueue work --slots S`` where the CLI has ``--slots``, else S ``gitqueue work`` processes
sharing that machine's cache (the row says which). Each task notes its start in a file and
sleeps. Scenarios, by name (``--scenarios``):

- ``16x1``: 16 machines x 1 slot, 256 tasks of 1 s; also the time until all 16 ran a task;
- ``4x4``: 4 machines x 4 slots, 256 tasks of 1 s;
- ``16x1-5s``: 16 x 1, 64 tasks of 5 s; every machine within one task of its fair share?
- ``shared16``: 16 workers of one machine sharing a cache over ``git daemon`` (no proxy), trivial
  tasks, tasks/s as a ratio to one worker's tasks/s measured in the same run;
- ``budget``: 4 x 4, 576 tasks of 5 s (3 minutes at best) with ``push_budget: 12/min`` in
  gitqueue.yaml: pushes of every kind per minute against the budget.

Figures: efficiency = (tasks x seconds / (machines x slots)) / drain, from launching the first
worker to the last one's exit (1.0: the queue costs nothing); landed pushes per minute counted
on the server by a ``reference-transaction`` hook (branch and ``refs/gitqueue/*`` apart);
rejected pushes per task from the workers' GITQUEUE_STATS_FILE; tasks per machine; exactly-once
from the remote (bench/checks.py) and from the start file (no task's command ran twice).

Run alone: ``python -m bench.fleet --scenarios 16x1,4x4`` or ``python -m bench.fleet --machines 16
--slots 1 --tasks 256 --seconds 1``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.checks import Check, exactly_once
from bench.drain import run_workers
from bench.env import compile_gitqueue, git, gitqueue_command, sandbox, seed_queue
from bench.proxy import LatencyProxy
from gitqueue.testing import GitDaemon, log_ref_updates, make_bare_repo, ref_updates


@dataclass(frozen=True)
class Scenario:
    name: str
    machines: int
    slots: int
    tasks: int
    seconds: float
    push_budget: str | None = None  # written into gitqueue.yaml, e.g. "12/min"
    proxy: bool = True  # behind the latency proxy (shared16 is not)

    @property
    def describe(self) -> str:
        kind = f"tasks of {self.seconds:g} s" if self.seconds else "trivial tasks"
        extra = f", push_budget {self.push_budget}" if self.push_budget else ""
        return f"{self.machines} x {self.slots} slots, {self.tasks} {kind}{extra}"


SCENARIOS = {
    "16x1": Scenario("16x1", 16, 1, 256, 1.0),
    "4x4": Scenario("4x4", 4, 4, 256, 1.0),
    "16x1-5s": Scenario("16x1-5s", 16, 1, 64, 5.0),
    "shared16": Scenario("shared16", 1, 16, 256, 0.0, proxy=False),
    "budget": Scenario("budget", 4, 4, 576, 5.0, push_budget="12/min"),
}
QUICK = ("16x1",)
FULL = tuple(SCENARIOS)


@dataclass
class Pushes:
    """Landed pushes read from the server's hook log: one push = one receive-pack process."""

    branch: int = 0  # pushes that moved the branch
    gitqueue: int = 0  # pushes that moved refs/gitqueue/* (leases, ...)
    total: int = 0  # pushes of every kind
    refs: Counter[str] = field(default_factory=Counter)  # updates per kind of ref


@dataclass
class FleetResult:
    scenario: Scenario
    mode: str  # "--slots" or "processes"
    delay: float
    wall: float
    finished: bool
    first_run_all: float  # launch until the last machine started its first task
    first_run_any: float  # launch until the first task started
    last_end: float  # launch until the last task's command ended (its start plus the task's seconds)
    per_machine: list[int]  # tasks started by each machine (retries included)
    pushes: Pushes
    attempts: int
    rejected: int
    ran_twice: int  # task ids whose command started more than once
    check: Check
    steady: float = 0.0  # first worker ready to last exit (for tasks/s)
    base_tasks_per_s: float | None = None  # shared16: one worker alone, same run

    @property
    def efficiency(self) -> float:
        s = self.scenario
        return (s.tasks * s.seconds / (s.machines * s.slots)) / self.wall if self.wall > 0 else float("nan")

    @property
    def tasks_per_s(self) -> float:
        return self.check.done / self.steady if self.steady > 0 else float("nan")

    def per_min(self, count: int) -> float:
        return count / self.wall * 60 if self.wall > 0 else float("nan")

    @property
    def max_deviation(self) -> float:
        fair = self.scenario.tasks / self.scenario.machines
        return max(abs(n - fair) for n in self.per_machine) if self.per_machine else float("nan")

    @property
    def spread(self) -> str:
        fair = self.scenario.tasks / self.scenario.machines
        return f"{min(self.per_machine)} to {max(self.per_machine)} (fair {fair:g}, max off {self.max_deviation:g})"

    @property
    def ok(self) -> bool:
        return self.check.ok and self.ran_twice == 0


def slots_mode() -> str:
    """``--slots`` when ``gitqueue work --help`` lists it, else ``processes`` (S workers per machine)."""
    out = subprocess.run([*gitqueue_command(), "work", "--help"], capture_output=True, timeout=60, text=True)
    return "--slots" if "--slots" in out.stdout else "processes"


def read_pushes(log: Path) -> Pushes:
    branch: set[str] = set()
    ours: set[str] = set()
    every: set[str] = set()
    refs: Counter[str] = Counter()
    for _, pid, ref in ref_updates(log):
        every.add(pid)
        if ref.startswith("refs/heads/"):
            branch.add(pid)
            refs["branch"] += 1
        elif ref.startswith("refs/gitqueue/"):
            ours.add(pid)
            refs[ref.split("/")[2]] += 1
        else:
            refs["other"] += 1
    return Pushes(branch=len(branch), gitqueue=len(ours), total=len(every), refs=refs)


def set_push_budget(remote: Path, budget: str) -> str:
    """Commit ``push_budget: BUDGET`` into the queue's gitqueue.yaml with plain git; the new tip."""
    old = git("rev-parse", "main", cwd=remote).decode().strip()
    text = git("show", "main:gitqueue.yaml", cwd=remote).decode().rstrip("\n") + f"\npush_budget: {budget}\n"
    blob = git("hash-object", "-w", "--stdin", cwd=remote, input=text.encode()).decode().strip()
    entries = git("ls-tree", "main", cwd=remote).decode().splitlines()
    kept = [e for e in entries if e.split("\t", 1)[1] != "gitqueue.yaml"]
    tree_in = "\n".join([*kept, f"100644 blob {blob}\tgitqueue.yaml"]) + "\n"
    tree = git("mktree", cwd=remote, input=tree_in.encode()).decode().strip()
    msg = f"bench: push_budget {budget}".encode()
    commit = git("commit-tree", tree, "-p", old, cwd=remote, input=msg, identity=True).decode().strip()
    git("update-ref", "refs/heads/main", commit, old, cwd=remote)
    return commit


def _starts(path: Path, launch_wall: float) -> tuple[dict[str, float], Counter[str], Counter[str], float]:
    """Per machine: seconds from launch to its first task and tasks started; starts per task id;
    seconds from launch to the last task's start."""
    first: dict[str, float] = {}
    count: Counter[str] = Counter()
    per_task: Counter[str] = Counter()
    last = float("-inf")
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            at, machine = float(parts[0]), parts[1].split(".")[0]
            count[machine] += 1
            per_task[parts[2]] += 1
            first[machine] = min(first.get(machine, float("inf")), at - launch_wall)
            last = max(last, at - launch_wall)
    return first, count, per_task, last


def layout(s: Scenario, mode: str) -> list[tuple[str, str]]:
    """(worker name, cache folder) per process: ``bench-M`` or, without --slots, ``bench-M.S``."""
    if mode == "--slots":
        return [(f"bench-{m}", f"cache-{m}") for m in range(s.machines)]
    return [(f"bench-{m}.{k}", f"cache-{m}") for m in range(s.machines) for k in range(s.slots)]


def task_command(starts: Path, seconds: float) -> list[str]:
    """Note (wall clock, worker, task) then sleep. The shell is the benchmark's, not a task's."""
    note = f'echo "$(date +%s.%N) $GITQUEUE_WORKER $GITQUEUE_TASK_ID" >> {shlex.quote(str(starts))}'
    return ["sh", "-c", f"{note}; exec sleep {seconds:g}" if seconds else note]


def drain_once(root: Path, s: Scenario, *, mode: str, delay: float, budget: float, label: str) -> FleetResult:
    """One drain of scenario ``s``: seed, hook, workers (behind the proxy unless ``s.proxy`` is off), checks."""
    base = root / f"fleet-{s.name}-{label}"
    served = base / "srv"
    remote = make_bare_repo(served / "queue.git")
    ids, seed = seed_queue(str(remote), s.tasks, base / "seed")  # the seed goes by path: not measured
    if s.push_budget:
        seed = set_push_budget(remote, s.push_budget)
    hook_log, starts = base / "ref-updates.txt", base / "starts.txt"
    log_ref_updates(remote, hook_log)
    places = layout(s, mode)
    options = ["--slots", str(s.slots)] if mode == "--slots" else []
    with GitDaemon(served) as daemon, contextlib.ExitStack() as stack:
        url = daemon.url("queue.git")
        if s.proxy:
            url = stack.enter_context(LatencyProxy(daemon.port, delay=delay)).url("queue.git")
        launch_wall = time.time()
        wall, finished, stats = run_workers(
            url, base / "workers", workers=len(places), budget=budget, command=task_command(starts, s.seconds),
            layout=places, options=options,
        )  # fmt: skip
    first, count, per_task, last_start = _starts(starts, launch_wall)
    machines = sorted({name.split(".")[0] for name, _ in places}, key=lambda n: int(n.split("-")[1]))
    steady = max(x["ended"] for x in stats) - min(x["started"] for x in stats) if stats else wall
    result = FleetResult(
        scenario=s, mode=mode, delay=delay if s.proxy else 0.0, wall=wall, finished=finished,
        first_run_all=max(first.get(n, float("inf")) for n in machines),
        first_run_any=min(first.values(), default=float("nan")), last_end=last_start + s.seconds,
        per_machine=[count.get(n, 0) for n in machines], pushes=read_pushes(hook_log),
        attempts=int(sum(x["pushes"] for x in stats)), rejected=int(sum(x["rejected_pushes"] for x in stats)),
        ran_twice=sum(1 for n in per_task.values() if n > 1), check=exactly_once(remote, ids, seed),
        steady=min(steady, wall) if steady > 0 else wall,
    )  # fmt: skip
    if not os.environ.get("BENCH_KEEP"):
        shutil.rmtree(base, ignore_errors=True)
    else:
        shutil.copytree(base, os.environ["BENCH_KEEP"], dirs_exist_ok=True, symlinks=True)
    return result


def run(root: Path, s: Scenario, *, delay: float, budget: float, mode: str | None = None) -> FleetResult:
    """Scenario ``s``; ``shared16`` first drains the same tasks with one worker, for its ratio.
    ``shared16`` is 16 worker processes (the issue's setting), whatever ``--slots`` can do."""
    mode = mode or slots_mode()
    if s.name != "shared16":
        return drain_once(root, s, mode=mode, delay=delay, budget=budget, label="fleet")
    mode = "processes"
    alone = drain_once(root, Scenario("shared16-1", 1, 1, s.tasks, 0.0, proxy=False), mode=mode, delay=delay,
                       budget=budget, label="one")  # fmt: skip
    result = drain_once(root, s, mode=mode, delay=delay, budget=budget, label="fleet")
    result.base_tasks_per_s = alone.tasks_per_s
    if not alone.ok:
        result.check.problems.append(f"one worker alone: {alone.check.summary()}, {alone.ran_twice} ran twice")
    return result


COLUMNS = ["scenario", "slots by", "efficiency (or vs 1 worker)", "all machines busy after", "branch pushes/min",
           "refs/gitqueue pushes/min", "all pushes/min", "rejected/task", "push attempts/task", "tasks per machine",
           "exactly once", "drain", "first task / last ends / last exit"]  # fmt: skip


def headline(r: FleetResult) -> str:
    if r.base_tasks_per_s is not None:
        ratio = r.tasks_per_s / r.base_tasks_per_s if r.base_tasks_per_s else float("nan")
        return f"{ratio:.2f}x ({r.tasks_per_s:.1f} vs {r.base_tasks_per_s:.1f} tasks/s)"
    return f"{r.efficiency:.2f}"


def row(r: FleetResult) -> list[object]:
    s, p = r.scenario, r.pushes
    done = "" if r.finished else " (timed out)"
    busy = f"{r.first_run_all:.1f} s" if r.first_run_all < float("inf") else f"never: {r.per_machine.count(0)} idle"
    total = f"{r.per_min(p.total):.1f}" + (f" (budget {s.push_budget})" if s.push_budget else "")
    once = r.check.summary() + (f"; {r.ran_twice} tasks' commands ran twice" if r.ran_twice else "")
    return [
        f"`{s.name}`: {s.describe}", r.mode, headline(r), busy, f"{r.per_min(p.branch):.1f}",
        f"{r.per_min(p.gitqueue):.1f}", total,
        r.rejected / s.tasks, r.attempts / s.tasks, r.spread, once, f"{r.wall:.1f}s{done}",
        f"{r.first_run_any:.1f} / {r.last_end:.1f} / {r.wall:.1f} s",
    ]  # fmt: skip


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--scenarios", default=None, help=f"comma-separated, of {','.join(SCENARIOS)} [16x1]")
    p.add_argument("--machines", type=int, help="a custom row instead: machines ...")
    p.add_argument("--slots", type=int, default=1, help="... slots per machine [1] ...")
    p.add_argument("--tasks", type=int, default=256, help="... tasks [256] ...")
    p.add_argument("--seconds", type=float, default=1.0, help="... each sleeping this long [1]")
    p.add_argument("--delay", type=float, default=0.040, help="one-way latency in seconds [0.040]")
    p.add_argument("--budget", type=float, default=400.0, help="seconds allowed per drain [400]")
    p.add_argument("--labtasker-venv", type=Path, help="also run Labtasker 2.8 (venv made here if missing)")
    return p.parse_args(argv)


def chosen(opts: argparse.Namespace) -> list[Scenario]:
    if opts.machines:
        return [Scenario("custom", opts.machines, opts.slots, opts.tasks, opts.seconds)]
    names = (opts.scenarios or ",".join(QUICK)).split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"python -m bench.fleet: unknown scenario {', '.join(unknown)} (of {', '.join(SCENARIOS)})")
    return [SCENARIOS[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    from bench.report import fmt

    opts = parse(argv)
    scenarios = chosen(opts)
    ok = True
    compile_gitqueue()
    with sandbox() as root:
        mode = slots_mode()
        print(" | ".join(COLUMNS))
        for s in scenarios:
            r = run(root, s, delay=opts.delay, budget=opts.budget, mode=mode)
            ok = ok and r.ok
            print(" | ".join(fmt(c) for c in row(r)), flush=True)
            if opts.labtasker_venv:
                from bench import labtasker_compare as lc

                lab = lc.fleet_row(opts.labtasker_venv, root, s, delay=opts.delay, budget=opts.budget)
                print(" | ".join(fmt(c) for c in lc.fleet_cells(lab, r)), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
