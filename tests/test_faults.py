"""Faults that must never stop the queue: tasks that cannot start, a wrong command, a damaged cache.

Workers are real ``python -m gitqueue work`` processes (the Lab of test_worker); every test
asserts on what the queue's remote holds afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import RemoteRepo, poll_until
from test_worker import LEASE_REFS, Lab, make_lab  # noqa: F401  (a fixture)

from gitqueue import Queue, QueueNotFound, RemoteUnavailable, State
from gitqueue.git import damage_in
from gitqueue.testing import GitDaemon


@pytest.fixture
def lab(make_lab: Callable[[str], Lab], bare_remote: Path) -> Lab:  # noqa: F811
    """A lab on a queue whose remote is a bare repository reached by path."""
    return make_lab(str(bare_remote))


# Reads its args from GITQUEUE_ARGS_FILE and writes what it saw as its result.
READER = r"""
import json, os, pathlib
args = json.loads(pathlib.Path(os.environ["GITQUEUE_ARGS_FILE"]).read_text())
seen = {"keys": sorted(args), "big": len(args.get("big", [])), "env_args": "GITQUEUE_ARGS" in os.environ}
pathlib.Path(os.environ["GITQUEUE_RESULT_FILE"]).write_text(json.dumps(seen))
"""


def reader(lab: Lab, *extra: str) -> list[str]:
    script = lab.tmp / "reader.py"
    script.write_text(READER)
    return [sys.executable, str(script), *extra]


# ---------------------------------------------------------------- tasks that cannot start


def test_args_too_big_for_the_environment_reach_the_command_by_file(lab: Lab) -> None:
    big = [f"item-{i:06d}" for i in range(12_000)]  # ~170 KB of JSON: over Linux's 128 KiB for one variable
    lab.submit({"id": "a-wide", "args": {"big": big}, "priority": 5}, {"id": "b-next", "args": {"x": 1}})
    worker = lab.start("w1", command=reader(lab))
    assert worker.wait() == 0, worker.stderr
    assert lab.remote.states() == {"a-wide": "done", "b-next": "done"}
    assert lab.task("a-wide").result == {"keys": ["big"], "big": 12_000, "env_args": False}
    assert lab.task("b-next").result == {"keys": ["x"], "big": 0, "env_args": True}
    log = (worker.log_dir / "a-wide.1.log").read_text()
    assert "GITQUEUE_ARGS left out" in log and "GITQUEUE_ARGS_FILE" in log
    assert json.loads((worker.log_dir / "a-wide.1.args.json").read_text()) == {"big": big}
    assert max(map(len, worker.stderr.splitlines())) < 2000  # the worker's own log shows the start of them


def test_a_task_whose_args_make_the_command_line_too_long_fails_and_the_worker_goes_on(lab: Lab) -> None:
    lab.submit(
        {"id": "a-long", "args": {"text": "x" * 200_000}, "priority": 5, "max_attempts": 2},
        {"id": "b-next", "args": {"text": "short"}},
    )
    worker = lab.start("w1", command=reader(lab, "{text}"))
    assert worker.wait() == 7, worker.stderr  # it ran a task that failed
    assert lab.remote.states() == {"a-long": "failed", "b-next": "done"}
    attempts = lab.task("a-long").attempts
    assert [a["outcome"] for a in attempts] == ["failed", "failed"]  # its attempts spent, one each
    assert "Argument list too long" in attempts[0]["error"]
    assert "argument 2 is 200,000 bytes" in attempts[0]["error"]
    assert lab.task("b-next").result["keys"] == ["text"]


def test_a_tasks_own_cmd_that_cannot_start_fails_that_task_only(lab: Lab) -> None:
    missing = str(lab.tmp / "no-such-program")
    lab.submit(
        {"id": "a-bad-cmd", "args": {}, "cmd": [missing], "priority": 5, "max_attempts": 1},
        {"id": "b-good-cmd", "args": {}, "cmd": reader(lab)},
    )
    worker = lab.start("w1", "--allow-task-cmd", command=[])
    assert worker.wait() == 7, worker.stderr  # it ran a task that failed
    assert lab.remote.states() == {"a-bad-cmd": "failed", "b-good-cmd": "done"}
    assert "cannot start" in lab.task("a-bad-cmd").attempts[0]["error"]


def test_a_command_that_is_missing_still_stops_the_worker_and_returns_the_task(lab: Lab) -> None:
    lab.submit({"id": "t", "args": {"x": 1}})
    worker = lab.start("w1", command=[str(lab.tmp / "no-such-program"), "{x}"])
    assert worker.wait() == 127
    assert lab.task("t").state is State.PENDING and lab.task("t").attempts_spent == 0


# ---------------------------------------------------------------- a placeholder no task has


def test_a_placeholder_no_task_has_is_the_workers_mistake(lab: Lab) -> None:
    ids = lab.submit(*({"args": {"lr": 0.1 * i, "bs": 32}, "max_attempts": 3} for i in range(6)))
    worker = lab.start("w1", command=reader(lab, "{lrr}"))
    assert worker.wait() == 2
    assert lab.remote.states() == dict.fromkeys(ids, "pending")
    for task_id in ids:
        assert lab.task(task_id).attempts == []  # released: no attempt spent, none recorded
    assert "placeholder {lrr}" in worker.stderr and "their args: bs, lr" in worker.stderr
    assert "3 tasks" in worker.stderr
    assert lab.lease_refs() == [] and not list(worker.log_dir.glob("*.log"))


def test_a_placeholder_missing_from_the_only_tasks_returns_them_too(lab: Lab) -> None:
    ids = lab.submit({"args": {"lr": 0.1}}, {"args": {"lr": 0.2}})
    worker = lab.start("w1", command=reader(lab, "{lrr}"))
    assert worker.wait() == 2
    assert lab.remote.states() == dict.fromkeys(ids, "pending")
    assert all(lab.task(task_id).attempts == [] for task_id in ids)
    assert "placeholder {lrr}" in worker.stderr


def test_a_task_lacking_an_arg_the_others_have_fails_even_when_tried_first(lab: Lab) -> None:
    lab.submit(
        {"id": "a-lacks", "args": {"y": 1}, "priority": 9, "max_attempts": 3},
        {"id": "b-has", "args": {"x": 1}},
        {"id": "c-lacks", "args": {"y": 2}, "max_attempts": 3},
    )
    worker = lab.start("w1", command=reader(lab, "{x}"))
    assert worker.wait() == 7, worker.stderr  # it ran a task that failed
    assert lab.remote.states() == {"a-lacks": "failed", "b-has": "done", "c-lacks": "failed"}
    for task_id in ("a-lacks", "c-lacks"):
        [attempt] = lab.task(task_id).attempts
        assert attempt["error"] == "placeholder {x} names an arg the task lacks (its args: y)"


# ---------------------------------------------------------------- a damaged cache

# Notes each run in a shared file (one line per run), and holds while its args say so until
# the test releases it: the moment the test damages the cache is mid-drain, by construction.
NOTER = r"""
import json, os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
task = os.environ["GITQUEUE_TASK_ID"]
args = json.loads(pathlib.Path(os.environ["GITQUEUE_ARGS_FILE"]).read_text())
with open(marks / "runs", "a") as runs:
    runs.write(task + "\n")
if args.get("hold"):
    (marks / f"{task}.started").write_text("")
    deadline = time.monotonic() + 60
    while not (marks / f"{task}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""


def truncate_objects(cache: Path) -> int:
    """Cut every loose object and every pack in the caches below ``cache`` to half its size."""
    damaged = 0
    for path in [*cache.glob("*/objects/??/*"), *cache.glob("*/objects/pack/*.pack")]:
        with contextlib.suppress(OSError):
            path.chmod(0o644)
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 2)
            damaged += 1
    return damaged


@pytest.fixture(params=["path", "daemon"])
def any_lab(request: pytest.FixtureRequest, make_lab: Callable[[str], Lab], bare_remote: Path) -> Iterator[Lab]:  # noqa: F811
    """A lab on a queue reached by path, then over git daemon."""
    if request.param == "path":
        yield make_lab(str(bare_remote))
        return
    with GitDaemon(bare_remote.parent) as daemon:
        yield make_lab(daemon.url(bare_remote.name))


def test_a_cache_truncated_then_deleted_mid_drain_heals_and_the_drain_completes(any_lab: Lab, tmp_path: Path) -> None:
    lab = any_lab
    script = tmp_path / "noter.py"
    script.write_text(NOTER)
    marks = lab.marks
    lab.submit({"id": "gate-1", "args": {"hold": True}, "priority": 2})
    lab.submit({"id": "gate-2", "args": {"hold": True}, "priority": -1})
    ids = ["gate-1", "gate-2"]
    ids += lab.submit(*({"args": {"i": i}, "priority": 3 if i < 8 else 0 if i < 20 else -2} for i in range(30)))
    command = [sys.executable, str(script), str(marks)]
    workers = [lab.start(name, "--max-batch", "2", command=command) for name in ("w1", "w2")]
    cache = Path(os.environ["GITQUEUE_CACHE"])

    poll_until(lambda: (marks / "gate-1.started").exists(), what="the first gate task to start")
    assert truncate_objects(cache) > 0  # loose objects and packs, while the other worker drains
    (marks / "gate-1.release").write_text("")
    poll_until(lambda: (marks / "gate-2.started").exists(), what="the second gate task to start", timeout=60)
    shutil.rmtree(cache, ignore_errors=True)  # the whole cache folder, runs/ and all
    shutil.rmtree(cache, ignore_errors=True)
    (marks / "gate-2.release").write_text("")

    assert [w.wait(timeout=90) for w in workers] == [0, 0], "\n".join(w.stderr for w in workers)
    assert lab.remote.states() == dict.fromkeys(ids, "done")  # nothing lost
    ran = (marks / "runs").read_text().split()
    assert sorted(ran) == sorted(ids)  # every task ran exactly once
    for task_id in ids:
        assert [a["outcome"] for a in lab.task(task_id).attempts] == ["done"], task_id
    messages = lab.remote.log("%B")
    for task_id in ids:
        assert sum(f"done {task_id} by " in m for m in messages) == 1, task_id
    stderr = "".join(w.stderr for w in workers)
    assert "is damaged" in stderr and "rebuilding it from" in stderr
    assert "Traceback" not in stderr and "cannot fetch" not in stderr, stderr
    assert lab.lease_refs() == []
    lab.remote.fsck()


def fill(url: str, count: int, cache: Path) -> list[str]:
    """Submit ``count`` tasks from another machine (a cache of its own)."""
    with Queue.open(url, worker="submitter", cache=cache) as q:
        return q.submit({"args": {"i": i}} for i in range(count))


def test_truncated_loose_objects_are_rebuilt_not_blamed_on_the_remote(
    bare_remote: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    ids = fill(str(bare_remote), 5, tmp_path / "elsewhere")
    with Queue.open(str(bare_remote), worker="reader") as q:
        assert len(q.tasks()) == 5  # few objects: the cache keeps them loose
    cache = tmp_path / "cache"
    assert truncate_objects(cache) > 0 and not list(cache.glob("*/objects/pack/*.pack"))
    with Queue.open(str(bare_remote), worker="w", patience=1.0) as q:  # old code: blamed the remote for 1 s
        assert [t.id for t in q.tasks()] == ids
        run = q.claim()
        assert run is not None and run.done({"ok": 1}).state is State.DONE
    told = [r.getMessage() for r in caplog.records if r.name == "gitqueue"]
    assert any("is damaged" in line and "rebuilding it from" in line for line in told), told


def test_a_truncated_pack_is_rebuilt(bare_remote: Path, tmp_path: Path) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    ids = fill(str(bare_remote), 150, tmp_path / "elsewhere")  # many objects: the fetch keeps a pack
    cache = tmp_path / "cache"
    with Queue.open(str(bare_remote), worker="reader") as q:
        assert len(q.tasks()) == 150
    assert list(cache.glob("*/objects/pack/*.pack"))
    truncate_objects(cache)
    with Queue.open(str(bare_remote), worker="w", patience=1.0) as q:
        assert [t.id for t in q.tasks()] == ids
        assert q.status()["counts"]["pending"] == 150


def test_a_cache_deleted_under_an_open_queue_is_made_again(bare_remote: Path, tmp_path: Path) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    with Queue.open(str(bare_remote), worker="w", patience=1.0) as q:
        q.store.tell = lambda message: None
        ids = q.submit([{"args": {"i": 1}}, {"args": {"i": 2}}])
        shutil.rmtree(tmp_path / "cache")
        assert [t.id for t in q.tasks()] == ids
        shutil.rmtree(tmp_path / "cache")
        run = q.claim()  # a write: fetch, build, push into the cache made again
        assert run is not None and run.id == ids[0]
        shutil.rmtree(tmp_path / "cache")
        assert run.done().state is State.DONE
        assert q.store.heals >= 3
    with Queue.open(str(bare_remote), worker="reader") as q:
        assert [(t.id, t.state) for t in q.tasks()] == [(ids[1], State.PENDING), (ids[0], State.DONE)]


def test_a_heartbeat_goes_on_after_the_cache_is_rebuilt(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    with Queue.open(str(bare_remote), worker="w") as q:
        q.store.tell = lambda message: None
        first = q.store.heartbeat("tok", parent=None, message="beat 1\n", author=q.identity)
        assert first is not None
        q.store.heal("a test says so")  # the first beat's commit is no longer in the cache
        second = q.store.heartbeat("tok", parent=first, message="beat 2\n", author=q.identity)
        assert second is not None
    assert remote_repo.git("rev-parse", f"{LEASE_REFS}/tok").strip() == second
    assert remote_repo.git("rev-parse", f"{second}^").strip() == first  # a fast-forward, never forced


def test_a_remote_whose_own_objects_are_damaged_is_named_not_the_cache(bare_remote: Path, tmp_path: Path) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    fill(str(bare_remote), 3, tmp_path / "elsewhere")
    for path in bare_remote.glob("objects/??/*"):  # the remote's own objects, not a cache's
        path.chmod(0o644)
        path.write_bytes(path.read_bytes()[:10])
    clock = Clock()
    with pytest.raises(RemoteUnavailable, match=r"even into a rebuilt cache: is the remote's repository damaged\?"):
        Queue.open(str(bare_remote), worker="w", clock=clock, sleep=clock.sleep, patience=5)


# ---------------------------------------------------------------- a local queue whose folder vanishes


class Clock:
    """Time that passes only when the queue sleeps; ``on_sleep`` sees each pause."""

    def __init__(self, on_sleep: Callable[[int], None] = lambda n: None) -> None:
        self.now, self.sleeps, self.on_sleep = 1_000_000.0, 0, on_sleep

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.sleeps += 1
        self.on_sleep(self.sleeps)


def test_a_local_queue_whose_folder_vanishes_is_retried_until_it_is_back(bare_remote: Path) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    away = bare_remote.with_name("queue.git.unmounted")

    def remount(sleeps: int) -> None:
        if sleeps == 3:
            away.rename(bare_remote)

    clock = Clock(remount)
    with Queue.open(str(bare_remote), worker="w", clock=clock, sleep=clock.sleep) as q:
        ids = q.submit([{"args": {"i": 1}}])
        bare_remote.rename(away)  # the shared disk drops
        assert [t.id for t in q.tasks()] == ids  # old code: QueueNotFound at once
        assert clock.sleeps == 3


def test_a_local_queue_gone_for_good_says_so_as_an_unreachable_remote(bare_remote: Path) -> None:
    Queue.init(str(bare_remote), worker="init").close()
    clock = Clock()
    with Queue.open(str(bare_remote), worker="w", clock=clock, sleep=clock.sleep, patience=30) as q:
        bare_remote.rename(bare_remote.with_name("elsewhere.git"))
        with pytest.raises(RemoteUnavailable) as raised:
            q.tasks()
    assert raised.value.exit_code == 5 and clock.sleeps > 1
    assert str(raised.value) == (
        f"the queue's repository {bare_remote} is not there any more (a shared disk or mount that dropped?)"
    )


def test_a_mistyped_local_path_is_no_queue_at_once(tmp_path: Path) -> None:
    clock = Clock()
    with pytest.raises(QueueNotFound):
        Queue.open(str(tmp_path / "no-such-queue.git"), clock=clock, sleep=clock.sleep)
    assert clock.sleeps == 0


def test_a_cache_folder_deleted_while_git_runs_in_it_is_damage_not_the_remote() -> None:
    """git started in the cache, then the folder went: what git says is about our side."""
    said = (
        "fatal: Unable to read current working directory: No such file or directory\n"
        "fatal: fetch-pack: invalid index-pack output\n"
    )
    assert damage_in(said) == "fatal: Unable to read current working directory: No such file or directory"
    assert damage_in("remote: fatal: Unable to read current working directory") is None  # the remote's own


def test_a_fetch_that_cannot_resolve_deltas_against_a_truncated_cache_is_damage() -> None:
    """A thin pack's deltas need base objects the cache holds; when the cache's copy is
    truncated, index-pack cannot resolve them: the cache's damage, not the remote being away
    (seen under load in the truncate-then-delete drain, reported as "cannot fetch")."""
    said = (
        "fatal: Could not read 0123456789abcdef0123456789abcdef01234567\n"
        "fatal: pack has 3 unresolved deltas\n"
        "error: unresolved deltas left after unpacking\n"
    )
    assert damage_in(said) == "fatal: pack has 3 unresolved deltas"
    assert damage_in("fatal: Could not read from remote repository.") is None  # that one is the remote, away
