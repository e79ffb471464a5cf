"""Pacing a fleet's pushes: ``push_budget`` in gitqueue.yaml, what a worker learns of the fleet
and the branch, and a Pacer that keeps the whole fleet's pushes within budget over a fake clock."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import RemoteRepo
from typer.testing import CliRunner

from gitqueue import Queue
from gitqueue.cli import app
from gitqueue.commits import LogEntry
from gitqueue.config import PushBudget, Settings
from gitqueue.pacing import (
    Fleet,
    Member,
    Pacer,
    fleet_of,
    landed_rate,
    lease_trailers,
    member_of,
    read_fleet,
)
from gitqueue.validate import check_disk
from gitqueue.worker.neighbours import Neighbours
from gitqueue.worker.options import Options
from gitqueue.worker.pace import Pace

runner = CliRunner()
SETTINGS = "format: 1\ndefaults: {priority: 0, max_attempts: 3, lease: 600}\n"


# ---------------------------------------------------------------- push_budget in gitqueue.yaml


def test_push_budget_is_read_in_each_form_and_absent_means_none() -> None:
    for text, pushes, seconds in [("6/min", 6, 60.0), ("2/s", 2, 1.0), ("100 / h", 100, 3600.0)]:
        budget = Settings.parse(f"push_budget: {text}\n".encode()).push_budget
        assert budget == PushBudget(pushes, seconds)
        assert budget is not None and budget.rate == pushes / seconds
    assert Settings.parse(SETTINGS.encode()).push_budget is None
    kept = Settings(push_budget=PushBudget(6, 60.0))
    assert Settings.parse(kept.render()) == kept
    assert b"push_budget: 6/min" in kept.render()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("fast", "push_budget must look like 6/min (N/s, N/min or N/h), not 'fast'"),
        ("6/day", "push_budget must look like 6/min (N/s, N/min or N/h), not '6/day'"),
        ("6", "push_budget must look like 6/min (N/s, N/min or N/h), not 6"),
        ("-1/min", "push_budget must look like 6/min (N/s, N/min or N/h), not '-1/min'"),
        ("0/min", "push_budget must allow at least 1 push, not '0/min'"),
    ],
)
def test_a_bad_push_budget_is_a_problem_of_gitqueue_yaml_and_no_budget(tmp_path: Path, value: str, says: str) -> None:
    settings = Settings.parse(f"{SETTINGS}push_budget: {value}\n".encode())
    assert settings.push_budget is None and settings.lease == 600  # the rest is still read
    assert settings.problem == f"gitqueue.yaml: {says}"
    (tmp_path / "pending").mkdir()
    (tmp_path / "gitqueue.yaml").write_text(f"{SETTINGS}push_budget: {value}\n")
    assert [p.message for p in check_disk(tmp_path)] == [f"gitqueue.yaml: {says}"]


def test_a_queue_with_a_bad_push_budget_keeps_working_and_validate_says_why(queue: Queue, bare_remote: Path) -> None:
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": f"{SETTINGS}push_budget: lots\n"})
    [task_id] = queue.submit([{"args": {"lr": 0.1}}])
    run = queue.claim()
    assert run is not None and run.id == task_id
    problems = [p.message for p in queue.validate()]
    assert problems == ["gitqueue.yaml: push_budget must look like 6/min (N/s, N/min or N/h), not 'lots'"]
    result = runner.invoke(app, ["validate", "--queue", str(bare_remote)])
    assert result.exit_code == 1 and "gitqueue.yaml: push_budget must look like 6/min" in result.stdout, result.output


# ---------------------------------------------------------------- what a worker learns


def entry(message: str, time: float) -> LogEntry:
    return LogEntry("0" * 40, (), "w", "w@example.org", time, message, ())


def test_the_fleet_counts_each_recent_worker_once_with_its_slots() -> None:
    me = Member("box-a/0", 4, 1000.0)
    members = [
        Member("box-b/0", 8, 990.0),
        Member("box-b/0", 1, 995.0),  # a branch commit of box-b, which said no slots: its lease did
        Member("box-c/0", 2, 500.0),  # silent for longer than the window: gone
        Member("box-a/0", 1, 999.0),  # me again
        Member("box-d/0", 1, 980.0),
    ]
    assert fleet_of(members, me=me, now=1000.0, within=120.0) == Fleet(workers=3, slots=4 + 8 + 1)
    assert fleet_of([], me=me, now=1000.0, within=120.0) == Fleet(workers=1, slots=4)


def test_a_member_is_read_from_trailers_and_nonsense_never_raises() -> None:
    beat = entry("heartbeat t1 by box-b/0\n\nGitqueue-Run: abc\n" + lease_trailers(worker="box-b/0", slots=8), 50.0)
    assert member_of(beat) == Member("box-b/0", 8, 50.0)
    claim = entry("claim t1\n\nGitqueue-Action: claim\nGitqueue-Worker: box-c/1\nGitqueue-Nonce: 12\n", 60.0)
    assert member_of(claim) == Member("box-c/1", 1, 60.0)
    assert member_of(entry("a person's edit\n", 70.0)) is None
    for slots in ("lots", "-3", "0", "99999999999", "٣"):
        odd = entry(f"x\n\nGitqueue-Worker: box-e/0\nGitqueue-Slots: {slots}\n", 80.0)
        assert member_of(odd) == Member("box-e/0", 1, 80.0)


def test_the_landed_rate_is_the_densest_run_of_commits() -> None:
    assert landed_rate([]) is None and landed_rate([5.0]) is None
    busy = [100.0 + i / 2 for i in range(10)]  # ten commits in 4.5 s
    idle = [10.0, 40.0, 70.0]
    assert landed_rate(idle + busy) == pytest.approx(9 / 4.5)
    assert landed_rate([7.0, 7.0, 7.0]) == 2.0  # whole seconds: a run spans at least one
    assert landed_rate(idle) == pytest.approx(2 / 60)


def test_the_fleet_and_the_landed_rate_from_a_real_queue(queue: Queue, bare_remote: Path) -> None:
    with Queue.open(str(bare_remote), worker="box-b/0") as other:
        ids = queue.submit([{"args": {"n": n}} for n in range(4)])
        runs = [queue.claim(), other.claim(), other.claim()]
        assert sorted(r.id for r in runs if r is not None) == sorted(ids[:3])
        for q, run, slots in [(queue, runs[0], 4), (other, runs[1], 8)]:
            assert run is not None
            message = f"heartbeat {run.id} by {q.worker}\n\nGitqueue-Run: {run.token}\n"
            assert q.store.heartbeat(
                run.token, parent=None, message=message + lease_trailers(worker=q.worker, slots=slots),
                author=q.identity,
            )  # fmt: skip
        tip = queue.store.fetch(leases=True)
        assert len(queue.store.leases()) == 2
        commits = queue.store.recent(tip or "", 50)
        now = max(c.time for c in commits)
        me = Member(queue.worker, 4, now)
        assert read_fleet(queue.store, tip, me=me, now=now, within=600) == Fleet(workers=2, slots=12)
        assert read_fleet(queue.store, tip, me=me, now=now + 3600, within=600) == Fleet(workers=1, slots=4)
        rate = landed_rate([c.time for c in commits])
        assert rate is not None and rate >= (len(commits) - 1) / max(commits[0].time - commits[-1].time, 1.0)


def test_workers_sharing_a_cache_do_not_pace_each_other_but_another_machine_paces_them(
    queue: Queue, bare_remote: Path
) -> None:
    """16 processes of one machine take turns on its cache: the pacer leaves them alone. A
    worker on another machine (a cache of its own) races them: then they are paced, each by
    its share of slots, the machine's processes counted too."""
    ids = queue.submit([{"args": {"n": n}} for n in range(4)])
    siblings = [Queue.open(str(bare_remote), worker=f"box-a/{n}") for n in range(2)]
    try:
        paces = [Pace(Options(), slots=1) for _ in siblings]
        for pace, sibling in zip(paces, siblings, strict=True):
            pace.start(sibling)
            assert sibling.claim() is not None  # each shows on the branch
        pace, me = paces[0], siblings[0]
        assert me.store.path == siblings[1].store.path  # one cache
        pace.learnt = float("-inf")
        pace.learn(me, tip=me.store.fetch(leases=True))
        assert pace.pacer.fleet.workers == 2 and pace.pacer.fleet.elsewhere == 0
        pace.pacer.observe(push_seconds=0.1)
        assert not pace.paced and pace.wait(0.0) == 0
        with Queue.open(str(bare_remote), worker="box-b/0", cache=bare_remote.parent / "box-b") as other:
            assert other.store.path != me.store.path and other.claim() is not None
            pace.learnt = float("-inf")
            pace.learn(me, tip=me.store.fetch(leases=True))
        assert pace.pacer.fleet.workers == 3 and pace.pacer.fleet.elsewhere == 1
        rate = pace.pacer.fleet_branch_rate
        assert pace.paced and rate is not None and pace.pacer.interval == pytest.approx(3 / 1 / rate)
        paces[1].stop()  # a sibling that stopped is no longer one of this machine's workers
        assert pace.neighbours is not None and pace.neighbours.names() == {"box-a/0"}
    finally:
        for sibling in siblings:
            sibling.close()
    assert sorted(t["id"] for t in queue.runs()) == sorted(ids[:3])


def test_a_worker_yet_to_claim_sizes_its_claim_by_what_its_neighbours_tasks_took(tmp_path: Path) -> None:
    """Workers of one machine tell each other what their tasks take: one that has not run a
    task yet claims a batch at once, not one task to learn; a worker of another queue does not."""

    def pace_of(queue: str, worker: str) -> Pace:
        pace = Pace(Options(max_batch=64, batch_seconds=1.0))
        pace.neighbours = Neighbours(tmp_path, queue=queue, worker=worker)
        pace.neighbours.join()
        return pace

    first, later, elsewhere = pace_of("q main", "box-a/0"), pace_of("q main", "box-a/1"), pace_of("o main", "box-a/2")
    assert later.size(ran=0) == 1 and later.neighbours_here() and not elsewhere.neighbours_here()
    first.took(0.1)
    assert first.size(ran=1) == 10
    assert later.seconds_per_task is None and later.task_seconds == pytest.approx(0.1)
    assert later.size(ran=0) == 10 and elsewhere.size(ran=0) == 1
    first.took(0.4)  # 0.19 s now: told again
    assert later.size(ran=0) == 5


def test_a_note_of_a_worker_process_that_is_gone_is_dropped(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = Neighbours(tmp_path, queue="q main", worker="box-a/0")
    alive.join()
    folder = tmp_path / "pace"
    (folder / "1-dead.json").write_text(
        json.dumps({"queue": "q main", "worker": "box-a/9", "host": socket.gethostname(), "pid": int(gone.stdout)})
    )
    (folder / "2-other.json").write_text(
        json.dumps({"queue": "other main", "worker": "box-z/0", "host": socket.gethostname(), "pid": os.getpid()})
    )
    (folder / "3-broken.json").write_text("{not json")
    assert alive.names() == {"box-a/0"}
    assert sorted(p.name for p in folder.iterdir()) == sorted([alive.path.name, "2-other.json", "3-broken.json"])


# ---------------------------------------------------------------- the Pacer


def test_alone_without_a_budget_a_worker_is_never_slowed_down() -> None:
    pacer = Pacer(slots=4, budget=None, lease=600)
    pacer.observe(fleet=Fleet(1, 4), branch_rate=50.0, push_seconds=0.05, task_seconds=0.01)
    for now in (0.0, 0.001, 0.002):
        assert pacer.wait(now) == 0
        pacer.pushed(now)
    assert pacer.batch(free=4, held=0, pending=1000, wanted=64) == 64
    assert pacer.batch(free=4, held=0, pending=3, wanted=64) == 3
    assert pacer.heartbeat_every(600) == 30 and pacer.lease_for(600) == 600 and pacer.problem is None


def test_a_quiet_branch_does_not_hold_a_fleet_to_its_quiet_rate() -> None:
    pacer = Pacer(slots=4, budget=None, lease=600)
    pacer.observe(fleet=Fleet(3, 12), branch_rate=0.05)  # one commit in 20 s: long tasks so far
    assert pacer.branch_takes is None and pacer.interval == 0
    pacer.observe(push_seconds=0.4)  # our claim cycle: the branch takes about 2.5 pushes/s
    assert pacer.branch_takes == pytest.approx(2.5)
    assert pacer.fleet_branch_rate == pytest.approx(2.0)
    assert pacer.interval == pytest.approx(12 / 4 / 2.0)  # our share by slots
    pacer.observe(branch_rate=5.0)  # others land faster than we can: the branch takes that much
    assert pacer.branch_takes == pytest.approx(5.0)


def test_no_worker_holds_more_than_its_share_by_slots_of_what_is_pending() -> None:
    pacer = Pacer(slots=2, budget=None, lease=600)
    pacer.observe(fleet=Fleet(4, 8), push_seconds=2.0, task_seconds=0.1)  # slow pushes, short tasks: many ahead
    assert pacer.interval > 0
    assert pacer.batch(free=2, held=0, pending=40, wanted=1) == 10
    assert pacer.batch(free=2, held=10, pending=30, wanted=1) == 0
    assert pacer.batch(free=2, held=0, pending=1, wanted=1) == 1  # a free slot with nothing held may always take one
    assert pacer.batch(free=0, held=0, pending=0, wanted=5) == 0


def test_a_batch_lasts_until_the_next_pushs_runs_arrive_not_only_until_it_starts() -> None:
    """4 machines x 4 slots, 1 s tasks: sized to last one interval, a machine's slots ran dry
    every few seconds while its next claim's fetch and push (and tries lost) went on."""
    pacer = Pacer(slots=4, budget=None, lease=600)
    pacer.observe(fleet=Fleet(4, 16), push_seconds=0.4, task_seconds=1.0)
    assert pacer.interval == pytest.approx(2.0)  # 16 slots / 4 ours / 2 pushes a second for the fleet
    assert pacer.batch(free=4, held=0, pending=200, wanted=1) == 4 + 4 * 3  # the free slots, then 2 s more each
    assert pacer.batch(free=4, held=0, pending=200, wanted=1, latency=1.0) == 4 + 4 * 4  # and 1 s until it lands


def test_under_a_budget_the_claims_fair_share_caps_a_batch_not_the_pending_alone() -> None:
    """Turns are far apart under a budget: a cap on what is pending alone (the others hold runs
    too) would leave part of it for the next turn, then part of that for the one after. The
    claim's own fair share of all that is outstanding, read on the branch, caps it instead
    (Claims.change; see test_pacer's test of the fair share by slots)."""
    pacer = Pacer(slots=2, budget=PushBudget(6, 60.0), lease=600)
    pacer.observe(fleet=Fleet(4, 8), task_seconds=1.0)  # turns 50 s apart, 1 s tasks: it wants many ahead
    assert pacer.batch(free=2, held=10, pending=30, wanted=1) == 30
    assert pacer.batch(free=0, held=0, pending=0, wanted=5) == 0


def test_a_second_push_may_follow_the_first_at_once_in_place_of_the_next_turn() -> None:
    """The first push was sized before a task's time was known: the second may go as soon as the
    slots need it, sized to last until the turn after next; from then on turns are an interval
    apart, so a machine never pushes more than one more than its turns (a budget's first push)."""
    pacer = Pacer(slots=4, budget=PushBudget(12, 60.0), lease=600)
    pacer.observe(fleet=Fleet(4, 16), task_seconds=5.0)
    interval = pacer.interval
    pacer.pushed(100.0)
    assert pacer.wait(103.0) == 0
    early = pacer.batch(free=4, held=0, pending=1000, wanted=0, now=103.0)
    assert early == 4 * (math.floor((2 * interval - 3.0) / 5.0) + 1) + 4  # until the turn after next
    pacer.pushed(103.0)
    assert pacer.wait(103.0) == pytest.approx(100.0 + 2 * interval - 103.0)
    pacer.pushed(100.0 + 2 * interval)
    assert pacer.wait(100.0 + 2 * interval) == pytest.approx(interval)


def test_a_first_claim_under_a_budget_fills_every_free_slot_before_a_tasks_time_is_known() -> None:
    """Its next turn may be many seconds away: one run for four slots would leave three idle."""
    pacer = Pacer(slots=4, budget=PushBudget(12, 60.0), lease=600)
    pacer.observe(fleet=Fleet(4, 16))  # no task time yet
    assert pacer.interval > 0
    assert pacer.batch(free=4, held=0, pending=576, wanted=1) == 4
    assert pacer.batch(free=4, held=1, pending=575, wanted=0) == 3
    assert pacer.batch(free=4, held=0, pending=8, wanted=1) == 4  # its free slots: the claim's fair share caps it


def test_a_budget_too_small_for_the_leases_lengthens_them_and_says_so() -> None:
    pacer = Pacer(slots=1, budget=PushBudget(6, 60.0), lease=60)
    pacer.observe(fleet=Fleet(20, 20))
    # 20 heartbeats per lease/3 within half of 0.1 push/s: a lease of at least 1200 s
    assert pacer.lease_for(60) == 1200 and pacer.lease_for(3000) == 3000
    assert pacer.heartbeat_every(pacer.lease_for(60)) == 400
    assert pacer.problem == (
        "push_budget 6/min in gitqueue.yaml is too small for 20 workers' heartbeats with a 60s lease: "
        "runs are claimed with a 1200s lease instead (raise push_budget or defaults.lease)"
    )
    assert pacer.fleet_branch_rate == pytest.approx(0.05)  # what the heartbeats leave


@dataclass
class SimWorker:
    """A worker following its Pacer over the fake clock: slots, held claims, its pushes."""

    pacer: Pacer
    slots: int
    durations: random.Random
    mean: float
    running: list[float] = field(default_factory=list)  # when each busy slot's task ends
    held: int = 0
    ended: int = 0
    branch_pushes: list[float] = field(default_factory=list)
    heartbeats: list[float] = field(default_factory=list)
    idle: float = 0.0  # slot-seconds idle while tasks were pending, after its first push

    def start_held(self, now: float) -> None:
        while self.held and len(self.running) < self.slots:
            self.running.append(now + self.durations.uniform(0.8, 1.2) * self.mean)
            self.held -= 1

    def step(self, now: float, pending: int, lease: float) -> int:
        """One tick: runs end, held ones start, maybe a branch push and a heartbeat; returns
        how many tasks it claimed."""
        self.ended += sum(1 for end in self.running if end <= now)
        self.running = [end for end in self.running if end > now]
        self.start_held(now)
        claimed, free = 0, self.slots - len(self.running)
        if (self.ended or free) and self.pacer.wait(now) == 0:
            claimed = self.pacer.batch(
                free=free, held=self.held, pending=pending, wanted=max(0, free - self.held), now=now
            )
            if claimed or self.ended:
                self.branch_pushes.append(now)
                self.pacer.pushed(now)
                self.held, self.ended = self.held + claimed, 0
                self.start_held(now)
        last = self.heartbeats[-1] if self.heartbeats else (self.branch_pushes or [now])[0]
        if self.running and now - last >= self.pacer.heartbeat_every(self.pacer.lease_for(lease)):
            self.heartbeats.append(now)
        return claimed


def simulate(
    *,
    workers: int,
    slots: int,
    budget: PushBudget | None,
    lease: float,
    mean: float,
    branch_rate: float | None = None,
    push_seconds: float | None = None,
) -> tuple[list[SimWorker], int]:
    """M workers over 3 simulated minutes, ticks of 0.1 s; returns them and what is left pending."""
    fleet = [
        SimWorker(Pacer(slots=slots, budget=budget, lease=lease), slots, random.Random(n), mean) for n in range(workers)
    ]
    for w in fleet:
        fleet_seen = Fleet(workers, workers * slots)
        w.pacer.observe(fleet=fleet_seen, branch_rate=branch_rate, push_seconds=push_seconds, task_seconds=mean)
    pending, tick = 1_000_000, 0.1
    for step in range(1800):
        now = step * tick
        for w in fleet:
            pending -= w.step(now, pending, lease)
            if w.branch_pushes and pending:
                w.idle += (w.slots - len(w.running)) * tick
    return fleet, pending


@pytest.mark.parametrize(
    ("workers", "slots", "budget", "mean"),
    [(4, 4, PushBudget(6, 60.0), 5.0), (10, 8, PushBudget(1, 1.0), 0.5), (3, 2, PushBudget(30, 60.0), 40.0)],
)
def test_a_fleet_following_its_pacers_stays_within_budget_and_keeps_its_slots_fed(
    workers: int, slots: int, budget: PushBudget, mean: float
) -> None:
    fleet, _ = simulate(workers=workers, slots=slots, budget=budget, lease=120, mean=mean)
    branch = sum(len(w.branch_pushes) for w in fleet)
    beats = sum(len(w.heartbeats) for w in fleet)
    assert branch + beats <= budget.rate * 180 + workers  # plus one first push each
    assert all(w.heartbeats for w in fleet) and branch > workers  # heartbeats and batches both happened
    for w in fleet:
        every = w.pacer.heartbeat_every(w.pacer.lease_for(120))
        assert every * 3 <= w.pacer.lease_for(120)  # a lease outlives three heartbeat periods
        gaps = [b - a for a, b in zip(w.heartbeats, w.heartbeats[1:], strict=False)]
        assert all(gap <= every + 0.1 for gap in gaps)
        assert w.idle == 0, f"a slot waited {w.idle:.1f}s for work while tasks were pending"


def test_a_fleet_without_a_budget_fits_what_the_branch_lands_and_keeps_its_slots_fed() -> None:
    # a branch seen to land 2 pushes/s, and a claim cycle of ours of 1 s: it takes 2/s
    fleet, _ = simulate(workers=8, slots=4, budget=None, lease=600, mean=0.2, branch_rate=2.0, push_seconds=1.0)
    branch = sum(len(w.branch_pushes) for w in fleet)
    assert branch <= 0.8 * 2.0 * 180 + 8
    assert all(w.idle == 0 for w in fleet), [round(w.idle, 1) for w in fleet]
    alone, _ = simulate(workers=1, slots=4, budget=None, lease=600, mean=0.2, branch_rate=2.0, push_seconds=1.0)
    assert len(alone[0].branch_pushes) > 2.0 * 180  # alone, it pushes as often as its slots free up
