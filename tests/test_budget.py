"""``push_budget`` holds for a fleet of real workers: every push a worker makes (branch, lease
and request refs) counts, on the server, against the budget over the run's own duration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import RemoteRepo

from gitqueue import Queue
from gitqueue.config import PushBudget
from gitqueue.task import State
from gitqueue.testing import log_ref_updates, ref_updates

SETTINGS = "format: 1\ndefaults: {priority: 0, max_attempts: 3, lease: 600}\npush_budget: 60/min\n"
BUDGET = PushBudget(60, 60.0)


def start_machine(remote: Path, folder: Path, name: str) -> subprocess.Popen[bytes]:
    """One machine: a ``gitqueue work`` process with a cache of its own, running ``sleep``."""
    env = {**os.environ, "GITQUEUE_CACHE": str(folder / "cache")}
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", str(remote), "--worker", name]
    argv += ["--log-dir", str(folder / "logs"), "--", "sleep", "0.3"]
    folder.mkdir(parents=True)
    log = open(folder / "worker.log", "wb")  # noqa: SIM115 - closed below, once the process has it
    try:
        return subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def test_a_fleet_of_workers_keeps_within_its_push_budget_with_pushes_of_every_kind(
    queue: Queue, bare_remote: Path, tmp_path: Path
) -> None:
    """Three machines start together on 30 short tasks with ``push_budget: 60/min``: each
    learns the budget before its first push, and the others as they show up; none pushes a
    request for work. On the server, all the pushes between the first and the last fit the
    budget over that time, plus the one first push each machine makes before it has seen any
    other."""
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": SETTINGS})
    ids = queue.submit([{"args": {"n": n}} for n in range(30)])
    log = tmp_path / "ref-updates.log"
    log_ref_updates(bare_remote, log)  # from here on: the workers' pushes only
    machines = [start_machine(bare_remote, tmp_path / f"box-{n}", f"box-{n}") for n in range(3)]
    for n, proc in enumerate(machines):
        assert proc.wait(timeout=300) == 0, (tmp_path / f"box-{n}" / "worker.log").read_text()
    assert all(queue.get(i).state is State.DONE for i in ids)
    ran = {(queue.get(i).attempts[-1] or {}).get("worker") for i in ids}
    assert ran <= {"box-0", "box-1", "box-2"} and len(ran) >= 2, ran  # a fleet, not one machine
    pushes: dict[str, tuple[float, set[str]]] = {}
    for when, pid, ref in ref_updates(log):
        first, refs = pushes.get(pid, (when, set()))
        pushes[pid] = (min(first, when), refs | {ref})
    times = sorted(when for when, _ in pushes.values())
    kinds = sorted(
        {
            ref.split("/")[2] if ref.startswith("refs/gitqueue/") else "branch"
            for _, refs in pushes.values()
            for ref in refs
        }
    )
    took = times[-1] - times[0]
    allowed = BUDGET.rate * took + len(machines)
    assert len(pushes) <= allowed, (len(pushes), f"{took:.1f}s", kinds)
    assert "requests" not in kinds  # under a budget a lost race asks nobody: a request is a push too
