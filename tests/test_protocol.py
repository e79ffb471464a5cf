"""The claim protocol over real transports, with real races between processes.

Tests that take ``remote_url`` run over a bare repository by path, ``git daemon`` and git's
smart HTTP backend. Races are between real worker processes, and the outage is a real git
server stopped and started again. Every test checks the remote's branch afterwards.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo

from gitqueue import NotHeld, Queue, State
from gitqueue.errors import LostRace
from gitqueue.gitstore import FETCH_HEALS, PushOutcome
from gitqueue.queue import Change
from gitqueue.testing import GitDaemon, make_bare_repo

# A worker process: claim and finish until nothing is pending, logging each step as a JSON line.
# "separate": claim and done are two commits (the primitives `gitqueue claim` / `done` use);
# "combined": each done and the next claim share one commit (what `gitqueue work` does).
# Fetches that find the remote unreachable are logged too, so a test can see an outage bite.
WORKER = r"""
import json, sys
from gitqueue import Queue
from gitqueue.errors import RemoteUnavailable
from gitqueue.gitstore import GitStore
from gitqueue.queue import Report

url, name, log_path, shape = sys.argv[1:5]
log = open(log_path, "a", buffering=1)

def note(event, **fields):
    log.write(json.dumps({"event": event, **fields}) + "\n")

real_fetch = GitStore.fetch

def fetch(self, **options):
    try:
        return real_fetch(self, **options)
    except RemoteUnavailable:
        note("unreachable")
        raise

GitStore.fetch = fetch
real_settle = GitStore.settle

def settle(self, new):
    outcome = real_settle(self, new)
    note("settled", outcome=outcome.value)
    return outcome

GitStore.settle = settle
with Queue.open(url, worker=name, patience=90) as q:
    run = q.claim()
    while run is not None:
        note("claimed", id=run.id, token=run.token)
        if shape == "separate":
            run.done({"worker": name})
            following = q.claim()
        else:
            finished = q.finish(Report(run.id, run.token, "done", result={"worker": name}), then_claim={})
            assert finished.lost is None, finished.lost
            following = finished.next
        note("done", id=run.id)
        run = following
    note("empty", pushes=q.store.pushes, rejected=q.store.rejected_pushes)
"""

# The same loop as a script would write it around the installed command: `gitqueue claim
# --format json` until it exits 3, and `gitqueue done ID --token TOKEN` for each task.
CLI_WORKER = r"""
import json, shutil, subprocess, sys

url, name, log_path, _ = sys.argv[1:5]
log = open(log_path, "a", buffering=1)
exe = shutil.which("gitqueue")
common = ["--queue", url, "--worker", name]
while True:
    claim = subprocess.run([exe, "claim", "--format", "json", *common], capture_output=True, text=True)
    if claim.returncode == 3:
        break
    assert claim.returncode == 0, claim.stderr
    task = json.loads(claim.stdout)
    log.write(json.dumps({"event": "claimed", "id": task["id"], "token": task["token"]}) + "\n")
    done = subprocess.run(
        [exe, "done", task["id"], "--token", task["token"], "--result", f"worker={name}", *common],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr
    log.write(json.dumps({"event": "done", "id": task["id"]}) + "\n")
log.write(json.dumps({"event": "empty", "rejected": None}) + "\n")
"""


def trailers(message: str) -> dict[str, str]:
    return dict(re.findall(r"^(Gitqueue-[\w-]+): (.*)$", message, re.MULTILINE))


def actions(repo: RemoteRepo) -> Counter[tuple[str, str]]:
    """(action, task id) -> how many commits on the branch did that (a commit may do several)."""
    counts: Counter[tuple[str, str]] = Counter()
    for message in repo.log("%B"):
        found = trailers(message)
        verbs, ids = found.get("Gitqueue-Action", "").split(), found.get("Gitqueue-Task", "").split()
        if len(verbs) == len(ids):
            counts.update(zip(verbs, ids, strict=True))
        elif len(verbs) == 1:
            counts.update((verbs[0], i) for i in ids)
    return counts


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    return value


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")] if path.exists() else []


class Workers:
    """Worker processes draining one queue, each logging to its own file.

    Each has a cache of its own, as on separate machines, so that their pushes really race;
    with ``shared_cache`` they share one, as on one machine, and take turns.
    """

    def __init__(self, url: str, folder: Path, count: int, shape: str = "separate", *, shared_cache: bool = False):
        self.logs = [folder / f"racer-{i}.log" for i in range(count)]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", CLI_WORKER if shape == "cli" else WORKER, url, f"racer/{i}", str(log), shape],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=os.environ if shared_cache else {**os.environ, "GITQUEUE_CACHE": str(folder / f"cache-{i}")},
            )
            for i, log in enumerate(self.logs)
        ]

    def events(self) -> list[list[dict[str, Any]]]:
        return [read_events(log) for log in self.logs]

    def finish(self, timeout: float) -> list[list[dict[str, Any]]]:
        deadline = time.monotonic() + timeout
        outputs = []
        for proc in self.procs:
            try:
                outputs.append(proc.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"workers still running after {timeout}s: {self.events()}")
        for proc, output in zip(self.procs, outputs, strict=True):
            assert proc.returncode == 0, f"a worker failed:\n{output}"
        return self.events()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def workers() -> Iterator[list[Workers]]:
    """Worker processes a test starts; none outlives the test."""
    started: list[Workers] = []
    yield started
    for group in started:
        group.kill()


def assert_drained_exactly_once(repo: RemoteRepo, url: str, ids: list[str], events: list[list[dict]]) -> None:
    """Every task claimed once, finished once, in done/ only: by the branch and by the workers."""
    claimed = Counter(e["id"] for log in events for e in log if e["event"] == "claimed")
    finished = Counter(e["id"] for log in events for e in log if e["event"] == "done")
    assert claimed == finished == Counter(ids), "each task must be claimed and finished by exactly one run"
    assert all(log and log[-1]["event"] == "empty" for log in events), "every worker ran until the queue was empty"
    counts = actions(repo)
    assert {i: counts[("claim", i)] for i in ids} == dict.fromkeys(ids, 1), "one claim commit per task"
    assert {i: counts[("done", i)] for i in ids} == dict.fromkeys(ids, 1), "one done commit per task"
    assert repo.states() == dict.fromkeys(ids, "done"), "each task in exactly one folder: done/"
    assert repo.git("rev-list", "--merges", "main").strip() == "", "the history is linear"
    claimer = {e["id"]: i for i, log in enumerate(events) for e in log if e["event"] == "claimed"}
    with Queue.open(url, worker="checker/0") as q:
        done = q.tasks(State.DONE)
    assert len(done) == len(ids)
    for task in done:
        [attempt] = task.attempts
        assert task.result == {"worker": attempt["worker"]} == {"worker": f"racer/{claimer[task.id]}"}
    repo.fsck()


# ---------------------------------------------------------------- one writer, each transport


def test_claim_done_fail_over_transport(remote_url: str, remote_repo: RemoteRepo) -> None:
    with Queue.init(remote_url, worker="box/0") as q:
        ids = q.submit([{"args": {"n": i}, "priority": i, "max_attempts": 1} for i in range(3)])
        first = q.claim()
        assert first is not None and first.id == ids[2]
        first.done({"acc": 0.9})
        second = q.claim()
        assert second is not None and second.id == ids[1]
        second.fail("boom", exit_code=2)
        third = q.claim()
        assert third is not None and third.id == ids[0]
        assert q.claim() is None
        assert [t.id for t in q.tasks(State.RUNNING)] == [ids[0]]
    assert remote_repo.states() == {ids[2]: "done", ids[1]: "failed", ids[0]: "running"}
    assert remote_repo.log()[-5:] == [
        f"claim {ids[2]} by box/0 (attempt 1)",
        f"done {ids[2]} by box/0 (attempt 1)",
        f"claim {ids[1]} by box/0 (attempt 1)",
        f"fail {ids[1]} by box/0 (attempt 1): out of attempts",
        f"claim {ids[0]} by box/0 (attempt 1)",
    ]
    remote_repo.fsck()


def test_stale_token_over_transport(remote_url: str, remote_repo: RemoteRepo) -> None:
    with Queue.init(remote_url, worker="box/0") as q:
        [task_id] = q.submit([{"args": {"n": 1}}])
        old = q.claim()
        assert old is not None
        q.requeue([task_id])
        new = q.claim()
        assert new is not None and new.token != old.token
        tip = remote_repo.tip()
        with pytest.raises(NotHeld):
            old.done()
        assert remote_repo.tip() == tip
        new.done()
    assert remote_repo.states() == {task_id: "done"}


def test_processes_sharing_a_cache_build_on_each_others_landings(remote_repo: RemoteRepo) -> None:
    """A push from the cache a moment ago is the base of the next process's try, unfetched;
    a hand edit in between makes that push lose, and the try is redone on a fetched view."""
    url = str(remote_repo.path)
    with Queue.init(url, worker="box/0") as first, Queue.open(url, worker="box/1") as second:
        ids = first.submit([{"args": {"n": i}} for i in range(3)])
        fetches = second.store.fetches
        run = second.claim()
        assert run is not None and run.id == ids[0]
        assert second.store.fetches == fetches, "built on the submit that landed from this cache"
        remote_repo.person_commit({"pending/zz-by-hand.yaml": "args: {n: 9}\n"}, "a person adds a task")
        before = (first.store.rejected_pushes, first.store.fetches)
        run = first.claim()
        assert run is not None and run.id == ids[1]
        after = (first.store.rejected_pushes, first.store.fetches)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1), "lost on the unfetched view, won fetched"
    assert remote_repo.log()[-2:] == ["a person adds a task", f"claim {ids[1]} by box/0 (attempt 1)"]
    assert remote_repo.states()["zz-by-hand"] == "pending"


def test_a_one_try_transaction_does_not_wait_for_the_caches_turn(remote_repo: RemoteRepo) -> None:
    """A worker with runs in hand tries once: while another process sharing the cache holds its
    turn, that is a lost race (run the next task meanwhile), and nothing is pushed."""
    url = str(remote_repo.path)
    with Queue.init(url, worker="box/0") as first, Queue.open(url, worker="box/1") as second:
        ids = first.submit([{"args": {"n": i}} for i in range(2)])
        tip = remote_repo.tip()
        with first.store.turn(), pytest.raises(LostRace, match="on this machine"):
            second.claim_batch(1, patient=False)
        assert remote_repo.tip() == tip
        [run] = second.claim_batch(1, patient=False)
        assert run.id == ids[0]
    assert remote_repo.states() == {ids[0]: "running", ids[1]: "pending"}


def test_a_cache_on_a_file_system_without_locks_still_works(
    queue: Queue, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some network mounts refuse flock (ENOLCK): the worker then races like one on its own."""

    def no_locks(fd: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    [task_id] = queue.submit([{"args": {"n": 1}}])
    run = queue.claim()
    assert run is not None and run.id == task_id
    run.done()
    assert remote_repo.states() == {task_id: "done"}


def test_waiting_for_an_unreachable_remote_leaves_the_caches_turn_to_others(
    remote_repo: RemoteRepo, tmp_path: Path
) -> None:
    """A try that cannot fetch waits outside the cache's turn: the other workers of the
    machine can push (or stop) meanwhile. Checked at each pause, through the injected sleep."""
    make_bare_repo(remote_repo.path)
    server = GitDaemon(remote_repo.path.parent)
    server.start()
    try:
        url = server.url("queue.git")
        with Queue.init(url, worker="setup/0", cache=tmp_path / "setup-cache") as setup:
            [task_id] = setup.submit([{"args": {"n": 1}}])
        server.stop()
        pauses: list[float] = []
        cache = tmp_path / "cache"
        # The branch is named: with none, a Queue asks the (stopped) remote's HEAD for it first.
        with Queue(url, worker="box/1", cache=cache, branch="main") as other:

            def sleep(seconds: float) -> None:
                with other.store.turn(wait=False):  # CacheBusy if the waiting try kept the turn
                    pauses.append(seconds)
                if len(pauses) == 2:
                    server.start()

            with Queue(url, worker="box/0", cache=cache, sleep=sleep, branch="main") as q:
                run = q.claim()
        assert len(pauses) == 2
        assert run is not None and run.id == task_id
    finally:
        server.stop()
    assert remote_repo.states() == {task_id: "running"}


# ---------------------------------------------------------------- lost races, made to happen


def test_a_lost_race_is_rebuilt_on_the_new_tip(remote_url: str, remote_repo: RemoteRepo, tmp_path: Path) -> None:
    """Two machines (own caches) claim at once: the slower push is rejected and rebuilt."""
    with (
        Queue.init(remote_url, worker="slow/0", cache=tmp_path / "cache-a") as slow,
        Queue.open(remote_url, worker="fast/0", cache=tmp_path / "cache-b") as fast,
    ):
        ids = slow.submit([{"args": {"n": i}} for i in range(2)])
        real_push = slow.store.push
        interleaved: list[str] = []
        settled = watch_settling(slow.store)

        def push_after_the_other(new: str, old: str | None, **options: Any) -> PushOutcome:
            if not interleaved:  # the other worker claims between our fetch and our push
                run = fast.claim()
                assert run is not None
                interleaved.append(run.id)
            return real_push(new, old, **options)

        slow.store.push = push_after_the_other  # type: ignore[method-assign]
        pushes, rejected = slow.store.pushes, slow.store.rejected_pushes
        run = slow.claim()
        assert interleaved == [ids[0]] and run is not None and run.id == ids[1]
        assert (slow.store.pushes - pushes, slow.store.rejected_pushes - rejected) == (2, 1)
        assert settled == [], "a rejection must be recognised as a lost race, not an unknown outcome"
    counts = actions(remote_repo)
    assert counts[("claim", ids[0])] == counts[("claim", ids[1])] == 1
    assert remote_repo.log()[-2:] == [f"claim {ids[0]} by fast/0 (attempt 1)", f"claim {ids[1]} by slow/0 (attempt 1)"]
    assert remote_repo.states() == dict.fromkeys(ids, "running")


def test_identical_work_on_one_tip_makes_distinct_commits(remote_url: str, remote_repo: RemoteRepo) -> None:
    """Same worker name, same clock, same parent: the commits still differ (a nonce), so the
    second push is rejected instead of "succeeding" as up to date."""
    frozen = 1_700_000_000.0
    with (
        Queue.init(remote_url, worker="twin/0", clock=lambda: frozen) as one,
        Queue.open(remote_url, worker="twin/0", clock=lambda: frozen) as two,
    ):
        snap = one.snapshot()
        change = Change(subject="the same change", files={"notes/probe.txt": b"same\n"})
        first, second = one._commit(snap, change), two._commit(snap, change)
        assert first != second
        assert one.store.push(first, snap.tip) is PushOutcome.LANDED
        assert two.store.push(second, snap.tip) is PushOutcome.LOST_RACE
    assert remote_repo.tip() == first
    assert remote_repo.count() == 2


# ---------------------------------------------------------------- pushes whose outcome is unknown


def install_hook(repo: Path, name: str, script: str) -> Path:
    """A server hook (``script`` is a POSIX shell script); its parent is ``git receive-pack``."""
    hook = repo / "hooks" / name
    hook.write_text("#!/bin/sh\n" + script)
    hook.chmod(0o755)
    return hook


def watch_settling(store: Any) -> list[PushOutcome]:
    """Record what each unknown push outcome was settled as (by fetching)."""
    outcomes: list[PushOutcome] = []
    real = store.settle

    def settle(new: str) -> PushOutcome:
        outcomes.append(real(new))
        return outcomes[-1]

    store.settle = settle
    return outcomes


def test_push_that_landed_but_was_never_confirmed(remote_url: str, remote_repo: RemoteRepo) -> None:
    """The server updates the branch, then dies before it can say so: the worker fetches,
    finds its own commit on the branch, and counts the claim as made (no second claim)."""
    with Queue.init(remote_url, worker="box/0") as q:
        ids = q.submit([{"args": {"n": i}} for i in range(2)])
        # reference-transaction runs inside receive-pack once the branch is updated
        hook = install_hook(
            remote_repo.path, "reference-transaction", '[ "$1" = committed ] || exit 0\nrm -f "$0"\nkill -9 $PPID\n'
        )
        pushes, rejected = q.store.pushes, q.store.rejected_pushes
        settled = watch_settling(q.store)
        run = q.claim()
        assert not hook.exists(), "the server must have been cut off mid-push"
        assert settled == [PushOutcome.LANDED]
        assert run is not None and run.id == ids[0]
        assert (q.store.pushes - pushes, q.store.rejected_pushes - rejected) == (1, 0)
        assert q.get(ids[0]).token == run.token
        run.done()
    counts = actions(remote_repo)
    assert counts[("claim", ids[0])] == 1 and counts[("claim", ids[1])] == 0
    assert remote_repo.states() == {ids[0]: "done", ids[1]: "pending"}
    remote_repo.fsck()


def test_a_cache_that_keeps_going_away_while_a_push_is_settled_is_rebuilt_and_the_claim_counted(
    remote_url: str, remote_repo: RemoteRepo
) -> None:
    """The server dies before it can confirm a push that landed, and the local cache is deleted
    before each of the next fetches, more times than one fetch rebuilds it (a user's ``rm -rf``
    racing the rebuilds): the worker rebuilds it again, learns its claim landed, and claims
    nothing twice (a failure here once stopped a worker mid-drain)."""
    with Queue.init(remote_url, worker="box/0") as q:
        ids = q.submit([{"args": {"n": i}} for i in range(2)])
        hook = install_hook(
            remote_repo.path, "reference-transaction", '[ "$1" = committed ] || exit 0\nrm -f "$0"\nkill -9 $PPID\n'
        )
        settled = watch_settling(q.store)
        real_fetch, deletions = q.store._fetch, [FETCH_HEALS + 1]

        def fetch_into_a_deleted_cache(*args: Any) -> str | None:
            if not hook.exists() and deletions[0] > 0:  # after the push: the cache goes before each fetch
                deletions[0] -= 1
                shutil.rmtree(q.store.path)
            return real_fetch(*args)

        q.store._fetch = fetch_into_a_deleted_cache  # type: ignore[method-assign]
        run = q.claim()
        assert deletions == [0], "the cache must have gone before each of those fetches"
        assert settled == [PushOutcome.LANDED]
        assert run is not None and run.id == ids[0]
        assert q.store.heals > FETCH_HEALS
        run.done()
    counts = actions(remote_repo)
    assert counts[("claim", ids[0])] == 1 and counts[("claim", ids[1])] == 0
    assert remote_repo.states() == {ids[0]: "done", ids[1]: "pending"}
    remote_repo.fsck()


def test_push_that_died_before_landing(remote_url: str, remote_repo: RemoteRepo) -> None:
    """The server dies after receiving the objects but before touching the branch: the worker
    fetches, does not find its commit, and claims again on the tip it sees."""
    with Queue.init(remote_url, worker="box/0") as q:
        ids = q.submit([{"args": {"n": i}} for i in range(2)])
        tip = remote_repo.tip()
        hook = install_hook(remote_repo.path, "pre-receive", 'rm -f "$0"\nkill -9 $PPID\nexit 1\n')
        pushes, rejected = q.store.pushes, q.store.rejected_pushes
        settled = watch_settling(q.store)
        run = q.claim()
        assert not hook.exists(), "the server must have been cut off mid-push"
        assert settled == [PushOutcome.LOST_RACE]
        assert run is not None and run.id == ids[0]
        assert (q.store.pushes - pushes, q.store.rejected_pushes - rejected) == (2, 1)
        assert remote_repo.git("rev-parse", "main~1").strip() == tip
    counts = actions(remote_repo)
    assert counts[("claim", ids[0])] == 1 and counts[("claim", ids[1])] == 0
    assert remote_repo.states() == {ids[0]: "running", ids[1]: "pending"}
    remote_repo.fsck()


# ---------------------------------------------------------------- many processes racing


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "shape"), [("path", "separate"), ("daemon", "combined")])
def test_eight_processes_drain_300_tasks_exactly_once(
    transport: str, shape: str, tmp_path: Path, remote_repo: RemoteRepo, workers: list[Workers]
) -> None:
    make_bare_repo(remote_repo.path)
    with GitDaemon(remote_repo.path.parent) if transport == "daemon" else nullcontext() as server:
        url = server.url("queue.git") if server else str(remote_repo.path)
        with Queue.init(url, worker="submitter/0") as q:
            ids = q.submit([{"args": {"seed": i}} for i in range(300)])
        group = Workers(url, tmp_path, 8, shape)
        workers.append(group)
        events = group.finish(timeout=240)
    assert_drained_exactly_once(remote_repo, str(remote_repo.path), ids, events)
    if shape == "separate":
        assert remote_repo.count() == 2 + 2 * 300
    racers = sum(1 for log in events if any(e["event"] == "done" for e in log))
    if shape == "combined":  # each racer's first claim and last done stand alone; the rest share
        assert remote_repo.count() == 2 + 300 + racers
    rejected = sum(log[-1]["rejected"] for log in events)
    assert racers >= 2 and rejected > 0, "the workers really raced"


@pytest.mark.slow
def test_workers_sharing_a_cache_take_turns(tmp_path: Path, remote_repo: RemoteRepo, workers: list[Workers]) -> None:
    """Workers on one machine share its cache: they push one at a time, each building on the
    commit the one before it landed, so none of their pushes is rejected."""
    make_bare_repo(remote_repo.path)
    url = str(remote_repo.path)
    with Queue.init(url, worker="submitter/0") as q:
        ids = q.submit([{"args": {"seed": i}} for i in range(120)])
    group = Workers(url, tmp_path, 6, "combined", shared_cache=True)
    workers.append(group)
    events = group.finish(timeout=240)
    assert_drained_exactly_once(remote_repo, url, ids, events)
    racers = sum(1 for log in events if any(e["event"] == "done" for e in log))
    assert racers >= 2, "more than one worker took tasks"
    assert [log[-1]["rejected"] for log in events] == [0] * 6


@pytest.mark.slow
def test_claim_and_done_loops_of_the_installed_command(
    tmp_path: Path, remote_repo: RemoteRepo, workers: list[Workers]
) -> None:
    """The black-box check: several shell-style `gitqueue claim` / `gitqueue done` loops over
    git daemon end with every task in done/ exactly once."""
    make_bare_repo(remote_repo.path)
    with GitDaemon(remote_repo.path.parent) as server:
        url = server.url("queue.git")
        with Queue.init(url, worker="submitter/0") as q:
            ids = q.submit([{"args": {"seed": i}} for i in range(16)])
        group = Workers(url, tmp_path, 4, "cli")
        workers.append(group)
        events = group.finish(timeout=180)
    assert_drained_exactly_once(remote_repo, str(remote_repo.path), ids, events)
    assert remote_repo.count() == 2 + 2 * 16


@pytest.mark.slow
def test_workers_recover_when_the_server_goes_away(
    tmp_path: Path, remote_repo: RemoteRepo, workers: list[Workers]
) -> None:
    make_bare_repo(remote_repo.path)
    server = GitDaemon(remote_repo.path.parent)
    server.start()
    try:
        url = server.url("queue.git")
        with Queue.init(url, worker="submitter/0") as q:
            ids = q.submit([{"args": {"seed": i}} for i in range(60)])
        # Two pushes will be in flight when the server goes: the server holds the first at
        # pre-receive (objects sent, branch not moved) and the next right after the branch
        # moved (reference-transaction "committed"). The outage cuts the first off unanswered;
        # the second is still answered "ok" once its hook dies (git 2.39 does so every time).
        held = {"pre-receive": tmp_path / "held-pre", "reference-transaction": tmp_path / "held-ref"}
        for hook, marker in held.items():
            armed = tmp_path / f"armed-{hook}"
            armed.mkdir()
            first = '[ "$1" = committed ] || exit 0\n' if hook == "reference-transaction" else ""
            install_hook(
                remote_repo.path, hook, f"{first}rmdir {armed} 2>/dev/null || exit 0\ntouch {marker}\nexec sleep 600\n"
            )
        group = Workers(url, tmp_path, 4)
        workers.append(group)
        wait_for(lambda: all(m.exists() for m in held.values()), 60, "two pushes to be held by the server")
        wait_for(lambda: remote_repo.count() >= 2 + 20, 60, "the drain to get going")
        server.stop()  # an outage in the middle of the drain: connections in flight are cut
        stopped_at = [len(log) for log in group.events()]
        wait_for(
            lambda: all(
                any(e["event"] == "unreachable" for e in log[seen:]) or (log and log[-1]["event"] == "empty")
                for log, seen in zip(group.events(), stopped_at, strict=True)
            ),
            60,
            "every worker to find the server gone",
        )
        outage_commits = remote_repo.count()
        server.start()
        events = group.finish(timeout=180)
    finally:
        server.stop()
    assert sum(e["event"] == "unreachable" for log in events for e in log) >= 1
    settled = Counter(e["outcome"] for log in events for e in log if e["event"] == "settled")
    # Pushes cut off unanswered were settled by fetching. Whether one of those had already
    # moved the branch is up to timing this test does not control, so "landed" is not
    # required here; both outcomes are settled deterministically in the tests above, and the
    # exactly-once check below fails if any settle was wrong (a landed push taken for lost
    # would finish its task twice).
    assert settled["lost race"] >= 1, "the push cut off before the branch moved is found not to have"
    assert remote_repo.count() > outage_commits, "the drain went on after the outage"
    assert_drained_exactly_once(remote_repo, str(remote_repo.path), ids, events)
