"""A dead worker's tasks come back at once when it died on this machine, and only a run that
started spends an attempt.

Real ``gitqueue work`` processes killed with SIGKILL, a real ``gitqueue reap``; leases are
long (10 minutes), so anything that comes back within the test came back because its worker's
process is known to be gone, not because a lease ran out.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import test_worker
from conftest import poll_until
from test_worker import Lab, attempt_summary

from gitqueue import Queue, State

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")

make_lab, lab = test_worker.make_lab, test_worker.lab  # the fixtures of test_worker's lab
LONG = 600  # seconds: no lease runs out during a test


def gitqueue(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "gitqueue", *args, "--queue", lab.url]
    return subprocess.run(argv, capture_output=True, text=True, cwd=lab.tmp / "work", timeout=120)


def kill_holding_a_batch(lab: Lab) -> list[str]:
    """Start a worker, let it claim a batch whose first run holds, SIGKILL it; the batch's ids."""
    lab.submit({"id": "a-warmup", "args": {}, "priority": 9, "lease": LONG})  # short: the next claims batch
    lab.submit({"id": "b-holds", "args": {"hold": [1]}, "priority": 8, "lease": LONG})
    lab.submit(*({"id": f"c-{i}", "args": {}, "lease": LONG} for i in range(4)))
    w1 = lab.start("w1")
    poll_until(lambda: lab.started("b-holds", 1), what="the held run to start")
    w1.send(signal.SIGKILL)
    assert w1.wait() == -signal.SIGKILL
    held = [task_id for task_id in ("b-holds", *(f"c-{i}" for i in range(4))) if lab.task(task_id).run]
    assert {lab.task(task_id).run["worker"] for task_id in held} == {"w1"}, "one batch, all w1's"
    assert held[0] == "b-holds" and len(held) >= 2, "a run under way and claims never started"
    return held


def test_gitqueue_reap_returns_a_sigkilled_workers_batch_at_once(lab: Lab) -> None:
    batch = kill_holding_a_batch(lab)

    said = gitqueue(lab, "reap", "--format", "json")
    assert said.returncode == 0, said.stderr
    report = json.loads(said.stdout)
    reaped = {r["id"]: r for r in report["reaped"]}
    assert set(reaped) == set(batch) and report["running"] == []
    assert reaped["b-holds"]["spent"] is True and reaped["b-holds"]["worker"] == "w1"
    assert reaped["b-holds"]["reason"] == "worker w1 is gone: its process on this machine ended"
    never_started = batch[1:]  # how many claims the batch took depends on the warm-up's time
    assert [reaped[task_id]["spent"] for task_id in never_started] == [False] * len(never_started)

    # The started run spent its attempt; the claims never started spent none.
    assert attempt_summary(lab.task("b-holds")) == [(1, "reaped", "w1")]
    for i in range(4):
        task = lab.task(f"c-{i}")
        assert task.state is State.PENDING and task.attempts == [] and task.next_attempt == 1
        if f"c-{i}" in never_started:
            assert f"reap c-{i} by w1 (attempt 1): never started, no attempt spent" in lab.remote.log("%B")[-1]
    assert lab.lease_refs() == []
    assert list((lab.tmp / "cache" / "runs" / "workers").glob("*.json")) == [], "the dead worker's note is dropped"

    again = gitqueue(lab, "reap")
    assert again.stdout == "reaped 0: nothing is running\n"


def test_a_replacement_worker_on_the_machine_takes_over_at_once(lab: Lab) -> None:
    batch = kill_holding_a_batch(lab)
    w2 = lab.start("w2")  # no --wait: before the fix it said "nothing to claim" and left
    assert w2.wait() == 0, w2.stderr
    assert "b-holds: worker w1 is gone: its process on this machine ended; returned to the queue\n" in w2.stderr
    assert "c-0: worker w1 is gone: its process on this machine ended; returned to the queue " in w2.stderr
    assert lab.remote.states() == dict.fromkeys(["a-warmup", *batch], "done")
    assert attempt_summary(lab.task("b-holds")) == [(1, "reaped", "w1"), (2, "done", "w2")]
    assert [attempt_summary(lab.task(f"c-{i}")) for i in range(4)] == [[(1, "done", "w2")]] * 4


def test_status_tells_held_claims_from_running_ones_with_heartbeat_and_lease_end(lab: Lab) -> None:
    lab.submit({"id": "a-warmup", "args": {}, "priority": 9, "lease": LONG})
    lab.submit({"id": "b-holds", "args": {"hold": [1]}, "priority": 8, "lease": LONG})
    lab.submit(*({"id": f"c-{i}", "args": {}, "lease": LONG} for i in range(2)))
    w1 = lab.start("w1")
    poll_until(lambda: lab.started("b-holds", 1), what="the held run to start")
    info = json.loads(gitqueue(lab, "status", "--format", "json").stdout)
    runs = {row["id"]: row for row in info["running"]}
    assert {task_id: row["phase"] for task_id, row in runs.items()} == {
        "b-holds": "running",  # no heartbeat yet, but its worker here noted that it started
        "c-0": "held",
        "c-1": "held",
    }
    assert runs["b-holds"]["heartbeat"] is None and runs["b-holds"]["lease_ends"] > runs["b-holds"]["claimed_at"]
    table = gitqueue(lab, "status").stdout
    assert "runs: 1 running, 2 held in a batch (not started), 0 claimed with no heartbeat yet" in table
    lab.release("b-holds", 1)
    assert w1.wait() == 0
    assert set(lab.remote.states().values()) == {"done"}


def test_status_shows_a_cancelled_run_that_is_still_stopping(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {"hold": [1], "stubborn": True}, "lease": LONG})
    w1 = lab.start("w1", "--grace", "60")  # the command ignores SIGTERM: it ends when released
    poll_until(lambda: lab.started("t", 1), what="the run to start")
    assert gitqueue(lab, "cancel", "t").returncode == 0

    def stopping() -> list[dict[str, str]]:
        return json.loads(gitqueue(lab, "status", "--format", "json").stdout)["stopping"]

    assert poll_until(stopping, what="the worker to notice the cancel") == [{"id": "t", "worker": "w1"}]
    status = gitqueue(lab, "status").stdout
    assert "stopping t (worker w1): its task was taken away; its command is ending" in status
    assert "running 0" in status  # the task is in cancelled/, yet its command still runs
    lab.release("t", 1)
    assert w1.wait() == 0
    assert stopping() == [] and lab.remote.states() == {"t": "cancelled"}


def test_a_live_workers_runs_are_never_reaped_early(lab: Lab) -> None:
    lab.submit({"id": "long", "args": {"hold": [1]}, "lease": LONG})
    w1 = lab.start("w1", "--wait")
    poll_until(lambda: lab.started("long", 1), what="the run to start")

    said = gitqueue(lab, "reap", "--max-skew", "0")
    assert said.returncode == 0, said.stderr
    lines = said.stdout.splitlines()
    assert lines[0] == "reaped 0"
    assert re.fullmatch(
        r"  long \(worker w1, attempt 1\): no heartbeat yet; lease runs out \S+ \(in (?:9m\d\d|10m00)s\)", lines[2]
    )
    assert lab.task("long").state is State.RUNNING

    lab.release("long", 1)
    poll_until(lambda: lab.remote.states()["long"] == "done", what="the run to finish")
    w1.send(signal.SIGTERM)
    assert w1.wait() == 128 + signal.SIGTERM
    assert attempt_summary(lab.task("long")) == [(1, "done", "w1")]


def test_a_worker_with_nothing_to_claim_says_what_runs_elsewhere_and_until_when(lab: Lab) -> None:
    lab.submit({"id": "long", "args": {"hold": [1]}, "lease": LONG})
    w1 = lab.start("w1", "--wait")
    poll_until(lambda: lab.started("long", 1), what="the run to start")
    w2 = lab.start("w2")
    assert w2.wait() == 0
    ends = lab.task("long").run["claimed_at"]
    assert re.search(
        r"nothing to claim \(1 task running elsewhere; their leases run until \S+ unless renewed\)", w2.stderr
    )
    assert ends < re.search(r"until (\S+) unless", w2.stderr)[1]  # type: ignore[index]
    lab.release("long", 1)
    poll_until(lambda: lab.remote.states()["long"] == "done", what="the run to finish")
    w1.send(signal.SIGTERM)
    w1.wait()


def test_a_claim_never_started_spends_no_attempt_when_its_lease_runs_out(lab: Lab) -> None:
    """A worker elsewhere (no note on this machine) died holding a claim: no heartbeat ever."""
    lab.submit({"id": "t", "args": {}, "lease": 1, "max_attempts": 1})
    with Queue.open(lab.url, worker="elsewhere") as q:
        assert q.claim() is not None

    def reaped() -> bool:
        return gitqueue(lab, "reap", "--max-skew", "0").stdout.startswith("reaped 1: t")

    poll_until(reaped, what="the lease to run out", timeout=10)
    task = lab.task("t")
    assert task.state is State.PENDING and task.attempts == [], "max_attempts 1, and still it may run"


def test_status_and_reap_read_a_running_file_whose_times_were_broken_by_hand(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {}, "lease": LONG})
    with Queue.open(lab.url, worker="elsewhere") as q:
        assert q.claim() is not None
    text = lab.remote.read("running/t.yaml")
    claimed = re.search(r"claimed_at: (\S+)", text)
    assert claimed is not None
    lab.remote.person_commit({"running/t.yaml": text.replace(claimed[1], "'yesterday'")}, "break a time")
    status = gitqueue(lab, "status", "--format", "json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)  # the broken record makes the file invalid: named, not crashed on
    assert info["running"] == [] and [p["path"] for p in info["invalid"]] == ["running/t.yaml"]
    assert "claimed_at" in info["invalid"][0]["problem"]
    reap = gitqueue(lab, "reap")
    assert reap.returncode == 0, reap.stderr
    assert "Traceback" not in reap.stderr
    assert lab.remote.states() == {"t": "running"}, "a time it cannot read is no sign that the run is dead"


def test_a_busy_worker_takes_over_a_dead_neighbours_tasks_before_its_reap_interval(lab: Lab) -> None:
    lab.submit({"id": "z-busy", "args": {"hold": [1]}, "priority": 99, "lease": LONG})
    w2 = lab.start("w2", "--wait", "--reap-every", "3600")  # reaps at start, then only when a note says so
    poll_until(lambda: lab.started("z-busy", 1), what="w2 to be busy")
    batch = kill_holding_a_batch(lab)
    lab.submit(*({"id": f"d-{i}", "args": {}, "priority": 20} for i in range(3)))  # w2 is never idle
    lab.release("z-busy", 1)
    poll_until(lambda: set(lab.remote.states().values()) == {"done"}, what="every task to be done")
    w2.send(signal.SIGTERM)
    assert w2.wait() == 128 + signal.SIGTERM
    said = w2.stderr
    gone = said.index("b-holds: worker w1 is gone: its process on this machine ended")
    assert gone < said.index("▶ d-0"), "it returned them as soon as its run ended, not when idle"
    assert attempt_summary(lab.task("b-holds")) == [(1, "reaped", "w1"), (2, "done", "w2")]
    assert len(lab.remote.states()) == 10 and len(batch) >= 2
