"""(c) draining trivial tasks with N ``gitqueue work -- true`` processes, checked exactly-once.

Each worker is the installed CLI in its own process group, with its own cache folder (as
on separate machines) or a shared one (as on one machine, where workers take turns), and
GITQUEUE_STATS_FILE set so that it writes its push counters at exit. Landed commits are
counted on the remote with ``git log``; the exactly-once check reads the remote's tree
and history (bench/checks.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.checks import Check, exactly_once
from bench.env import Transport, gitqueue_command, seed_queue


@dataclass
class DrainResult:
    transport: str
    workers: int
    tasks: int
    wall: float  # launch of the first worker to exit of the last
    steady: float  # first worker ready (queue opened) to last worker done
    finished: bool  # all workers exited within the budget
    pushes: int  # push attempts, from the workers' stats files
    rejected: int
    stats_files: int
    check: Check
    shared_cache: bool = False
    backoff: float = 0.0  # seconds the workers slept after lost races, summed

    @property
    def caches(self) -> str:
        return "shared" if self.shared_cache else "own"

    @property
    def backoff_share(self) -> float:
        """Of all the workers' time, the part spent backing off after lost races."""
        return self.backoff / (self.workers * self.steady) if self.steady > 0 else float("nan")

    @property
    def tasks_per_s(self) -> float:
        return self.check.done / self.steady if self.steady > 0 else float("nan")

    @property
    def wall_tasks_per_s(self) -> float:
        return self.check.done / self.wall if self.wall > 0 else float("nan")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM then SIGKILL every worker's process group that is still running."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, sig)
        deadline = time.monotonic() + grace
        for p in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))


def run_workers(
    url: str,
    folder: Path,
    *,
    workers: int,
    budget: float,
    shared_cache: bool = False,
    command: list[str] | None = None,
    layout: list[tuple[str, str]] | None = None,
    options: list[str] | None = None,
) -> tuple[float, bool, list[dict[str, float]]]:
    """Start ``workers`` ``gitqueue work`` processes and wait (at most ``budget`` s).

    ``layout`` names each worker and its cache folder (worker i: ``bench-i`` and a cache of its
    own, or one shared cache, by default); ``options`` go to every ``gitqueue work`` before ``--``.
    Returns (wall seconds, all exited in time, the workers' stats).
    """
    if layout is None:
        layout = [(f"bench-{i}", "cache" if shared_cache else f"cache-{i}") for i in range(workers)]
    folder.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    stats_paths = [folder / f"stats-{i}.json" for i in range(workers)]
    start = time.monotonic()
    try:
        for i in range(workers):
            env = {
                **os.environ,
                "GITQUEUE_STATS_FILE": str(stats_paths[i]),
                "GITQUEUE_CACHE": str(folder / layout[i][1]),
            }
            log = open(folder / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed below
            argv = [*gitqueue_command(), "work", "--queue", url, "--worker", layout[i][0], *(options or [])]
            argv += ["--log-dir", str(folder / "logs"), "--", *(command or ["true"])]
            try:
                procs.append(
                    subprocess.Popen(
                        argv,
                        cwd=folder,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            finally:
                log.close()
        deadline = start + budget
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.02)
        finished = all(p.poll() is not None for p in procs)
        wall = time.monotonic() - start
    finally:
        _stop(procs)
    stats = []
    for path in stats_paths:
        with contextlib.suppress(OSError, ValueError):
            stats.append(json.loads(path.read_text()))
    return wall, finished, stats


def drain(
    t: Transport, root: Path, *, workers: int, tasks: int, budget: float, shared_cache: bool = False
) -> DrainResult:
    remote = t.new_remote(f"drain-{workers}")
    folder = root / f"drain-{t.kind}-{workers}"
    ids, seed = seed_queue(remote.url, tasks, folder / "seed")
    wall, finished, stats = run_workers(remote.url, folder, workers=workers, budget=budget, shared_cache=shared_cache)
    steady = max(s["ended"] for s in stats) - min(s["started"] for s in stats) if stats else wall
    steady = min(steady, wall) if steady > 0 else wall
    check = exactly_once(remote.path, ids, seed)
    for done_with in (folder, remote.path):  # caches, logs, rejected pushes: tens of thousands of files
        shutil.rmtree(done_with, ignore_errors=True)
    return DrainResult(
        transport=t.kind,
        workers=workers,
        tasks=tasks,
        wall=wall,
        steady=steady,
        finished=finished,
        pushes=int(sum(s["pushes"] for s in stats)),
        rejected=int(sum(s["rejected_pushes"] for s in stats)),
        stats_files=len(stats),
        check=check,
        shared_cache=shared_cache,
        backoff=sum(s.get("seconds", {}).get("backoff", 0.0) for s in stats),
    )
