"""(i) A fleet's launch: N ``gitqueue work`` processes started at once, each with a fresh cache (issue 12).

The forge is ``git daemon`` behind bench/proxy.py's latency proxy (40 ms each way by default); the
queue holds N*2 trivial tasks, each noting when it started. Per process: its CPU (user + system,
its git children included, from ``os.wait4``'s rusage), the seconds from the launch to its first
task, and the fetches and pushes its GITQUEUE_STATS_FILE counts. Beside them, measured the same way
in the same run, the machine's own floors for N processes launched at once: ``python -c pass``,
``python -c 'import gitqueue.cli'`` and ``git ls-remote`` through the same proxy. The launch can be
no faster than Python's start plus the import plus one round trip to the forge.

Run alone: ``python -m bench.startup [--workers 16] [--delay 0.040]`` (well under a minute), or as
part (i) of ``python -m bench --parts i``. Wall-clock figures: on a shared machine run it under the
bench lock (bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.drain import _stop
from bench.env import gitqueue_command, sandbox, seed_queue
from bench.fleet import _starts, task_command
from bench.proxy import LatencyProxy
from bench.report import Report
from gitqueue.testing import GitDaemon, make_bare_repo


@dataclass
class Launch:
    """N processes started at once: each one's CPU seconds and when it ended (seconds after the launch)."""

    what: str
    cpu: list[float] = field(default_factory=list)
    ended: list[float] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)

    @property
    def wall(self) -> float:
        """From the launch until the last process ended."""
        return max(self.ended) if self.ended else float("nan")


@dataclass
class StartupResult:
    workers: int
    delay: float
    launch: Launch
    first_task: list[float]  # per worker: seconds from the launch to its first task (inf: none)
    stats: list[dict[str, float]]
    floors: list[Launch]
    bytecode: str  # whether Python reads and writes bytecode caches here (it changes the import's cost)


def launch_all(what: str, argvs: list[list[str]], *, envs: list[dict[str, str]], cwd: Path, budget: float) -> Launch:
    """Start every argv at once, then reap each with its rusage (its children included)."""
    procs: list[subprocess.Popen[bytes]] = []
    result = Launch(what)
    started = time.monotonic()
    try:
        for argv, env in zip(argvs, envs, strict=True):
            procs.append(
                subprocess.Popen(
                    argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True,
                )
            )  # fmt: skip
        result.cpu, result.ended = [float("nan")] * len(procs), [float("inf")] * len(procs)
        result.codes = [-1] * len(procs)
        waiting = dict(enumerate(procs))
        deadline = started + budget
        while waiting and time.monotonic() < deadline:
            for i, proc in list(waiting.items()):
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # this one only: not the server's
                if pid == 0:
                    continue
                del waiting[i]
                proc.returncode = result.codes[i] = os.waitstatus_to_exitcode(status)
                result.cpu[i] = usage.ru_utime + usage.ru_stime
                result.ended[i] = time.monotonic() - started
            time.sleep(0.002)
    finally:
        _stop([p for p in procs if p.returncode is None])
    return result


def _bytecode() -> str:
    import gitqueue

    cached = any((Path(gitqueue.__file__).parent / "__pycache__").glob("cli.*.pyc"))
    writes = "off (PYTHONDONTWRITEBYTECODE)" if sys.flags.dont_write_bytecode else "on"
    return f"bytecode writing {writes}; gitqueue's cached bytecode {'present' if cached else 'absent'}"


def floors(n: int, *, url: str, cwd: Path, budget: float) -> list[Launch]:
    """The machine's own costs of N at once: Python's start, gitqueue's import, one ls-remote through the proxy."""
    env = dict(os.environ)
    runs = [
        ("`python -c pass`", [sys.executable, "-c", "pass"]),
        ("`python -c 'import gitqueue.cli'`", [sys.executable, "-c", "import gitqueue.cli"]),
        ("`git ls-remote` through the proxy", ["git", "ls-remote", url, "HEAD"]),
    ]
    return [launch_all(what, [argv] * n, envs=[env] * n, cwd=cwd, budget=budget) for what, argv in runs]


def measure(root: Path, *, workers: int = 16, delay: float = 0.040, budget: float = 60.0) -> StartupResult:
    """Seed N*2 tasks, launch N workers at once behind the proxy, then the floors on the same proxy."""
    served = root / "startup" / "srv"
    remote = make_bare_repo(served / "queue.git")
    seed_queue(str(remote), workers * 2, root / "startup" / "seed")  # by path: not measured
    folder = root / "startup" / "workers"
    folder.mkdir(parents=True)
    starts = folder / "starts.txt"
    with GitDaemon(served) as daemon, LatencyProxy(daemon.port, delay=delay) as proxy:
        url = proxy.url("queue.git")
        argvs, envs = [], []
        for i in range(workers):
            argv = [*gitqueue_command(), "work", "--queue", url, "--worker", f"bench-{i}", "--log-dir", str(folder)]
            argv += ["--max-tasks", "2"]  # two each: the first to start cannot take every task in a batch
            argvs.append([*argv, "--", *task_command(starts, 0)])
            stats = folder / f"stats-{i}.json"
            envs.append({**os.environ, "GITQUEUE_CACHE": str(folder / f"cache-{i}"), "GITQUEUE_STATS_FILE": str(stats)})
        launch_wall = time.time()
        launch = launch_all("`gitqueue work`", argvs, envs=envs, cwd=folder, budget=budget)
        first, _, _, _ = _starts(starts, launch_wall)
        found = floors(workers, url=url, cwd=folder, budget=budget)
    stats = []
    for i in range(workers):
        try:
            stats.append(json.loads((folder / f"stats-{i}.json").read_text()))
        except (OSError, ValueError):
            stats.append({})
    return StartupResult(
        workers=workers, delay=delay, launch=launch,
        first_task=[first.get(f"bench-{i}", float("inf")) for i in range(workers)],
        stats=stats, floors=found, bytecode=_bytecode(),
    )  # fmt: skip


def _secs(values: list[float]) -> str:
    finite = [v for v in values if v != float("inf")]
    if not finite:
        return "-"
    return f"max {max(finite):.2f} s, median {statistics.median(finite):.2f} s"


def add_sections(report: Report, r: StartupResult) -> None:
    """The figures: one row per worker, then the launch beside the machine's floors."""
    per = report.section(
        f"(i) {r.workers} `gitqueue work` launched at once, fresh caches, {2 * r.workers} trivial tasks, "
        f"`git daemon` behind {r.delay * 2000:.0f} ms round trips",
        ["worker", "CPU (with its git)", "launch → first task", "fetches", "pushes", "exit"],
    )
    for i in range(r.workers):
        first, s = r.first_task[i], r.stats[i]
        shown = "never" if first == float("inf") else f"{first:.2f} s"
        per.add(f"bench-{i}", f"{r.launch.cpu[i]:.3f} s", shown, s.get("fetches"), s.get("pushes"), r.launch.codes[i])
    floor = report.section(f"(i) The same launch beside {r.workers} of the machine's floors at once",
                           ["N at once", "CPU per process (median)", "all ended after"])  # fmt: skip
    floor.add("`gitqueue work --max-tasks 2` (two trivial tasks each)", f"{statistics.median(r.launch.cpu):.3f} s",
              f"{r.launch.wall:.2f} s")  # fmt: skip
    for f in r.floors:
        floor.add(f.what, f"{statistics.median(f.cpu):.3f} s", f"{f.wall:.2f} s")
    never = sum(v == float("inf") for v in r.first_task)
    floor.notes.append(
        f"Launch → first task: {_secs(r.first_task)}; {never} of {r.workers} never ran one. The floor for a "
        f"first task (N pythons importing gitqueue.cli at once, then one round trip of N at once): "
        f"{floor_seconds(r):.2f} s. CPU from os.wait4 (user + system, git children included). {r.bytecode}."
    )


def floor_seconds(r: StartupResult) -> float:
    """How soon the last of N could start a task at best: the import of N at once, then one ls-remote of N."""
    return r.floors[1].wall + r.floors[2].wall


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--workers", type=int, default=16, help="processes launched at once [16]")
    p.add_argument("--delay", type=float, default=0.040, help="one-way latency of the forge, seconds [0.040]")
    p.add_argument("--budget", type=float, default=60.0, help="seconds allowed per launch [60]")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    with sandbox() as root:
        r = measure(root, workers=opts.workers, delay=opts.delay, budget=opts.budget)
    report = Report(machine={}, command="")
    add_sections(report, r)
    print("\n".join(section.markdown() for section in report.sections))
    return 0 if all(code == 0 for code in r.launch.codes) else 1


if __name__ == "__main__":
    sys.exit(main())
