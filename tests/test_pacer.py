"""The pacer wired into the worker: a lone worker batches as it always did, a ``push_budget``
is kept by the pushes a worker makes (counted by the worker and by the server), and the fair
share of a backlog is by slots."""

from __future__ import annotations

import io
import itertools
import os
import signal
import subprocess
import threading
import time
from collections import defaultdict
from pathlib import Path

from conftest import RemoteRepo, poll_until

from gitqueue import Queue
from gitqueue.pacing import SLOTS_TRAILER, Fleet
from gitqueue.queue import Ask, Report, Run
from gitqueue.task import State
from gitqueue.testing import log_ref_updates, ref_updates
from gitqueue.worker.hand import Aside, Hand
from gitqueue.worker.lease import Watch
from gitqueue.worker.options import Options, Summary
from gitqueue.worker.pace import Pace
from gitqueue.worker.worker import Worker

SETTINGS = "format: 1\ndefaults: {priority: 0, max_attempts: 3, lease: 600}\n"


def branch_updates(log: Path) -> list[float]:
    """Server times of the pushes that moved the queue branch, one per receive-pack."""
    seen: dict[str, float] = {}
    for when, pid, ref in ref_updates(log):
        if ref.startswith("refs/heads/"):
            seen.setdefault(pid, when)
    return sorted(seen.values())


def claim_sizes(remote: Path) -> list[int]:
    """Claims per commit on the branch, oldest first (commits that claimed nothing left out)."""
    out = subprocess.run(
        ["git", "log", "--reverse", "--format=%x00%B", "main"], cwd=remote, capture_output=True, check=True, text=True
    ).stdout
    sizes = []
    for message in out.split("\0")[1:]:
        claims = [line for line in message.splitlines() if line.startswith("claim ")]
        if claims or message.startswith("claim"):
            sizes.append(max(len(claims), 1))
    return sizes


def instant(run: Run, watch: Watch) -> Report:
    return Report(run.id, run.token, "done", result={"ran": run.id})


def test_a_lone_worker_without_a_budget_batches_as_today(queue: Queue, bare_remote: Path) -> None:
    ids = queue.submit([{"args": {"n": n}} for n in range(30)])
    log = io.StringIO()
    with Queue(str(bare_remote), worker="alone") as q:
        worker = Worker(q, Options(max_batch=8, batch_seconds=10_000.0), runner=instant, log=log)
        assert worker.run() == 0, log.getvalue()
        pace = worker.hand.pace
        assert not pace.paced and pace.wait(0.0) == 0 and pace.lease() is None  # the pacer never had a say
        assert pace.pacer.fleet.members == {"alone": 1}  # it did learn: alone (the submitter runs no tasks)
        assert pace.heartbeat_every(600) == 30.0 and pace.heartbeat_every(9) == 3.0  # today's periods
    assert all(queue.get(i).state is State.DONE for i in ids)
    # One claim first (no task time known yet), then a batch of max_batch, topped up each time
    # half of it has run, up to max_batch in hand: the top-up's push goes on beside the next runs,
    # so how many ran meanwhile (and so each top-up's size) varies, never past max_batch.
    sizes = claim_sizes(bare_remote)
    assert sizes[:2] == [1, 8] and sum(sizes) == 30 and max(sizes) <= 8
    assert len(sizes) <= 8  # no more pushes than topping up by halves takes
    assert "warning" not in log.getvalue()


def test_pace_alone_without_a_budget_is_todays_batch_size() -> None:
    pace = Pace(Options(max_batch=64, batch_seconds=1.0))
    assert pace.size(ran=0) == 1  # nothing known: one at a time
    for seconds, expected in [(0.001, 64), (0.1, 10), (0.4, 2), (5.0, 1)]:
        pace.seconds_per_task = seconds
        assert pace.size(ran=0, held=0) == expected
    assert Pace(Options(max_batch=64, max_tasks=5)).size(ran=3) == 1


def test_a_push_budget_is_kept_by_the_pushes_a_worker_makes(queue: Queue, bare_remote: Path, tmp_path: Path) -> None:
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": f"{SETTINGS}push_budget: 60/min\n"})
    ids = queue.submit([{"args": {"n": n}} for n in range(8)])
    log_file = tmp_path / "ref-updates.log"
    log_ref_updates(bare_remote, log_file)
    log = io.StringIO()
    with Queue(str(bare_remote), worker="budgeted") as q:
        worker = Worker(q, Options(max_batch=2, batch_seconds=10_000.0), runner=instant, log=log)
        assert worker.run() == 0, log.getvalue()
        pushes, rejected = q.store.pushes, q.store.rejected_pushes
        pace = worker.hand.pace
        assert pace.pacer.budget is not None and str(pace.pacer.budget) == "60/min"
        assert pace.heartbeat_every(600) == 200.0  # a heartbeat is a push: no more than the lease needs
    assert all(queue.get(i).state is State.DONE for i in ids)
    landed = branch_updates(log_file)
    assert len(landed) == pushes - rejected >= 5  # batches of two: the budget had work to do
    # The worker looked before its first push. Its second push may follow at once, in place of
    # the next turn (the first was sized before a task's time was known); every later one waited
    # for its turn, at most one a second (less what heartbeats take: none were due), the third
    # two turns after the first: never more than one push past the budget's turns.
    gaps = [b - a for a, b in itertools.pairwise(landed)]
    assert min(gaps[1:]) >= 1.0 and landed[2] - landed[0] >= 2.0, gaps
    assert "budgeted" in log.getvalue() and "warning" not in log.getvalue()


def test_a_budget_too_small_for_the_lease_is_said_once_and_runs_get_a_longer_lease(
    queue: Queue, bare_remote: Path
) -> None:
    settings = "format: 1\ndefaults: {priority: 0, max_attempts: 3, lease: 2}\npush_budget: 60/min\n"
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": settings})
    ids = queue.submit([{"args": {"n": n}} for n in range(4)])
    leases: dict[str, int] = {}

    def note_lease(run: Run, watch: Watch) -> Report:
        leases[run.id] = run.lease
        return instant(run, watch)

    log = io.StringIO()
    with Queue(str(bare_remote), worker="short-lease") as q:
        worker = Worker(q, Options(max_batch=1), runner=note_lease, log=log)
        assert worker.run() == 0, log.getvalue()
        assert worker.hand.pace.heartbeat_every(2) == 2.0  # a third of the 6 s lease it claims with
    assert all(queue.get(i).state is State.DONE for i in ids)
    # One worker's heartbeats may take half of 1 push/s: a lease of 3 periods of 2 s at least.
    assert [leases[i] for i in ids] == [6, 6, 6, 6]  # it looked before its first claim
    said = [line for line in log.getvalue().splitlines() if "too small" in line]
    assert len(said) == 1 and "runs are claimed with a 6s lease instead" in said[0], log.getvalue()


def test_a_worker_served_for_its_request_keeps_the_slots_its_request_said(queue: Queue, bare_remote: Path) -> None:
    """A machine that only ever ran what others claimed for it has no commit of its own to say
    its slots: counted as 1 once its request was served, a 4 x 4 fleet looked like 10 or 13
    slots to its members, and their batches were sized for a fleet smaller than it is."""
    queue.submit([{"args": {"n": n}} for n in range(20)])
    with Queue(str(bare_remote), worker="box-1") as one, Queue(str(bare_remote), worker="box-4") as four:
        pace = Pace(Options(), slots=1)
        assert four.ask_for_work(4, Ask(slots=4))
        pace.learn(one, tip=one.store.fetch(leases=True, requests=True))
        assert pace.pacer.fleet.members == {"box-1": 1, "box-4": 4}  # from its live request
        one.claim_batch(1)  # and, in the same push, box-4's
        assert {t.run["worker"] for t in queue.tasks(State.RUNNING) if t.run} == {"box-1", "box-4"}
        pace.learnt = float("-inf")  # (a worker learns at most every LEARN_EVERY seconds)
        pace.learn(one, tip=one.store.fetch(leases=True, requests=True))
        assert pace.pacer.fleet.members == {"box-1": 1, "box-4": 4}  # served: no request, no commit of its own


def test_the_fair_share_of_a_backlog_is_by_slots(queue: Queue, bare_remote: Path) -> None:
    ids = queue.submit([{"args": {"n": n}} for n in range(50)])
    with Queue(str(bare_remote), worker="box-1") as one, Queue(str(bare_remote), worker="box-4") as four:
        pace_one, pace_four = Pace(Options(), slots=1), Pace(Options(), slots=4)
        first = one.claim_batch(1)
        four.lifecycle.claims.slots = 4  # what pace_four.learn tells the lifecycle of a 4-slot worker
        big = four.claim_batch(100)  # box-1 holds a run, of slots unknown (1): 4/5 of 50
        assert len(first) == 1 and len(big) == 40
        pace_four.learn(four)
        assert pace_four.pacer.fleet.members == {"box-1": 1, "box-4": 4}
        # box-1 learns box-4's slots from the branch (the trailer on its claim commit)...
        one.claim_batch(1)
        pace_one.learn(one)
        assert pace_one.pacer.fleet.members == {"box-1": 1, "box-4": 4}
        assert one.lifecycle.claims.fleet == {"box-1": 1, "box-4": 4}
        # ...and keeps to its share: 1/5 of what is outstanding, not the half of it.
        rest = one.claim_batch(100)
        assert len(rest) == 8
        holders = [queue.get(i).run for i in ids]
        held = {name: sum(1 for run in holders if run and run["worker"] == name) for name in ("box-1", "box-4")}
        assert held == {"box-1": 10, "box-4": 40}
        assert queue.get(ids[0]).state is State.RUNNING
    tip_message = subprocess.run(
        ["git", "log", "--format=%B", "--grep=claim 40 tasks by box-4", "main"],
        cwd=bare_remote,
        capture_output=True,
        check=True,
        text=True,
    ).stdout
    assert f"{SLOTS_TRAILER}: 4" in tip_message


def test_without_the_slots_learnt_the_share_splits_by_workers(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"args": {"n": n}} for n in range(40)])
    with Queue(str(bare_remote), worker="box-a") as a, Queue(str(bare_remote), worker="box-b") as b:
        assert len(a.claim_batch(1)) == 1
        assert len(b.claim_batch(100)) == 20  # half of 40: each counts one slot


def test_a_worker_waiting_for_its_turn_stops_at_once_on_a_signal(queue: Queue, bare_remote: Path) -> None:
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": f"{SETTINGS}push_budget: 6/min\n"})
    ids = queue.submit([{"args": {"n": n}} for n in range(3)])
    log = io.StringIO()

    def stop_when_the_first_ended() -> None:  # the second push went at once (see test_pacing), the third waits
        poll_until(lambda: log.getvalue().count("✓") >= 2, what="the first two runs to end")
        os.kill(os.getpid(), signal.SIGTERM)

    with Queue(str(bare_remote), worker="patient") as q:
        worker = Worker(q, Options(max_batch=1), runner=instant, log=log)
        stopper = threading.Thread(target=stop_when_the_first_ended)
        stopper.start()
        code = worker.run()
        stopper.join()
    assert code == 128 + signal.SIGTERM, log.getvalue()
    # Its third push had to wait ~20 s for its turn: the signal ended the wait, and the worker
    # reported what ran and claimed nothing more.
    assert [queue.get(i).state for i in ids] == [State.DONE, State.DONE, State.PENDING]
    assert not queue.get(ids[2]).attempts
    subjects = subprocess.run(
        ["git", "log", "--format=%s", "-2", "main"], cwd=bare_remote, capture_output=True, check=True, text=True
    ).stdout.splitlines()
    assert subjects[0].startswith(f"done {ids[1]} ") and "claim" not in subjects[0], subjects
    assert subjects[1].startswith(f"done {ids[0]} ") and f"claim {ids[1]} " in subjects[1], subjects


def test_a_paced_worker_claims_again_before_its_turn_when_its_runs_in_hand_run_out() -> None:
    """Paced, a worker pushes once per turn; but with fewer runs in hand than a claim takes to
    bring more, it claims at once rather than run dry waiting for its turn."""
    pace = Pace(Options(), slots=1)
    pace.pacer.observe(fleet=Fleet(workers=2, slots=2, members={"me": 1, "other": 1}), push_seconds=0.5)
    pace.took(1.0)
    pace.pushed(time.monotonic())  # the first push starts no turn...
    assert pace.wait(time.monotonic()) == 0
    pace.pushed(time.monotonic())  # ...the second does
    pace.batch = 8
    assert pace.paced and pace.wait(time.monotonic()) > 0
    assert not pace.due(held=5, reported=True), "five seconds in hand: it waits for its turn"
    assert pace.due(held=1, reported=False), "one second in hand, a claim takes about one: claim now"
    pace.served(4.0)  # claims have come to take longer: it claims earlier
    assert pace.due(held=3, reported=False)


def test_a_claim_is_not_skipped_when_the_last_push_beside_a_run_is_over_but_not_taken_in(
    queue: Queue, bare_remote: Path
) -> None:
    queue.submit([{"args": {"n": n}} for n in range(3)])
    hand = Hand(
        queue, Options(command=["true"]), summary=Summary(), seconds=defaultdict(float), say=lambda _: None,
        runs_everything=False,
    )  # fmt: skip
    hand.pushing = (Aside(lambda: [], wake=threading.Event()), 0)
    poll_until(lambda: hand.pushing is not None and hand.pushing[0].over(), what="the push beside a run to end")
    hand.claim_next()
    assert hand.pushing is None and len(hand.held) == 1, "the ended push was taken in, and the claim went on"
