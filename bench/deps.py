"""(g) Claiming with ``after:`` dependencies, beside claiming without them, at the same sizes.

For each size N, two queues of N pending tasks are built on one remote kind (path):

- ``plain``: no task has ``after``;
- ``half waiting``: a ``gate`` task is claimed first and stays running, and the first N/2
  tasks in claim order have ``after: [gate]``, so that every claim passes over N/2 waiting
  tasks before it finds one to take (the worst place for them to be).

A warm worker then claims and finishes tasks one by one; the figure is the median of a
claim, of a finish plus the next claim in one commit, and the raw-git cycle at that size
(as in (d)) measured in the same run. Beside them, in-process and so less moved by the
machine's load: how long choosing the task takes on one fetched view, as claiming does it
and by passing over each waiting task one by one. ``python -m bench.deps --sizes 1000,100000``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.env import machine, sandbox, transport
from bench.rawgit import run_cycles
from bench.report import median, ms
from bench.scale import claim_cycles


@dataclass
class DepsResult:
    tasks: int
    layout: str
    claim: float
    finish_claim: float
    claims: int
    raw_cycle: float
    choose: float  # in-process: pick the best claimable task on a fetched view (no push)
    choose_scanning: float  # the same, looking at every waiting task on the way (how it was first written)


def build(url: str, folder: Path, *, tasks: int, waiting: bool) -> None:
    """The queue: N tasks in one submit (``gate`` first, claimed and left running if ``waiting``)."""
    from gitqueue import Queue

    specs = [{"id": f"{i:07d}-t", "args": {"i": i}} for i in range(tasks)]
    if waiting:
        specs.insert(0, {"id": "0000000-gate", "args": {"gate": True}, "priority": 1})
        for spec in specs[1 : tasks // 2 + 1]:
            spec["after"] = ["0000000-gate"]
    folder.mkdir(parents=True, exist_ok=True)
    with Queue.init(url, folder=folder, cache=folder / "seed-cache", worker="bench-seed") as q:
        q.submit(specs)
        if waiting:
            gate = q.claim()
            assert gate is not None and gate.id == "0000000-gate", gate
    shutil.rmtree(folder / "seed-cache", ignore_errors=True)


def measure(url: str, folder: Path, *, tasks: int, layout: str, claims: int, budget: float) -> DepsResult:
    from gitqueue import Queue
    from gitqueue.queue import Run

    def not_waiting(run: Run) -> None:
        if layout != "plain":
            assert "after" not in run.task.text, f"claimed {run.id}, which waits on the gate"

    with Queue(url, worker="bench-deps", cache=folder / "cache") as q:
        run = q.claim()  # first claim: the fresh cache reads every summary once
        claim_times, cycle_times = claim_cycles(q, run, claims=claims, budget=budget, check=not_waiting)
        choose, scanning = choosing(q)
    raw = run_cycles(url, folder / "raw.git", how="mktree", cycles=10, budget=budget / 2)
    return DepsResult(
        tasks, layout, median(claim_times), median(cycle_times), len(claim_times), median(raw.cycle), choose, scanning
    )


def choosing(q: object, repeats: int = 7) -> tuple[float, float]:
    """Median seconds to find the best claimable task on one fetched view: as claiming does,
    and by passing over each waiting task one by one (the cost the per-folder memo avoids)."""
    import heapq

    from gitqueue.queue import pending_in_order

    snap = q.snapshot()  # type: ignore[attr-defined]
    fast, slow = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        first = next(pending_in_order(snap, {}), None)
        fast.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        states, summaries = snap.states(), snap.cache.summaries
        found = None
        for _rank, _order, entry in heapq.merge(*snap.pending_groups(), key=lambda c: (c[0], c[1])):
            summary = summaries.get(entry)
            if not summary.after or states.ready(summary.after):
                found = entry
                break
        slow.append(time.perf_counter() - t0)
        assert first is not None and found is not None and found.id == first.id, (first, found)
    return median(fast), median(slow)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.deps", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,100000", help="queue sizes [1000,100000]")
    p.add_argument("--claims", type=int, default=20, help="claims measured per queue [20]")
    p.add_argument("--out", type=Path, default=None, help="also write the Markdown table here")
    opts = p.parse_args(argv)
    results: list[DepsResult] = []
    info = machine()
    with sandbox() as root, transport("path", root / "srv") as t:
        for size in (int(s) for s in opts.sizes.split(",")):
            for layout in ("plain", "half waiting"):
                remote = t.new_remote(f"deps-{size}")
                folder = root / f"deps-{size}-{layout.replace(' ', '-')}"
                build(remote.url, folder, tasks=size, waiting=layout != "plain")
                results.append(measure(remote.url, folder, tasks=size, layout=layout, claims=opts.claims, budget=120))
                shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"# (g) claiming with after: dependencies ({info['date']}, {info['nproc']} cores, {info['cpu']}, "
        f"git {info['git']}, commit {info['commit']})",
        "",
        "| tasks | layout | claim | finish + claim | raw git cycle | choose (in-process) | choose, scanning "
        "each waiting task | claims |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r.tasks:,} | {r.layout} | {ms(r.claim)} | {ms(r.finish_claim)} | {ms(r.raw_cycle)} | {ms(r.choose)} | "
        f"{ms(r.choose_scanning)} | {r.claims} |"
        for r in results
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        opts.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
