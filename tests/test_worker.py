"""The worker with real processes: ``gitqueue work`` claims, runs, reports, and survives dead workers.

Workers are real ``python -m gitqueue work`` processes, stopped with real signals, over real
remotes; every test asserts on what the queue's remote holds afterwards. Nothing sleeps to
wait for something: tests poll the remote (or a marker file the experiment writes) until a
deadline. Leases are 3 seconds, or run out at once under an injected monotonic clock.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo, poll_until
from typer.testing import CliRunner

from gitqueue import Queue, State, Task
from gitqueue.cli import app
from gitqueue.leftovers import running, stop_leftovers
from gitqueue.queue import Report, Run
from gitqueue.task import parse_task, parse_time
from gitqueue.testing import GitDaemon
from gitqueue.worker import MissingArg, Options, Watch, Worker, expand

REPO = Path(__file__).resolve().parent.parent
LEASE_REFS = "refs/gitqueue/leases"

# A stand-in experiment, driven by its task's args (which it reads from GITQUEUE_ARGS):
#   hold: [1, ...]  attempts that run until released (a file) -- "mid-task" for as long as a test needs
#   stubborn: true  note a SIGINT/SIGTERM but carry on
#   exit: N         exit status
#   result: json | yaml | list | score | none   what it writes to GITQUEUE_RESULT_FILE
# It leaves marker files: <task>.<attempt>.pid when it starts, .stopped (the signal) when stopped.
JOB = r"""
import json, os, pathlib, signal, sys, time

marks = pathlib.Path(sys.argv[1])
task, attempt = os.environ["GITQUEUE_TASK_ID"], os.environ["GITQUEUE_ATTEMPT"]
args = json.loads(os.environ["GITQUEUE_ARGS"])
stem = str(marks / f"{task}.{attempt}")


def mark(suffix, text):
    # Write-then-rename: a test polling for the marker never reads it half written.
    part = pathlib.Path(stem + suffix + ".part")
    part.write_text(text)
    os.replace(part, stem + suffix)


def stopped(signum, frame):
    mark(".stopped", str(signum))
    if not args.get("stubborn"):
        sys.exit(128 + signum)


signal.signal(signal.SIGTERM, stopped)
signal.signal(signal.SIGINT, stopped)
mark(".pid", str(os.getpid()))
print(f"stdout of {task}", flush=True)
print(f"stderr of {task}", file=sys.stderr, flush=True)
if int(attempt) in args.get("hold", []):
    release = pathlib.Path(stem + ".release")
    deadline = time.monotonic() + 60
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
out = pathlib.Path(os.environ["GITQUEUE_RESULT_FILE"])
kind = args.get("result", "json")
if kind == "json":
    env = {k: v for k, v in os.environ.items() if k.startswith("GITQUEUE_")}
    out.write_text(json.dumps({"argv": sys.argv[2:], "env": env}))
elif kind == "yaml":
    out.write_text("# metrics\nscore: 0.5\nname: yaml-result\nnested:\n  depth: 2\n  hist: [1, 2]\n")
elif kind == "list":
    out.write_text("[1, 2, 3]\n")
elif kind == "score":
    out.write_text(json.dumps({"score": args["x"] * 2, "tag": f"x{args['x']}"}))
sys.exit(int(args.get("exit", 0)))
"""


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class WorkerProcess:
    """One ``gitqueue work`` process, its output kept in files."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], folder: Path) -> None:
        self.name = name
        self.popen = popen
        self.folder = folder
        self.log_dir = folder / "logs"

    @property
    def stdout(self) -> str:
        return (self.folder / "stdout").read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return (self.folder / "stderr").read_text(errors="replace")

    def send(self, sig: int) -> None:
        os.kill(self.popen.pid, sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} still runs after {timeout:.0f}s:\n{self.stderr}") from None


class Lab:
    """A queue, the stand-in experiment, and the worker processes started on the queue."""

    def __init__(self, tmp_path: Path, url: str, remote: RemoteRepo) -> None:
        self.tmp = tmp_path
        self.url = url
        self.remote = remote
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        self.job = tmp_path / "job.py"
        self.job.write_text(JOB)
        self.workers: list[WorkerProcess] = []

    def submit(self, *specs: dict[str, Any]) -> list[str]:
        with Queue.open(self.url, worker="submitter") as q:
            return q.submit(specs)

    def command(self, *extra: str) -> list[str]:
        return [sys.executable, str(self.job), str(self.marks), *extra]

    def start(self, name: str, *flags: str, command: list[str] | None = None) -> WorkerProcess:
        """Start ``gitqueue work --worker NAME FLAGS -- COMMAND`` (reaping every half second)."""
        folder = self.tmp / "workers" / name
        folder.mkdir(parents=True)
        argv = [sys.executable, "-m", "gitqueue", "work", "--queue", self.url, "--worker", name]
        argv += ["--log-dir", str(folder / "logs"), "--reap-every", "0.5", *flags, "--"]
        argv += self.command() if command is None else command
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        with open(folder / "stdout", "wb") as out, open(folder / "stderr", "wb") as err:
            popen = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=self.tmp / "work")
        worker = WorkerProcess(name, popen, folder)
        self.workers.append(worker)
        return worker

    def started(self, task_id: str, attempt: int) -> bool:
        return (self.marks / f"{task_id}.{attempt}.pid").exists()

    def stopped_by(self, task_id: str, attempt: int) -> int | None:
        """The signal that stopped an attempt's experiment, if one did."""
        path = self.marks / f"{task_id}.{attempt}.stopped"
        return int(path.read_text()) if path.exists() else None

    def release(self, task_id: str, attempt: int) -> None:
        (self.marks / f"{task_id}.{attempt}.release").write_text("")

    def task(self, task_id: str) -> Task:
        """The task as the remote's branch holds it."""
        [path] = self.remote.locations()[task_id]
        return parse_task(self.remote.read(path).encode(), path=path)

    def lease_refs(self) -> list[str]:
        return self.remote.git("for-each-ref", "--format=%(refname)", LEASE_REFS).split()

    def subjects(self, task_id: str | None = None) -> list[str]:
        subjects = self.remote.log()
        return subjects if task_id is None else [s for s in subjects if re.search(rf"\b{re.escape(task_id)}\b", s)]

    def cleanup(self) -> None:
        """Kill whatever a test left running: workers and experiments."""
        for worker in self.workers:
            if worker.popen.poll() is None:
                worker.popen.kill()
            worker.popen.wait(10)
        for pid_file in self.marks.glob("*.pid"):
            pid = int(pid_file.read_text() or 0)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.job).encode() in cmdline:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def make_lab(tmp_path: Path, bare_remote: Path, remote_repo: RemoteRepo) -> Iterator[Callable[[str], Lab]]:
    """Labs on an initialised queue at a URL of the test's choosing; no process outlives the test."""
    labs: list[Lab] = []

    def make(url: str) -> Lab:
        Queue.init(url, worker="init").close()
        lab = Lab(tmp_path, url, remote_repo)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.cleanup()


@pytest.fixture
def lab(make_lab: Callable[[str], Lab], bare_remote: Path) -> Lab:
    """A lab on a queue whose remote is a bare repository reached by path."""
    return make_lab(str(bare_remote))


def attempt_summary(task: Task) -> list[tuple[int, str, str]]:
    return [(a["attempt"], a["outcome"], a["worker"]) for a in task.attempts]


# ---------------------------------------------------------------- dead workers


def as_if_on_another_machine(tmp_path: Path) -> None:
    """Make the workers' notes in the cache name another host, as a cache shared over the
    network would hold them: their pids mean nothing here."""
    for note in (tmp_path / "cache" / "runs" / "workers").glob("*.json"):
        note.write_text(json.dumps({**json.loads(note.read_text()), "host": "another-machine"}))


def test_sigkilled_worker_task_comes_back_after_its_lease_and_another_worker_finishes_it(
    lab: Lab, tmp_path: Path
) -> None:
    """The dead worker ran on another machine: only its lease tells that it is gone."""
    lab.submit({"id": "victim", "args": {"hold": [1]}, "lease": 3})
    w1 = lab.start("w1")
    poll_until(lambda: lab.started("victim", 1), what="the first attempt to start")
    poll_until(lab.lease_refs, what="w1's first heartbeat")
    assert lab.remote.states()["victim"] == "running"

    w1.send(signal.SIGKILL)
    assert w1.wait() == -signal.SIGKILL
    as_if_on_another_machine(tmp_path)
    # Its experiment dies with it rather than run on beside the rerun.
    assert poll_until(lambda: lab.stopped_by("victim", 1), what="the orphaned experiment to stop") == signal.SIGTERM

    w2 = lab.start("w2", "--wait", "--max-tasks", "1")
    assert w2.wait() == 0
    assert "victim: lease expired: no sign of life from w1 for" in w2.stderr

    task = lab.task("victim")
    assert task.state is State.DONE and task.result["env"]["GITQUEUE_ATTEMPT"] == "2"
    assert attempt_summary(task) == [(1, "reaped", "w1"), (2, "done", "w2")]
    assert "lease expired: no sign of life from w1" in task.attempts[0]["error"]
    assert lab.subjects("victim") == [
        "submit victim",
        "claim victim by w1 (attempt 1)",
        "reap victim by w1 (attempt 1): will retry",
        "claim victim by w2 (attempt 2)",
        "done victim by w2 (attempt 2)",
    ]
    [reap] = [body for body in lab.remote.log("%B") if body.startswith("reap victim")]
    assert "Gitqueue-Worker: w2" in reap
    assert lab.lease_refs() == []
    lab.remote.fsck()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")
def test_the_next_worker_stops_what_a_sigkilled_workers_command_started(lab: Lab, tmp_path: Path) -> None:
    """The kernel tells a dead worker's command to stop, but not the processes that command
    started (a wrapper script's python, say): the next worker on the machine stops those."""
    lab.submit({"id": "wrapped", "args": {}, "lease": 600})
    pid_file = lab.marks / "grandchild.pid"
    script = f"sleep 600 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    w1 = lab.start("w1", command=["sh", "-c", script])
    pid = int(poll_until(lambda: pid_file.exists() and pid_file.read_text(), what="the script to start its sleep"))
    try:
        runs = tmp_path / "cache" / "runs"
        poll_until(lambda: list(runs.glob("*.json")), what="w1 to note its command")
        w1.send(signal.SIGKILL)
        assert w1.wait() == -signal.SIGKILL
        assert running(pid), "the sleep the script started outlives the worker and the script"

        w2 = lab.start("w2")  # nothing to claim: it looks around once and exits
        assert w2.wait() == 0
        assert "stopping 1 process(es) of wrapped that dead worker w1 left running" in w2.stderr
        poll_until(lambda: not running(pid), what="the leftover sleep to stop")
        assert stop_leftovers(runs, grace=10) == [] and list(runs.glob("*.json")) == [], "nothing of it runs now"
        # Its worker is gone from this machine: the task came back at once, not after its lease.
        assert "wrapped: worker w1 is gone: its process on this machine ended; returned to the queue" in w2.stderr
        assert attempt_summary(lab.task("wrapped")) == [(1, "reaped", "w1"), (2, "done", "w2")]
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


def test_black_box_workers_over_git_daemon_drain_a_sweep_while_one_is_sigkilled(
    make_lab: Callable[[str], Lab], tmp_path: Path
) -> None:
    with GitDaemon(tmp_path / "srv") as daemon:
        lab = make_lab(daemon.url("queue.git"))
        gq = [sys.executable, "-m", "gitqueue"]
        subprocess.run([*gq, "init", lab.url], cwd=tmp_path / "work", check=True, capture_output=True)
        sweep = [*gq, "submit", "--queue", lab.url, "--lease", "3", "--grid", "x=1,2,3", "--grid", "y=a,b,c"]
        subprocess.run([*sweep, "result=score"], check=True, capture_output=True)
        victim = [*gq, "submit", "--queue", lab.url, "--id", "victim", "--lease", "3", "--priority", "9"]
        subprocess.run([*victim, "x=0", "y=z", "hold=[1]", "result=score"], check=True, capture_output=True)
        marathon = [*gq, "submit", "--queue", lab.url, "--id", "marathon", "--lease", "3", "--priority", "8"]
        subprocess.run([*marathon, "x=-1", "y=m", "hold=[1]", "result=score"], check=True, capture_output=True)
        with Queue.open(lab.url) as q:
            ids = [t.id for t in q.tasks()]
        assert len(ids) == 11

        workers = {name: lab.start(name, "--wait", command=lab.command("{x}", "{y}")) for name in ("w0", "w1", "w2")}
        poll_until(lambda: lab.started("victim", 1), what="the victim's first attempt to start")
        holder = lab.task("victim").run["worker"]
        workers[holder].send(signal.SIGKILL)
        assert workers.pop(holder).wait() == -signal.SIGKILL

        poll_until(lambda: lab.remote.states()["victim"] == "done", what="the victim's rerun", timeout=30)

        def marathon_past_its_lease() -> bool:  # (the dead worker may have held it, never started)
            run = lab.task("marathon").run
            return run is not None and run["worker"] != holder and time.time() - parse_time(run["claimed_at"]) > 3.5

        poll_until(marathon_past_its_lease, what="the marathon to run past its lease", timeout=30)
        # The marathon has run for longer than its lease, beside workers that reap: still held.
        assert attempt_summary(lab.task("marathon")) == [] and lab.task("marathon").state is State.RUNNING
        lab.release("marathon", 1)
        poll_until(lambda: set(lab.remote.states().values()) == {"done"}, what="every task to be done", timeout=30)
        for worker in workers.values():
            worker.send(signal.SIGTERM)  # idle: nothing to give back
        assert {name: w.wait() for name, w in workers.items()} == dict.fromkeys(workers, 128 + signal.SIGTERM)

    assert lab.remote.states() == dict.fromkeys(ids, "done")
    subjects = lab.subjects()
    messages = lab.remote.log("%B")  # a batch's commit lists each state change in its body
    for task_id in ids:
        assert sum(f"done {task_id} by " in m for m in messages) == 1, task_id
        task = lab.task(task_id)
        assert task.result == {"score": task.args["x"] * 2, "tag": f"x{task.args['x']}"}
    victim_task = lab.task("victim")
    assert [a["outcome"] for a in victim_task.attempts] == ["reaped", "done"]
    assert victim_task.attempts[0]["worker"] == holder and victim_task.attempts[1]["worker"] != holder
    assert f"reap victim by {holder} (attempt 1): will retry" in subjects
    [marathon_run] = lab.task("marathon").attempts
    assert marathon_run["outcome"] == "done" and marathon_run["duration"] > 3
    assert lab.stopped_by("victim", 1) == signal.SIGTERM
    assert lab.lease_refs() == []
    lab.remote.fsck()


def test_reap_judges_leases_by_its_own_monotonic_clock(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"id": "dead", "args": {}, "lease": 5}, {"id": "alive", "args": {}, "lease": 5}])
    runs = {run.id: run for run in (queue.claim(), queue.claim()) if run is not None}
    alive = runs["alive"]
    assert queue.store.heartbeat(runs["dead"].token, parent=None, message="beat\n", author=queue.identity)
    clock = FakeClock()
    with Queue(str(bare_remote), worker="reaper", monotonic=clock) as reaper:
        assert reaper.reap() == []  # first sight of both runs
        heartbeat: str | None = None
        for _ in range(10):  # a live run is never reclaimed, however long it runs
            clock.now += 4
            heartbeat = queue.store.heartbeat(alive.token, parent=heartbeat, message="beat\n", author=queue.identity)
            assert heartbeat is not None
            assert reaper.reap() == (["dead"] if clock.now == 1008 else [])
    tasks = {t.id: t for t in queue.tasks()}
    assert tasks["dead"].state is State.PENDING and tasks["alive"].state is State.RUNNING
    [reaped] = tasks["dead"].attempts
    assert reaped["outcome"] == "reaped" and reaped["worker"] == "test-box/0"
    assert reaped["error"].startswith("lease expired: no sign of life from test-box/0 for 8s (lease 5s)")
    assert tasks["dead"].attempts_spent == 1


def test_reap_trusts_a_heartbeat_timestamp_within_max_skew(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"id": "t", "args": {}, "lease": 5, "max_attempts": 1}])
    run = queue.claim()
    assert run is not None
    queue.store.heartbeat(run.token, parent=None, message="beat\n", author=queue.identity)
    skewed = FakeClock()
    skewed.now = time.time() + 5 + 20  # this machine's clock runs 20 s ahead of the worker's
    with Queue(str(bare_remote), worker="ahead", clock=skewed, max_skew=30) as reaper:
        assert reaper.reap() == []  # never watched, and within lease + max_skew
        skewed.now += 11
        assert reaper.reap() == ["t"]  # silent for more than lease + max_skew by the heartbeat's time
    task = queue.get("t")
    assert task.state is State.FAILED and attempt_summary(task) == [(1, "reaped", "test-box/0")]
    assert subprocess.run(["git", "for-each-ref", LEASE_REFS], cwd=bare_remote, capture_output=True).stdout == b""


def test_gitqueue_reap_returns_a_silent_run_by_its_claim_time(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {}, "lease": 1})
    with Queue.open(lab.url, worker="ghost") as ghost:
        assert ghost.claim() is not None  # and never a heartbeat

    def reap() -> str:
        result = CliRunner().invoke(app, ["reap", "--queue", lab.url, "--max-skew", "0"])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("reaped "), result.stdout
        if result.stdout.startswith("reaped 0"):  # not yet: it says what it left, and until when
            assert re.search(
                r"\n  t \(worker ghost, attempt 1\): no heartbeat yet; lease runs out \S+ \(", result.stdout
            )
            return ""
        return result.stdout

    said = poll_until(reap, what="the lease to run out", timeout=10).splitlines()
    assert said[0] == "reaped 1: t"
    assert said[1].startswith("  t: lease expired: no sign of life from ghost for")
    assert said[1].endswith("never started: no attempt spent") and len(said) == 2
    task = lab.task("t")  # no heartbeat, no start noted: it never started, and spends nothing
    assert task.state is State.PENDING and task.attempts == [] and task.next_attempt == 1
    assert lab.subjects("t")[-1] == "reap t by ghost (attempt 1): never started, no attempt spent"


def test_a_busy_worker_reaps_as_it_goes(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"id": "z-dead", "args": {}, "lease": 5}])
    assert queue.claim() is not None  # and this run never shows a sign of life again
    queue.submit([{"id": f"busy-{i}", "args": {}, "priority": 1} for i in range(3)])
    clock = FakeClock()
    log = io.StringIO()

    def runner(run: Run, watch: Watch) -> Report:
        clock.now += 10  # each task takes ten (fake) seconds
        return Report(run.id, run.token, "done", result={"i": run.id})

    with Queue(str(bare_remote), worker="busy", monotonic=clock) as q:
        options = Options(reap_every=0, max_tasks=3)
        assert Worker(q, options, runner=runner, log=log).run() == 0
    task = queue.get("z-dead")
    assert task.state is State.PENDING and task.attempts == [], log.getvalue()  # it never sent a heartbeat
    assert "z-dead: lease expired: no sign of life from test-box/0" in log.getvalue()


def test_a_run_that_waited_in_its_batch_past_its_lease_is_not_started(queue: Queue, bare_remote: Path) -> None:
    queue.submit(
        [
            {"id": "a-quick", "args": {}, "priority": 3},
            {"id": "b-slow", "args": {}, "priority": 2},
            {"id": "c-short-lease", "args": {}, "priority": 1, "lease": 3},
        ]
    )
    clock = FakeClock()
    ran: list[tuple[str, int]] = []
    log = io.StringIO()

    def runner(run: Run, watch: Watch) -> Report:
        ran.append((run.id, run.attempt))
        if run.id == "b-slow":  # claimed in one batch with c-short-lease, which waits meanwhile...
            with Queue(str(bare_remote), worker="reaper", monotonic=clock) as reaper:
                assert reaper.reap() == []
                clock.now += 4  # ...and stays silent past its lease, so another worker reaps it
                assert reaper.reap() == ["c-short-lease"]
            deadline = time.monotonic() + 1.2  # b-slow works for longer than c's heartbeat interval
            while time.monotonic() < deadline:
                time.sleep(0.05)
        return Report(run.id, run.token, "done")

    with Queue(str(bare_remote), worker="batcher") as q:
        assert Worker(q, Options(reap_every=3600), runner=runner, log=log).run() == 0
    assert ran == [("a-quick", 1), ("b-slow", 1), ("c-short-lease", 1)], log.getvalue()  # never two runs at once
    task = queue.get("c-short-lease")  # reaped while it waited, never started: no attempt spent
    assert [(a["attempt"], a["outcome"]) for a in task.attempts] == [(1, "done")]


# ---------------------------------------------------------------- stopping a run


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_returns_the_task_without_spending_an_attempt(lab: Lab, sig: int) -> None:
    lab.submit({"id": "long", "args": {"hold": [1]}, "lease": 3})
    worker = lab.start("w1", "--grace", "5")
    poll_until(lambda: lab.started("long", 1), what="the run to start")
    commits = lab.remote.count()
    poll_until(lab.lease_refs, what="a heartbeat")
    assert lab.remote.count() == commits  # heartbeats leave the branch's history alone

    worker.send(sig)
    assert worker.wait() == 128 + sig
    assert lab.stopped_by("long", 1) == sig  # forwarded to the experiment
    task = lab.task("long")
    assert task.state is State.PENDING and attempt_summary(task) == [(1, "interrupted", "w1")]
    assert task.attempts_spent == 0
    assert lab.subjects("long")[-1] == "return long by w1 (attempt 1)"
    assert lab.lease_refs() == []
    assert f"got {signal.Signals(sig).name}" in worker.stderr
    with Queue.open(lab.url) as q:
        again = q.claim()
    assert again is not None and again.attempt == 2


def test_a_second_ctrl_c_cuts_the_grace_short_and_still_returns_the_task(lab: Lab) -> None:
    lab.submit({"id": "stubborn", "args": {"hold": [1], "stubborn": True}, "lease": 3})
    worker = lab.start("w1", "--grace", "60")
    poll_until(lambda: lab.started("stubborn", 1), what="the run to start")
    worker.send(signal.SIGINT)
    poll_until(lambda: lab.stopped_by("stubborn", 1), what="the experiment to be told")
    worker.send(signal.SIGINT)
    assert worker.wait(timeout=15) == 130
    pid = int((lab.marks / "stubborn.1.pid").read_text())
    assert not Path(f"/proc/{pid}").exists()  # killed, and reaped by its worker
    task = lab.task("stubborn")
    assert task.state is State.PENDING and attempt_summary(task) == [(1, "interrupted", "w1")]
    assert "stopping the run now" in worker.stderr


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")
def test_what_the_command_started_is_killed_after_the_grace_period_too(lab: Lab) -> None:
    """The command ends at SIGTERM, but a process it started ignores SIGTERM: it gets SIGKILL
    once the grace period is over, instead of running on after its worker has stopped."""
    lab.submit({"id": "wrapped", "args": {}, "lease": 600})
    pid_file = lab.marks / "stubborn.pid"
    script = f"(trap '' TERM; exec sleep 600) & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait"
    worker = lab.start("w1", "--grace", "1", command=["sh", "-c", script])
    pid = int(poll_until(lambda: pid_file.exists() and pid_file.read_text(), what="the script to start its sleep"))
    try:
        worker.send(signal.SIGTERM)
        assert worker.wait() == 128 + signal.SIGTERM
        assert not running(pid), "killed before the worker exited"
        assert lab.remote.states()["wrapped"] == "pending"
    finally:
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["cli", "by hand"])
def test_cancelling_a_running_task_stops_its_experiment_and_the_worker_goes_on(lab: Lab, how: str) -> None:
    lab.submit({"id": "a-long", "args": {"hold": [1]}, "lease": 3, "priority": 1}, {"id": "b-next", "args": {}})
    worker = lab.start("w1", "--grace", "3")
    poll_until(lambda: lab.started("a-long", 1), what="the run to start")
    poll_until(lab.lease_refs, what="a heartbeat")
    cancelled_at = time.monotonic()
    if how == "cli":
        result = CliRunner().invoke(app, ["cancel", "a-long", "--queue", lab.url])
        assert result.exit_code == 0, result.output
    else:
        text = lab.remote.read("running/a-long.yaml")
        lab.remote.person_commit({"running/a-long.yaml": None, "cancelled/a-long.yaml": text}, "drop a-long")
    assert poll_until(lambda: lab.stopped_by("a-long", 1), what="the experiment to stop") == signal.SIGTERM
    assert time.monotonic() - cancelled_at < 1 + 4  # within a heartbeat (lease / 3), give or take a busy machine

    assert worker.wait() == 0
    assert lab.remote.states() == {"a-long": "cancelled", "b-next": "done"}
    assert "a-long: cancelled; run stopped, nothing reported" in worker.stderr
    assert lab.task("b-next").attempts[0]["worker"] == "w1"
    if how == "cli":
        assert attempt_summary(lab.task("a-long")) == [(1, "cancelled", "w1")]
    assert lab.lease_refs() == []


def test_a_cancel_stops_the_run_before_its_first_heartbeat_and_is_said_once(lab: Lab) -> None:
    """A fetch is cheap, a push is not: the worker looks for a cancel every few seconds, long
    before a heartbeat is due (a lease of 10 minutes beats every 30 s)."""
    lab.submit({"id": "a-long", "args": {"hold": [1]}, "lease": 600, "priority": 1}, {"id": "b-next", "args": {}})
    worker = lab.start("w1", "--grace", "3")
    poll_until(lambda: lab.started("a-long", 1), what="the run to start")
    result = CliRunner().invoke(app, ["cancel", "a-long", "--queue", lab.url])
    assert result.exit_code == 0, result.output
    assert poll_until(lambda: lab.stopped_by("a-long", 1), what="the experiment to stop") == signal.SIGTERM
    assert worker.wait() == 0
    assert lab.lease_refs() == [], "it stopped before its first heartbeat was due"
    assert lab.remote.states() == {"a-long": "cancelled", "b-next": "done"}
    said = [line for line in worker.stderr.splitlines() if "a-long" in line]
    assert [line for line in said if "cancelled" in line] == ["[w1] a-long: cancelled; run stopped, nothing reported"]
    assert not any("✓" in line or "no longer holds" in line for line in said), said


def test_a_cancel_that_lands_as_the_run_ends_is_not_told_as_done(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {"hold": [1], "stubborn": True}, "lease": 600})
    worker = lab.start("w1", "--grace", "60")
    poll_until(lambda: lab.started("t", 1), what="the run to start")
    with Queue.open(lab.url, worker="person") as q:
        q.cancel(["t"])
    lab.release("t", 1)  # it ends by itself, done, about when the worker notices the cancel
    assert worker.wait() == 0
    assert "✓ t done" not in worker.stderr
    assert re.search(r"t: cancelled; (run stopped|its run had ended), nothing reported", worker.stderr), worker.stderr
    assert lab.remote.states() == {"t": "cancelled"} and lab.task("t").result is None


def test_a_late_report_from_a_reaped_run_changes_nothing(lab: Lab) -> None:
    # A lease of 60 s: the worker's first heartbeat would come after 20 s, long after this test.
    lab.submit({"id": "slow", "args": {"hold": [1]}, "lease": 60})
    worker = lab.start("w1")
    poll_until(lambda: lab.started("slow", 1), what="the run to start")
    clock = FakeClock()
    with Queue.open(lab.url, worker="reaper", monotonic=clock) as reaper:
        assert reaper.reap() == []
        clock.now += 61
        assert reaper.reap() == ["slow"]
    with Queue.open(lab.url, worker="w2") as other:
        second = other.claim()
        assert second is not None and (second.id, second.attempt) == ("slow", 2)
        tip = lab.remote.tip()

        lab.release("slow", 1)  # the first run finishes and reports
        assert worker.wait() == 0
        assert lab.remote.tip() == tip
        # It finds out as its run ends (a look at the branch), or else when it reports.
        told = "slow: its task is held by another run now (of w2), no longer by this one; its run had ended"
        lost = r"run \w+ no longer holds task slow: run \w+ of w2 holds it now; nothing changed"
        assert told in worker.stderr or re.search(lost, worker.stderr), worker.stderr
        held = lab.task("slow")
        assert held.state is State.RUNNING and held.token == second.token
        assert attempt_summary(held) == [(1, "reaped", "w1")]
        second.done({"by": "w2"})
    task = lab.task("slow")
    assert task.result == {"by": "w2"} and attempt_summary(task) == [(1, "reaped", "w1"), (2, "done", "w2")]
    assert [s for s in lab.subjects("slow") if s.startswith("done")] == ["done slow by w2 (attempt 2)"]


def test_a_running_task_file_broken_by_hand_does_not_stop_the_worker(lab: Lab) -> None:
    lab.submit({"id": "a-broken", "args": {"hold": [1]}, "lease": 60, "priority": 1}, {"id": "b-next", "args": {}})
    worker = lab.start("w1")
    poll_until(lambda: lab.started("a-broken", 1), what="the run to start")
    lab.remote.person_commit({"running/a-broken.yaml": "args: [not closed\n"}, "oops")
    lab.release("a-broken", 1)
    assert worker.wait() == 0, worker.stderr
    assert lab.remote.read("running/a-broken.yaml") == "args: [not closed\n"  # left for the person to mend
    assert lab.remote.states()["b-next"] == "done"
    assert "a-broken: cannot record how the run ended" in worker.stderr


# ---------------------------------------------------------------- running commands


def test_max_failures_stops_after_consecutive_failures_only(lab: Lab) -> None:
    lab.submit(
        {"id": "f1", "args": {"exit": 3}, "priority": 5, "max_attempts": 1},
        {"id": "ok", "args": {}, "priority": 4},
        {"id": "f2", "args": {"exit": 3}, "priority": 3, "max_attempts": 1},
        {"id": "f3", "args": {"exit": 4}, "priority": 2, "max_attempts": 1},
        {"id": "f4", "args": {"exit": 5}, "priority": 1, "max_attempts": 1},
    )
    worker = lab.start("w1", "--max-failures", "2")
    assert worker.wait() == 1
    assert lab.remote.states() == {"f1": "failed", "ok": "done", "f2": "failed", "f3": "failed", "f4": "pending"}
    assert "2 failures in a row (--max-failures 2)" in worker.stderr
    failed = lab.task("f3").attempts[0]
    assert failed["exit_code"] == 4 and failed["error"].startswith("exit status 4")
    assert "stdout of f3" in failed["error"] and "stderr of f3" in failed["error"]
    assert lab.task("f4").attempts == []


def test_command_placeholders_env_result_files_and_logs(lab: Lab) -> None:
    model = {"name": "resnet", "depth": 18}
    lab.submit(
        {"id": "t-json", "args": {"result": "json", "model": model, "lr": 0.1, "on": True}},
        {"id": "t-list", "args": {"result": "list", "model": model, "lr": 1, "on": False}},
        {"id": "t-none", "args": {"result": "none", "model": model, "lr": 2, "on": False}},
        {"id": "t-yaml", "args": {"result": "yaml", "model": {"name": "vit", "depth": 12}, "lr": 0.01, "on": True}},
    )
    command = lab.command("--model", "{model.name}", "--depth={model.depth}", "{lr}", "{on}", "{{lit}}", "{model}")
    worker = lab.start("w1", command=command)
    assert worker.wait() == 0
    assert lab.remote.states() == dict.fromkeys(["t-json", "t-list", "t-none", "t-yaml"], "done")

    task = lab.task("t-json")
    assert task.result["argv"] == ["--model", "resnet", "--depth=18", "0.1", "true", "{lit}", json.dumps(model)]
    env = task.result["env"]
    assert (env["GITQUEUE_TASK_ID"], env["GITQUEUE_ATTEMPT"], env["GITQUEUE_WORKER"]) == ("t-json", "1", "w1")
    assert json.loads(env["GITQUEUE_ARGS"]) == task.args
    assert Path(env["GITQUEUE_RESULT_FILE"]) == worker.log_dir / "t-json.1.result"
    assert lab.task("t-yaml").result == {"score": 0.5, "name": "yaml-result", "nested": {"depth": 2, "hist": [1, 2]}}
    assert lab.task("t-list").result is None
    assert re.search(r"t-list: result file ignored: .*t-list\.1\.result holds a list, not a mapping", worker.stderr)
    assert lab.task("t-none").result is None
    assert task.attempts[0]["duration"] > 0

    log = (worker.log_dir / "t-json.1.log").read_text()
    assert log.startswith("# ") and "t-json attempt 1" in log.splitlines()[0]
    assert "stdout of t-json\n" in log and "stderr of t-json\n" in log
    assert "stdout of t-yaml" in worker.stdout and "stderr of t-yaml" in worker.stderr  # streamed live
    assert re.search(r"▶ t-json \(attempt 1\) result=json model=\{.*\} lr=0.1 on=true", worker.stderr)
    assert re.search(r"✓ t-yaml done in \d+\.\ds", worker.stderr)
    assert re.search(r"stopping: 4 done, 0 failed, 0 taken away", worker.stderr)


def test_a_placeholder_naming_a_missing_arg_fails_the_task_without_running_anything(lab: Lab) -> None:
    lab.submit(
        {"id": "good", "args": {"a": 1, "b": {"c": 2}}},
        {"id": "no-b", "args": {"a": 1}, "max_attempts": 3},  # no retry can mend it: failed at once
        {"id": "flat-b", "args": {"a": 1, "b": 5}},
    )
    worker = lab.start("w1", command=lab.command("{a}", "{b.c}"))
    assert worker.wait() == 7  # tasks it ran failed
    assert lab.remote.states() == {"good": "done", "no-b": "failed", "flat-b": "failed"}
    assert lab.task("good").result["argv"] == ["1", "2"]
    for task_id, have in (("no-b", "a"), ("flat-b", "a, b")):
        [attempt] = lab.task(task_id).attempts
        assert attempt["error"] == f"placeholder {{b.c}} names an arg the task lacks (its args: {have})"
        assert "exit_code" not in attempt
        assert not lab.started(task_id, 1) and not (worker.log_dir / f"{task_id}.1.log").exists()
    assert "no-b: placeholder {b.c} names an arg the task lacks (its args: a); not run" in worker.stderr


def test_labels_take_only_tasks_whose_requires_they_satisfy(lab: Lab) -> None:
    lab.submit(
        {"id": "a100", "args": {}, "requires": {"gpu": "a100"}},
        {"id": "v100", "args": {}, "requires": {"gpu": "v100"}},
        {"id": "big", "args": {}, "requires": {"gpu": ["a100", "h100"], "mem": 80}},
        {"id": "bigger", "args": {}, "requires": {"mem": 160}},
        {"id": "anywhere", "args": {}},
    )
    worker = lab.start("w1", "--label", "gpu=a100", "--label", "mem=80")
    assert worker.wait() == 0
    states = {"a100": "done", "v100": "pending", "big": "done", "bigger": "pending", "anywhere": "done"}
    assert lab.remote.states() == states
    assert lab.task("v100").attempts == [] and lab.task("bigger").attempts == []


def test_short_tasks_are_claimed_and_reported_in_batches(lab: Lab) -> None:
    ids = lab.submit(*({"args": {"i": i, "result": "none"}} for i in range(12)))
    before = lab.remote.count()  # init and submit
    worker = lab.start("w1", "--batch-seconds", "1000")  # however slow this machine, batches fill up
    assert worker.wait() == 0
    assert lab.remote.states() == dict.fromkeys(ids, "done")
    # A claim to learn how long a task takes, then the other 11 claimed with its report, then
    # their 11 reports: pushes per task are what forges limit.
    assert lab.remote.count() - before == 3
    messages = lab.remote.log("%B")
    for task_id in ids:
        assert sum(f"claim {task_id} by w1" in m for m in messages) == 1, task_id
        assert sum(f"done {task_id} by w1" in m for m in messages) == 1, task_id
    assert "release" not in "".join(messages)  # nothing held back at the end


def test_finishing_and_the_next_claim_share_one_commit(lab: Lab) -> None:
    ids = lab.submit(*({"args": {"i": i, "result": "none"}} for i in range(5)))
    before = lab.remote.count()  # init and submit
    worker = lab.start("w1", "--max-batch", "1")
    assert worker.wait() == 0
    drained = lab.remote.log("%B")[before:]
    assert len(drained) <= len(ids) + 1  # not a commit per claim and another per finish
    for task_id in ids:  # yet each state change is there, once
        assert sum(f"claim {task_id} by w1 (attempt 1)" in m for m in drained) == 1, drained
        assert sum(f"done {task_id} by w1 (attempt 1)" in m for m in drained) == 1, drained
    first, *middle, last = drained
    assert "claim " in first and "done " not in first
    assert all("done " in m and "claim " in m for m in middle), drained  # a finish carries the next claim
    assert "done " in last and "claim " not in last


def test_a_command_that_cannot_start_returns_the_task_and_stops_the_worker(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {"x": 1}})
    worker = lab.start("w1", command=[str(lab.tmp / "no-such-program"), "{x}"])
    assert worker.wait() == 127
    task = lab.task("t")
    assert task.state is State.PENDING and task.attempts_spent == 0
    assert [a["outcome"] for a in task.attempts] == ["interrupted"]
    assert "cannot start" in worker.stderr


def test_idle_timeout_polls_an_empty_queue_then_exits(lab: Lab) -> None:
    patient = lab.start("w1", "--idle-timeout", "30", "--max-tasks", "1", "--label", "name=w1")
    brief = lab.start("w2", "--idle-timeout", "1")
    started = time.monotonic()
    poll_until(lambda: "nothing to claim; waiting for tasks for up to 30s" in patient.stderr, what="w1 to wait")
    lab.submit({"id": "late", "args": {"result": "none"}, "requires": {"name": "w1"}})  # arrives while w1 polls
    assert patient.wait() == 0
    assert lab.remote.states() == {"late": "done"} and lab.task("late").attempts[0]["worker"] == "w1"
    assert brief.wait() == 0 and time.monotonic() - started >= 1
    waited = ["[w2] nothing to claim; waiting for tasks for up to 1s", "[w2] nothing to claim"]
    assert brief.stderr.splitlines()[:2] == waited


def test_a_tasks_own_cmd_runs_only_on_a_worker_that_opts_in(lab: Lab) -> None:
    own = lab.command("from-task-cmd", "{x}")
    lab.submit({"id": "has-cmd", "args": {"x": 1}, "cmd": own}, {"id": "no-cmd", "args": {"x": 2}})
    opted_in = lab.start("w1", "--allow-task-cmd", command=[])
    assert opted_in.wait() == 0
    assert lab.remote.states() == {"has-cmd": "done", "no-cmd": "pending"}  # it has nothing to run no-cmd with
    assert lab.task("has-cmd").result["argv"] == ["from-task-cmd", "1"]

    lab.submit({"id": "has-cmd-2", "args": {"x": 3}, "cmd": own})
    plain = lab.start("w2", command=lab.command("from-worker", "{x}"))
    assert plain.wait() == 0
    assert lab.task("no-cmd").result["argv"] == ["from-worker", "2"]
    assert lab.task("has-cmd-2").result["argv"] == ["from-worker", "3"]  # its cmd ignored, never run


def test_results_as_csv_and_json_rows(lab: Lab) -> None:
    lab.submit(
        {"id": "r1", "args": {"x": 1, "result": "score"}},
        {"id": "r2", "args": {"x": 2, "result": "score"}},
        {"id": "r3", "args": {"x": 3, "result": "score", "exit": 2}, "max_attempts": 1},
    )
    assert lab.start("w1").wait() == 7  # a task failed
    runner = CliRunner()

    done = runner.invoke(app, ["results", "--queue", lab.url, "--format", "json"])
    assert done.exit_code == 0, done.output
    rows = json.loads(done.stdout)
    assert [r["id"] for r in rows] == ["r1", "r2"]
    for row, x in zip(rows, (1, 2), strict=True):
        assert {k: row[k] for k in ("args.x", "args.result", "result.score", "result.tag", "worker", "attempts")} == {
            "args.x": x, "args.result": "score", "result.score": 2 * x, "result.tag": f"x{x}", "worker": "w1",
            "attempts": 1,
        }  # fmt: skip
        assert row["duration"] > 0

    table = runner.invoke(app, ["results", "--queue", lab.url, "--format", "csv"])
    assert table.exit_code == 0, table.output
    read = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [(r["id"], r["args.x"], r["result.score"], r["worker"], r["attempts"]) for r in read] == [
        ("r1", "1", "2", "w1", "1"),
        ("r2", "2", "4", "w1", "1"),
    ]

    failed = runner.invoke(app, ["results", "--queue", lab.url, "--state", "failed", "--format", "json"])
    assert failed.exit_code == 0, failed.output
    [row] = json.loads(failed.stdout)
    assert row["id"] == "r3" and row["args.x"] == 3 and row["attempts"] == 1 and "result.score" not in row
    assert row["error"] == "stderr of r3"  # the last line of the output's tail
    assert row["state"] == "failed" and row["tags"] == []


def test_results_sorted_by_a_column_top_n_with_state_and_tags(lab: Lab) -> None:
    lab.submit(*({"id": f"r{x}", "args": {"x": x, "result": "score"}, "tags": [f"t{x % 2}"]} for x in (3, 1, 4, 2)))
    lab.submit({"id": "r-none", "args": {"x": 0, "result": "none"}})  # no result.score: always last
    assert lab.start("w1").wait() == 0
    runner = CliRunner()

    def results(*flags: str) -> list[dict[str, Any]]:
        said = runner.invoke(app, ["results", "--queue", lab.url, "--format", "json", *flags])
        assert said.exit_code == 0, said.output
        return json.loads(said.stdout)

    assert [r["id"] for r in results("--sort", "result.score")] == ["r1", "r2", "r3", "r4", "r-none"]
    assert [r["id"] for r in results("--sort", "-result.score")] == ["r4", "r3", "r2", "r1", "r-none"]
    top = results("--sort", "-result.score", "--top", "2")
    assert [(r["id"], r["state"], r["tags"]) for r in top] == [("r4", "done", ["t0"]), ("r3", "done", ["t1"])]
    assert [r["id"] for r in results("--sort", "-id", "--top", "1")] == ["r4"]
    table = runner.invoke(app, ["results", "--queue", lab.url, "--sort", "-args.x", "--top", "1"]).stdout
    assert table.splitlines()[0].split()[:3] == ["id", "state", "tags"]
    assert re.match(r"r4\s+done\s+\[\"t0\"\]\s+4\b", table.splitlines()[1])
    wrong = runner.invoke(app, ["results", "--queue", lab.url, "--sort", "result.acc"])
    assert wrong.exit_code == 2 and "no column 'result.acc'" in wrong.output


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("argv", "expanded"),
    [
        (["--lr={lr}", "{bs}"], ["--lr=0.01", "32"]),
        (["{model.name}/{model.layers}"], ["resnet/[1, 2]"]),
        (["{flag}", "{none}", "{{lr}}", "}}{{"], ["true", "", "{lr}", "}{"]),
        (["{model}"], ['{"name": "resnet", "layers": [1, 2]}']),
        (["no placeholders", "{ not one }"], ["no placeholders", "{ not one }"]),
    ],
)
def test_expand_fills_placeholders_into_argv_items(argv: list[str], expanded: list[str]) -> None:
    args = {"lr": 0.01, "bs": 32, "model": {"name": "resnet", "layers": [1, 2]}, "flag": True, "none": None}
    assert expand(argv, args) == expanded


def test_expand_names_the_missing_arg() -> None:
    with pytest.raises(MissingArg, match=r"placeholder \{model.depth\} names an arg the task lacks \(its args: model"):
        expand(["{model.depth}"], {"model": {"name": "x"}})
    with pytest.raises(MissingArg, match=r"its args: none"):
        expand(["{lr}"], {})


def test_a_worker_that_ran_a_failed_task_exits_7_and_max_failures_defaults_to_5(lab: Lab) -> None:
    lab.submit(*({"id": f"f{i}", "args": {"exit": 3}, "max_attempts": 1} for i in range(7)))
    worker = lab.start("w1")
    assert worker.wait() == 1, worker.stderr  # stopped by the default --max-failures
    assert "5 failures in a row (--max-failures 5)" in worker.stderr
    assert sorted(lab.remote.states().values()) == ["failed"] * 5 + ["pending"] * 2
    no_limit = lab.start("w2", "--max-failures", "0")
    assert no_limit.wait() == 7, no_limit.stderr  # it ran the rest, and they failed too
    assert set(lab.remote.states().values()) == {"failed"}
    lab.submit({"id": "ok", "args": {}})
    assert lab.start("w3").wait() == 0, "every task it ran was done"
    help_text = " ".join(CliRunner().invoke(app, ["work", "--help"]).stdout.split())
    assert "7 if any task it ran failed" in help_text and "[default: 5; x>=0]" in help_text


def test_a_worker_records_the_args_it_ran_with_when_a_person_changed_them_meanwhile(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    queue.submit([{"id": "a-edited", "args": {"lr": 0.1}}, {"id": "b-kept", "args": {"lr": 0.2}, "priority": -1}])
    seen: list[dict[str, Any]] = []

    def runner(run: Run, watch: Watch) -> Report:
        seen.append(dict(run.args))
        if run.id == "a-edited":  # a person's edit lands on running/ while it runs (no hook refuses it)
            text = remote_repo.read("running/a-edited.yaml").replace("lr: 0.1", "lr: 0.5")
            remote_repo.person_commit({"running/a-edited.yaml": text})
        return Report(run.id, run.token, "done", result={"acc": run.args["lr"]})

    with Queue(str(bare_remote), worker="w") as q:
        assert Worker(q, Options(max_batch=1), runner=runner, log=io.StringIO()).run() == 0
    assert seen == [{"lr": 0.1}, {"lr": 0.2}]
    edited, kept = queue.get("a-edited"), queue.get("b-kept")
    assert edited.args == {"lr": 0.5} and edited.attempts[-1]["ran_with"] == {"lr": 0.1}
    assert edited.result == {"acc": 0.1} and "ran_with" not in kept.attempts[-1]
    assert [p.message for p in queue.validate()] == [
        "done/a-edited.yaml: its result came from other args than the file's (it ran with lr=0.1); "
        "requeue it to run the file's args"
    ]


RESULT_WRITER = """
import json, os, sys
kind = sys.argv[1]
deep = 1
for _ in range(31):
    deep = [deep]
result = {"deep": {"x": deep}, "big": {"x": "y" * 1_000_000}, "ok": {"acc": 0.9}}[kind]
with open(os.environ["GITQUEUE_RESULT_FILE"], "w") as f:
    json.dump(result, f)
"""


def test_a_result_that_would_break_the_task_file_is_not_kept_and_the_report_lands(tmp_path: Path) -> None:
    from gitqueue.hooks import install
    from gitqueue.testing import make_bare_repo

    bare = make_bare_repo(tmp_path / "srv" / "hooked.git")
    install(server=bare)  # a done file that breaks the rules would be refused, the task stranded
    with Queue.init(str(bare), worker="setup") as q:
        q.submit([{"id": kind, "args": {"kind": kind}} for kind in ("deep", "big", "ok")])
    log = io.StringIO()
    script = tmp_path / "experiment.py"  # a file: the worker fills {placeholders} in its argv
    script.write_text(RESULT_WRITER)
    command = [sys.executable, str(script), "{kind}"]
    with Queue(str(bare), worker="w") as q:
        assert Worker(q, Options(command=command, log_dir=tmp_path / "logs"), log=log).run() == 0
        tasks = {t.id: t for t in q.tasks()}
        assert {i: t.state for i, t in tasks.items()} == dict.fromkeys(["big", "deep", "ok"], State.DONE)
        assert (tasks["deep"].result, tasks["big"].result, tasks["ok"].result) == (None, None, {"acc": 0.9})
        assert q.validate() == []
    said = log.getvalue()
    assert "deep: result file ignored: " in said and "it nests deeper than 31 levels" in said
    assert "big: result file ignored: " in said and "bytes as YAML, and the task file has room for" in said

    # the library keeps the file valid too, whoever reports: the result is dropped, the reason recorded
    with Queue(str(bare), worker="api") as q:
        q.submit([{"id": "api", "args": {}}])
        run = q.claim()
        assert run is not None
        deep: Any = 1
        for _ in range(40):
            deep = {"d": deep}
        done = run.done(deep)
        assert done.state is State.DONE and done.result is None
        assert done.attempts[-1]["error"].startswith("result not kept: it nests deeper than 31 levels")


ODD_RESULT = """
import os, sys
path = os.environ["GITQUEUE_RESULT_FILE"]
if sys.argv[1] == "folder":
    os.mkdir(path)
else:
    with open(path, "wb") as f:
        f.truncate(2 * 1024 * 1024)  # sparse: big on paper, no disk used
"""


def test_a_result_path_that_is_a_folder_or_too_big_is_ignored_and_the_worker_goes_on(tmp_path: Path) -> None:
    from gitqueue.testing import make_bare_repo

    bare = make_bare_repo(tmp_path / "srv" / "q.git")
    with Queue.init(str(bare), worker="setup") as q:
        q.submit([{"id": kind, "args": {"kind": kind}} for kind in ("folder", "huge")])
    script = tmp_path / "experiment.py"
    script.write_text(ODD_RESULT)
    log = io.StringIO()
    with Queue(str(bare), worker="w") as q:
        options = Options(command=[sys.executable, str(script), "{kind}"], log_dir=tmp_path / "logs")
        assert Worker(q, options, log=log).run() == 0
        assert {t.id: (t.state, t.result) for t in q.tasks()} == {
            "folder": (State.DONE, None),
            "huge": (State.DONE, None),
        }
    assert "folder: result file ignored: " in log.getvalue() and "folder.1.result: not a regular file" in log.getvalue()
    assert "huge.1.result: 2,097,152 bytes; at most 1,048,576 are read" in log.getvalue()
