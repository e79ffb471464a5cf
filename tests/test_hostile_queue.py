"""The hostile corpus pushed, file by file, into a live queue that two real workers drain.

A queue on github.com has no server hook: whatever a person (or anyone with push access)
writes lands. Each hostile file of ``tests/corpus`` is pushed by a person over ``git
daemon`` while two ``gitqueue work`` processes drain 50 valid tasks around it (a few of
them odd but valid, as editors write them; some commands write hostile result files).
Every valid task must be done exactly once, every hostile file left as it was and named
with its reason by ``validate``, no worker may stop early, and nothing may print a
traceback. The same files pushed to a remote with gitqueue's server hook are refused, each
named with its reason.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clones import Clone, remote_blobs, remote_tip
from conftest import poll_until
from corpus import CASES, ODD_VALID, Hostile, stage_submodule, write_corpus

from gitqueue import Queue
from gitqueue.hooks import install
from gitqueue.task import parse_task
from gitqueue.testing import GitDaemon, make_bare_repo

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the gitqueue under test, wherever pip points

# The experiment: a result file for each task; for every seventh a hostile one.
COMMAND = """
import os, sys, time
i = int(sys.argv[1])
time.sleep(0.02)
hostile = {3: "acc: !!timestamp hello\\n", 10: '{"acc": ' + '9' * 5000 + '}'}
with open(os.environ["GITQUEUE_RESULT_FILE"], "w") as f:
    f.write(hostile.get(i % 14, '{"i": %d}' % i))
"""
HOSTILE_RESULTS = (3, 10)  # i % 14: the command writes a result file no one can read


def gitqueue(*args: str, cache: Path, check_code: int | None = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gitqueue", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**ENV, "GITQUEUE_CACHE": str(cache)},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if check_code is not None:
        assert proc.returncode == check_code, f"gitqueue {args}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc


def named(lines: list[str], case: Hostile) -> bool:
    return any(line.startswith(case.shown) and case.expect in line for line in lines)


def push_landing(clone: Clone) -> None:
    """Push as a person does while workers push all the time: on a refusal, pull --rebase, retry."""
    for _ in range(60):
        if clone.push().returncode == 0:
            return
        rebased = clone.pull()
        assert rebased.returncode == 0, rebased.stdout + rebased.stderr
    raise AssertionError("the person's push never landed")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GitDaemon, Path]]:
    base = tmp_path / "srv"
    make_bare_repo(base / "queue.git")  # no hook, as on github.com
    install(server=make_bare_repo(base / "hooked.git"))
    with GitDaemon(base) as daemon:
        yield daemon, base


def start_worker(url: str, name: str, tmp_path: Path) -> subprocess.Popen[str]:
    folder = tmp_path / name.replace("/", "-")
    folder.mkdir()
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", name, "--wait"]
    argv += ["--log-dir", str(folder / "logs"), "--", sys.executable, "-c", COMMAND, "{i}"]
    env = {**ENV, "GITQUEUE_CACHE": str(folder / "cache")}  # a cache each, as on two machines
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=folder)


def stop(worker: subprocess.Popen[str]) -> str:
    """SIGTERM an idle worker; its stderr, after checking that it stopped as it says it does."""
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 128 + signal.SIGTERM and "stopping:" in err, err
    assert "Traceback" not in err, err
    return err


def test_hostile_files_pushed_into_a_live_queue_never_stop_it(served: tuple[GitDaemon, Path], tmp_path: Path) -> None:
    daemon, base = served
    url, bare = daemon.url("queue.git"), base / "queue.git"
    with Queue.init(url, worker="setup/0") as q:
        first = q.submit([{"args": {"i": i}} for i in range(25)])
    workers = [start_worker(url, f"box{n}/0", tmp_path) for n in (1, 2)]
    try:
        # a person pushes each hostile file on its own (and a few odd but valid ones) while they drain
        alice = Clone(url, tmp_path / "alice")
        for case in CASES:
            write_corpus(alice.path, [case])
            assert alice.commit(f"add {case.name}").returncode == 0
            push_landing(alice)
        assert alice.commit("add a submodule", also=lambda: stage_submodule(alice.run)).returncode == 0
        push_landing(alice)
        for name, raw in ODD_VALID.items():
            alice.write(f"pending/odd-{name}.yaml", raw)
        assert alice.commit("odd but valid tasks").returncode == 0
        push_landing(alice)
        with Queue.open(url, worker="setup/0") as q:
            rest = q.submit([{"args": {"i": i}} for i in range(25, 45)])
        valid = set(first) | set(rest) | {f"odd-{name}" for name in ODD_VALID}
        assert len(valid) == 50

        def drained() -> bool:
            assert [w.poll() for w in workers] == [None, None], "a worker stopped early"
            done = {p.rsplit("/", 1)[1][:-5] for p in remote_blobs(bare) if p.startswith("done/")}
            return done >= valid

        poll_until(drained, what="50 valid tasks done", timeout=240)
        assert [w.poll() for w in workers] == [None, None], "a worker stopped early"
    except BaseException:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        raise
    said = [stop(worker) for worker in workers]
    check_the_queue(bare, valid, tmp_path)
    check_what_was_said(said)
    check_the_commands(url, tmp_path)
    check_the_hook(daemon.url("hooked.git"), base / "hooked.git", tmp_path)


def check_the_queue(bare: Path, valid: set[str], tmp_path: Path) -> None:
    """Each valid task done exactly once, its result as its command wrote it; every hostile file as pushed."""
    blobs = remote_blobs(bare)
    done = {p.rsplit("/", 1)[1][:-5]: p for p in blobs if p.startswith("done/") and p.endswith(".yaml")}
    assert set(done) == valid, "exactly the valid tasks are done"
    for task_id, path in done.items():
        raw = subprocess.run(["git", "show", f"main:{path}"], cwd=bare, capture_output=True, check=True).stdout
        task = parse_task(raw, path=path)
        assert [(a["attempt"], a["outcome"]) for a in task.attempts] == [(1, "done")], task_id  # once, never retried
        i = task.args["i"]
        assert task.result == (None if i % 14 in HOSTILE_RESULTS else {"i": i}), task_id
    running = [p for p in blobs if p.startswith("running/") and p.endswith(".yaml")]
    assert running == ["running/claimed.yaml"], "nothing else left running"
    # nothing was deleted or rewritten: every file the person pushed but the valid tasks is as pushed
    theirs = remote_blobs(tmp_path / "alice")  # the person's own branch: what they pushed
    kept = {p: b for p, b in theirs.items() if not p.startswith(("pending/0", "pending/odd-", "running/0", "done/"))}
    assert len(kept) > len(CASES) and {p: blobs.get(p) for p in kept} == kept


def check_what_was_said(said: list[str]) -> None:
    """The workers named each hostile file they meet (pending/ and the top folder) and each
    hostile result file, once per worker."""
    skipped = [line.split("skipping ", 1)[1] for err in said for line in err.splitlines() if "skipping " in line]
    for case in CASES:
        if case.worker:
            folder = case.shown.rsplit("/", 1)[0]
            assert named(skipped, case) or any(s.startswith(folder + "/:") for s in skipped), case.name
    for err in said:
        mine = [line for line in err.splitlines() if "skipping " in line]
        assert len(mine) == len(set(mine)), "each problem once per worker"
    ignored = "\n".join(said)
    assert "result file ignored" in ignored and "cannot read 'hello' as !!timestamp" in ignored
    assert "5,000 characters" in ignored


def check_the_commands(url: str, tmp_path: Path) -> None:
    cache = tmp_path / "reader-cache"
    checked = gitqueue("validate", "--queue", url, cache=cache, check_code=1)
    lines = checked.stdout.splitlines()
    for case in CASES:
        assert named(lines, case), f"{case.name}: {checked.stdout}"
    assert not [line for line in lines if line.startswith(("done/", "pending/0", "pending/odd-"))], lines
    listed = gitqueue("ls", "--queue", url, cache=cache).stdout
    assert "invalid  pending/stamp.yaml:1:11: cannot read 'hello'" in listed
    status = gitqueue("status", "--queue", url, cache=cache).stdout
    assert "done 50" in status and "pending 0" in status
    for command in (["results"], ["results", "--format", "csv"], ["ls", "--format", "json"], ["claim"]):
        gitqueue(*command, "--queue", url, cache=cache, check_code=3 if command == ["claim"] else 0)


def check_the_hook(url: str, bare: Path, tmp_path: Path) -> None:
    with Queue.init(url, worker="setup/0") as q:
        q.submit([{"args": {"i": 0}}])
    before = remote_tip(bare)
    bob = Clone(url, tmp_path / "bob")
    cases = write_corpus(bob.path)
    assert bob.commit("hostile files", also=lambda: cases.append(stage_submodule(bob.run))).returncode == 0
    pushed = bob.push()
    assert pushed.returncode != 0 and "Traceback" not in pushed.stderr, pushed.stderr
    message = [line.removeprefix("remote:").strip() for line in pushed.stderr.splitlines()]
    assert "gitqueue: push to main refused: it would leave the queue invalid:" in message
    for case in cases:
        assert named(message, case), f"{case.name}: {pushed.stderr}"
    assert remote_tip(bare) == before
