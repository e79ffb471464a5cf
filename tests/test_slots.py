"""One worker process, many slots: ``gitqueue work --slots N`` and ``--gpus``, with real processes.

Each test starts real ``python -m gitqueue work`` processes on a real bare remote and asserts on
what the remote holds afterwards (states, attempts, the branch's history, the lease refs) and on
what the experiments wrote. Nothing sleeps to wait: tests poll files or the remote until a deadline.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import pytest
import test_worker
from conftest import poll_until
from test_worker import Lab, WorkerProcess, attempt_summary
from typer.testing import CliRunner

from gitqueue import Queue, State
from gitqueue.cli import app
from gitqueue.errors import GitqueueError
from gitqueue.testing import GitDaemon
from gitqueue.worker import Options, Worker

# A stand-in experiment that appends "start|end <task> <time> <CUDA_VISIBLE_DEVICES>" lines to the
# file named by its first argument, sleeping its task's `s` seconds in between.
TIMED = r"""
import json, os, sys, time

task, args = os.environ["GITQUEUE_TASK_ID"], json.loads(os.environ["GITQUEUE_ARGS"])
gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
with open(sys.argv[1], "a") as out:
    out.write(f"start {task} {time.time()} {gpus}\n")
time.sleep(args.get("s", 0))
with open(sys.argv[1], "a") as out:
    out.write(f"end {task} {time.time()} {gpus}\n")
"""

make_lab, lab = test_worker.make_lab, test_worker.lab  # the worker tests' fixtures: a queue and its lab

Spans = dict[str, tuple[float, float, str]]


def timed_command(lab: Lab) -> tuple[list[str], Path]:
    script, times = lab.tmp / "timed.py", lab.tmp / "times.txt"
    script.write_text(TIMED)
    return [sys.executable, str(script), str(times)], times


def spans(times: Path) -> Spans:
    """Task id -> (start, end, its GPUs), asserting each task started and ended exactly once."""
    starts: dict[str, list[tuple[float, str]]] = {}
    ends: dict[str, list[float]] = {}
    for line in times.read_text().splitlines():
        kind, task, when, gpus = line.split()
        if kind == "start":
            starts.setdefault(task, []).append((float(when), gpus))
        else:
            ends.setdefault(task, []).append(float(when))
    assert all(len(v) == 1 for v in starts.values()), f"a task ran twice: {starts}"
    assert starts.keys() == ends.keys(), f"runs that never ended: {starts.keys() - ends.keys()}"
    return {task: (start[0][0], ends[task][0], start[0][1]) for task, start in starts.items()}


def most_at_once(runs: Spans) -> int:
    """The most runs under way at one moment."""
    events = sorted([(s, 1) for s, _, _ in runs.values()] + [(e, -1) for _, e, _ in runs.values()])
    now = best = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best


def stats(path: Path) -> dict[str, object]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def start_with_stats(lab: Lab, name: str, *flags: str, command: list[str] | None = None) -> tuple[WorkerProcess, Path]:
    """A worker whose counters go to a stats file (GITQUEUE_STATS_FILE, as bench/ reads them)."""
    path = lab.tmp / f"{name}.stats.json"
    os.environ["GITQUEUE_STATS_FILE"] = str(path)
    try:
        worker = lab.start(name, *flags, command=command)
    finally:
        del os.environ["GITQUEUE_STATS_FILE"]
    return worker, path


def test_four_slots_run_four_tasks_at_once_each_exactly_once(lab: Lab) -> None:
    ids = lab.submit(*({"id": f"t{i}", "args": {"s": 1.5}} for i in range(8)))
    command, times = timed_command(lab)
    worker = lab.start("w1", "--slots", "4", command=command)
    assert worker.wait(timeout=60) == 0, worker.stderr
    runs = spans(times)
    assert sorted(runs) == sorted(ids)
    assert most_at_once(runs) == 4
    assert lab.remote.states() == {i: "done" for i in ids}
    for task_id in ids:
        assert attempt_summary(lab.task(task_id)) == [(1, "done", "w1")]
        assert (worker.log_dir / f"{task_id}.1.log").exists()  # each run keeps its own log


def test_one_commit_per_cycle_reports_several_runs_and_claims_the_next(lab: Lab) -> None:
    ids = lab.submit(*({"id": f"t{i:02}", "args": {"s": 0.5}} for i in range(16)))
    before = lab.remote.count()
    command, times = timed_command(lab)
    worker, stats_file = start_with_stats(lab, "w1", "--slots", "4", command=command)
    assert worker.wait(timeout=90) == 0, worker.stderr
    assert sorted(spans(times)) == sorted(ids)
    drained = lab.remote.log("%B")[before:]
    for task_id in ids:  # each state change is there, once
        assert sum(f"claim {task_id} by w1 (attempt 1)" in m for m in drained) == 1, drained
        assert sum(f"done {task_id} by w1 (attempt 1)" in m for m in drained) == 1, drained
    both = [m for m in drained if m.count("done ") >= 2 and m.count("claim ") >= 2]
    assert both, f"no commit reports several runs and claims several: {drained}"
    assert len(drained) < len(ids)  # far fewer pushes than one per claim plus one per finish
    assert stats(stats_file)["pushes"] == len(drained)


def test_one_heartbeat_push_renews_every_runs_lease_ref(lab: Lab) -> None:
    ids = lab.submit(*({"id": f"h{i}", "args": {"hold": [1], "result": "none"}, "lease": 3} for i in range(3)))
    worker, stats_file = start_with_stats(lab, "w1", "--slots", "3")
    poll_until(lambda: all(lab.started(i, 1) for i in ids), what="three runs to start")

    def chains() -> dict[str, int]:
        found = {ref.rsplit("/", 1)[1]: ref for ref in lab.lease_refs()}
        return {token: int(lab.remote.git("rev-list", "--count", ref)) for token, ref in found.items()}

    seen = poll_until(lambda: (c := chains()) and len(c) == 3 and min(c.values()) >= 3 and c, what="3 heartbeats each")
    ref = lab.lease_refs()[0]
    message = lab.remote.git("log", "-1", "--format=%B", ref)
    assert "Gitqueue-Worker: w1" in message and "Gitqueue-Slots: 3" in message
    for task_id in ids:
        lab.release(task_id, 1)
    assert worker.wait(timeout=30) == 0, worker.stderr
    assert lab.remote.states() == {i: "done" for i in ids}
    assert lab.lease_refs() == []  # each finish deleted its run's lease ref
    pushes = stats(stats_file)["heartbeat_pushes"]
    assert isinstance(pushes, int) and 3 <= pushes < sum(seen.values())  # a push renewed several refs


def test_cancelling_one_slots_task_stops_only_that_run(lab: Lab) -> None:
    lab.submit({"id": "a", "args": {"hold": [1]}, "lease": 3}, {"id": "b", "args": {"hold": [1]}, "lease": 3})
    worker = lab.start("w1", "--slots", "2", "--grace", "3")
    poll_until(lambda: lab.started("a", 1) and lab.started("b", 1), what="both runs to start")
    result = CliRunner().invoke(app, ["cancel", "a", "--queue", lab.url])
    assert result.exit_code == 0, result.output
    assert poll_until(lambda: lab.stopped_by("a", 1), what="a's experiment to stop") == signal.SIGTERM
    assert lab.stopped_by("b", 1) is None
    assert lab.remote.states()["b"] == "running"
    lab.release("b", 1)
    assert worker.wait(timeout=30) == 0, worker.stderr
    assert lab.remote.states() == {"a": "cancelled", "b": "done"}
    assert "a: cancelled; run stopped, nothing reported" in worker.stderr
    assert attempt_summary(lab.task("b")) == [(1, "done", "w1")]
    assert lab.lease_refs() == []


def test_sigterm_returns_every_run_and_every_held_claim_unspent(lab: Lab) -> None:
    running = [f"r{i}" for i in range(3)]
    lab.submit(*({"id": i, "args": {"hold": [1]}, "lease": 3, "priority": 1} for i in running))
    lab.submit({"id": "later1", "args": {}}, {"id": "later2", "args": {}})
    worker = lab.start("w1", "--slots", "3", "--grace", "5")
    poll_until(lambda: all(lab.started(i, 1) for i in running), what="three runs to start")
    poll_until(lambda: len(lab.lease_refs()) == 3, what="their heartbeats")
    worker.send(signal.SIGTERM)
    assert worker.wait(timeout=30) == 128 + signal.SIGTERM, worker.stderr
    assert all(lab.stopped_by(i, 1) == signal.SIGTERM for i in running)
    assert set(lab.remote.states().values()) == {"pending"}
    for task_id in running:
        task = lab.task(task_id)
        assert attempt_summary(task) == [(1, "interrupted", "w1")] and task.attempts_spent == 0
    assert lab.lease_refs() == []


def test_gpus_give_each_run_its_own_and_a_task_asking_two_gets_both(lab: Lab) -> None:
    ones = lab.submit(*({"id": f"g{i}", "args": {"s": 1}, "priority": 1} for i in range(4)))
    lab.submit({"id": "pair", "args": {"s": 0.5}, "gpus": 2}, {"id": "big", "args": {}, "gpus": 3})
    command, times = timed_command(lab)
    worker = lab.start("w1", "--gpus", "0,1", command=command)
    assert worker.wait(timeout=60) == 0, worker.stderr
    runs = spans(times)
    assert sorted(runs) == sorted([*ones, "pair"])
    assert runs["pair"][2] == "0,1"
    assert {runs[i][2] for i in ones} == {"0", "1"}
    assert most_at_once(runs) == 2
    for a, b in combinations(runs.values(), 2):
        if a[0] < b[1] and b[0] < a[1]:  # at the same time: never a GPU in common
            assert not set(a[2].split(",")) & set(b[2].split(",")), (a, b)
    assert lab.remote.states()["big"] == "pending"  # more GPUs than the worker owns: never claimed
    assert worker.stderr.count("asks for gpus: 3, but this worker has 2") == 1


def test_two_workers_with_slots_racing_on_one_queue_drain_it_exactly_once(
    make_lab: Callable[[str], Lab], bare_remote: Path
) -> None:
    with GitDaemon(bare_remote.parent) as daemon:
        lab = make_lab(daemon.url(bare_remote.name))
        ids = lab.submit(*({"id": f"t{i:02}", "args": {"s": 0.1}} for i in range(60)))
        command, times = timed_command(lab)
        workers = [lab.start(name, "--slots", "3", command=command) for name in ("w1", "w2")]
        for worker in workers:
            assert worker.wait(timeout=120) == 0, worker.stderr
    assert sorted(spans(times)) == sorted(ids)  # each ran exactly once
    assert lab.remote.states() == {i: "done" for i in ids}
    attempts = [attempt_summary(lab.task(i)) for i in ids]
    assert all(len(a) == 1 and a[0][1] == "done" for a in attempts), attempts
    assert {a[0][2] for a in attempts} == {"w1", "w2"}


def test_a_slot_worker_that_lost_its_last_race_claims_again_before_calling_the_queue_empty(
    queue: Queue, tmp_path: Path
) -> None:
    """Empty-handed, a worker claims (patiently) before it decides nothing is left: a one-try
    push lost to a person's edit, or a claim cut to a fair share, does not end it early."""
    ids = queue.submit([{"args": {"i": i}} for i in range(3)])
    options = Options(command=["true"], slots=2, log_dir=tmp_path / "logs")
    worker = Worker(queue, options, log=io.StringIO())
    worker.hand.pace.retry_at = time.monotonic() + 3600  # as after a lost one-try push
    worker.hand.pace.drained = True
    assert worker.run() == 0
    assert {t.id: t.state for t in queue.tasks()} == {i: State.DONE for i in ids}


def test_a_sigkilled_slot_worker_is_recovered_at_once_on_its_machine(lab: Lab) -> None:
    """Its note in the cache names every run it held: the started ones come back spent, the
    claimed-ahead one unspent, and each experiment dies with the worker."""
    ran = ["a", "b"]
    lab.submit(*({"id": i, "args": {"hold": [1]}, "lease": 600, "priority": 1} for i in ran), {"id": "c", "args": {}})
    w1 = lab.start("w1", "--slots", "2")
    poll_until(lambda: all(lab.started(i, 1) for i in ran), what="both runs to start")
    poll_until(lambda: lab.remote.states()["c"] == "running", what="w1 to claim c ahead")
    w1.send(signal.SIGKILL)
    assert w1.wait() == -signal.SIGKILL
    for task_id in ran:
        assert poll_until(lambda i=task_id: lab.stopped_by(i, 1), what="the orphaned run to stop") == signal.SIGTERM

    result = CliRunner().invoke(app, ["reap", "--queue", lab.url])
    assert result.exit_code == 0, result.output
    assert set(lab.remote.states().values()) == {"pending"}
    for task_id in ran:
        task = lab.task(task_id)
        assert attempt_summary(task) == [(1, "reaped", "w1")] and task.attempts_spent == 1
    assert lab.task("c").attempts_spent == 0  # claimed ahead, never started


def test_a_runner_of_ones_own_is_refused_more_than_one_slot(queue: Queue, tmp_path: Path) -> None:
    with pytest.raises(GitqueueError, match="runs one task at a time"):
        Worker(queue, Options(slots=2, log_dir=tmp_path), runner=lambda run, watch: None)
    with pytest.raises(GitqueueError, match="runs one task at a time"):
        Worker(queue, Options(gpus=("0",), log_dir=tmp_path), runner=lambda run, watch: None)


def test_a_long_run_gives_back_what_waits_unstarted_and_each_slot_keeps_its_time_limit(lab: Lab) -> None:
    """Claimed ahead, c and d wait while a and b run long: at the first heartbeat they go back
    to the queue, no attempt spent. A task's own timeout stops its run only."""
    lab.submit(
        {"id": "a", "args": {"hold": [1]}, "lease": 3, "priority": 2, "timeout": 2},
        {"id": "b", "args": {"hold": [1]}, "lease": 3, "priority": 2},
        {"id": "c", "args": {}, "priority": 1},
        {"id": "d", "args": {}, "priority": 1},
    )
    worker = lab.start("w1", "--slots", "2", "--grace", "2", "--max-failures", "0")
    poll_until(lambda: lab.started("a", 1) and lab.started("b", 1), what="a and b to start")
    poll_until(lambda: any("release c" in m for m in lab.remote.log("%B")), what="c to be given back")
    assert not lab.started("c", 1) and not lab.started("d", 1)
    assert poll_until(lambda: lab.stopped_by("a", 1), what="a's time limit") == signal.SIGTERM
    assert lab.stopped_by("b", 1) is None
    lab.release("b", 1)
    assert worker.wait(timeout=30) == 7, worker.stderr  # a task it ran failed (timed out)
    states = lab.remote.states()
    assert states["b"] == states["c"] == states["d"] == "done"
    assert attempt_summary(lab.task("a"))[0][1] == "timeout"
    for task_id in ("c", "d"):  # given back unstarted, then run once
        assert [outcome for _, outcome, _ in attempt_summary(lab.task(task_id))] in (["done"], ["released", "done"])
