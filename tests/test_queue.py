"""The Python API against a real bare remote: every test checks what the repository holds."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import RemoteRepo

from gitqueue import (
    InvalidTask,
    InvalidTransition,
    NotHeld,
    Queue,
    QueueNotFound,
    State,
    Task,
    TaskExists,
    TaskNotFound,
)
from gitqueue.config import Settings
from gitqueue.errors import InvalidId, RemoteUnavailable
from gitqueue.queue import Report
from gitqueue.task import MARKER, fan, parse_task

STATES = ["pending", "running", "done", "failed", "cancelled"]


def trailers(message: str) -> dict[str, str]:
    return dict(re.findall(r"^(Gitqueue-[\w-]+): (.*)$", message, re.MULTILINE))


def task_file(repo: RemoteRepo, task_id: str) -> Task:
    """The task as the remote's branch holds it, parsed from its file."""
    [path] = repo.locations()[task_id]
    return parse_task(repo.read(path).encode(), path=path)


# ---------------------------------------------------------------- init and open


def test_init_creates_settings_and_the_five_folders(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    with Queue.init(str(bare_remote), worker="w/0"):
        pass
    assert sorted(remote_repo.files()) == sorted(["gitqueue.yaml", *(f"{s}/.gitkeep" for s in STATES)])
    assert remote_repo.count() == 1
    assert remote_repo.log() == ["initialise gitqueue queue"]
    settings = Settings.parse(remote_repo.read("gitqueue.yaml").encode())
    assert settings == Settings()
    assert "format: 1" in remote_repo.read("gitqueue.yaml")
    config = (Path.cwd() / ".gitqueue").read_text()
    assert str(bare_remote.resolve()) in config


def test_attaching_again_changes_nothing(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    with Queue.init(str(bare_remote), worker="a/0") as q:
        q.submit([{"args": {"a": 1}}])
    tip = remote_repo.tip()
    with Queue.init(str(bare_remote), worker="b/0", settings=Settings(max_attempts=9)) as again:
        assert [t.id for t in again.tasks()] == ["000001-a1"]
    with Queue.open(str(bare_remote)) as opened:
        assert opened.status()["counts"]["pending"] == 1
    assert remote_repo.tip() == tip
    assert Settings.parse(remote_repo.read("gitqueue.yaml").encode()).max_attempts == 3


def test_init_with_settings(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    with Queue.init(str(bare_remote), settings=Settings(priority=1, max_attempts=1, lease=30)) as q:
        [task_id] = q.submit([{"args": {"a": 1}}])
        run = q.claim()
        assert run is not None and run.lease == 30
        run.fail("boom")
    assert Settings.parse(remote_repo.read("gitqueue.yaml").encode()) == Settings(priority=1, max_attempts=1, lease=30)
    assert remote_repo.states() == {task_id: "failed"}


def test_embedded_queue_needs_no_url(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    with Queue.init(folder=folder) as q:
        q.submit([{"args": {"x": 1}}])
    embedded = RemoteRepo(folder / ".gitqueue.git")
    assert "gitqueue.yaml" in embedded.files() and embedded.count() == 2
    assert "queue: .gitqueue.git" in (folder / ".gitqueue").read_text()
    os.chdir(folder / "sub")  # the nearest .gitqueue above the working directory names the queue
    with Queue.open() as q:
        assert [t.id for t in q.tasks(State.PENDING)] == ["000001-x1"]


def test_init_creates_a_missing_local_remote_and_takes_file_urls(tmp_path: Path) -> None:
    fresh = tmp_path / "new" / "queue.git"
    with Queue.init(str(fresh), worker="w/0") as q:
        q.submit([{"id": "one", "args": {"a": 1}}])
    assert RemoteRepo(fresh).git("rev-parse", "--is-bare-repository").strip() == "true"
    assert RemoteRepo(fresh).states() == {"one": "pending"}
    with Queue.init(fresh.as_uri(), worker="w/1") as q:
        run = q.claim()
        assert run is not None and run.id == "one"
        run.done()
    assert RemoteRepo(fresh).states() == {"one": "done"}
    assert RemoteRepo(fresh).count() == 4


def test_open_refuses_what_is_not_a_queue(tmp_path: Path, bare_remote: Path) -> None:
    with pytest.raises(QueueNotFound, match="not a gitqueue queue yet"):
        Queue.open(str(bare_remote))
    with pytest.raises(QueueNotFound):
        Queue.open(str(tmp_path / "nowhere.git"))
    with pytest.raises(QueueNotFound, match="no queue given"):
        Queue.open()


def test_open_a_relative_path(bare_remote: Path, remote_repo: RemoteRepo) -> None:
    Queue.init(str(bare_remote)).close()
    relative = os.path.relpath(bare_remote, Path.cwd())
    assert not Path(relative).is_absolute()
    with Queue.open(relative) as q:
        q.submit([{"args": {"a": 1}, "id": "rel"}])
    assert remote_repo.states() == {"rel": "pending"}


# ---------------------------------------------------------------- submit


def test_submit_is_one_commit_with_readable_ids(queue: Queue, remote_repo: RemoteRepo) -> None:
    before = remote_repo.count()
    ids = queue.submit([{"args": {"lr": 0.01, "bs": 32}}, {"args": {"lr": 0.1, "bs": 64}, "tags": ["s1"]}])
    assert ids == ["000001-lr0.01-bs32", "000002-lr0.1-bs64"]
    assert remote_repo.count() == before + 1
    assert remote_repo.log()[-1] == "submit 2 tasks"
    assert remote_repo.states() == dict.fromkeys(ids, "pending")
    task = task_file(remote_repo, ids[1])
    assert task.args == {"lr": 0.1, "bs": 64} and task.tags == ["s1"]
    assert task.submitted is not None and task.submitted["by"] == "gitqueue"
    person, marker, ours = remote_repo.read(f"pending/{ids[0]}.yaml").partition(MARKER)
    assert marker and list(yaml.safe_load(person)) == ["args"] and list(yaml.safe_load(person)["args"]) == ["lr", "bs"]
    assert list(yaml.safe_load(ours)) == ["submitted"]


def test_generated_ids_sort_in_submission_order(queue: Queue, remote_repo: RemoteRepo) -> None:
    submitted: list[str] = []
    for batch in ([{"args": {"z": 9}}], [{"args": {"a": 1}}, {"args": {"m": "x y/z"}}], [{"args": {}}]):
        submitted += queue.submit(batch)
    submitted += queue.submit([{"args": {"long": "x" * 200}}, {"args": {"k": "ü"}}])
    assert submitted == sorted(submitted)
    assert submitted[:3] == ["000001-z9", "000002-a1", "000003-mx_y_z"]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]{1,128}", i) for i in submitted)
    assert submitted[4].startswith("000005-longxxx") and len(submitted[4]) < 64
    assert sorted(remote_repo.states()) == submitted
    # claims follow submission order when priorities are equal
    claimed = [run.id for run in iter(queue.claim, None)]
    assert claimed == submitted


def test_generated_ids_keep_submission_order_past_999999(queue: Queue) -> None:
    """The sequence number outgrows its six digits: the millionth task still comes after the
    ones before it (as strings, "1000000-" would sort first), and so do numbered hand ids."""
    queue.submit([{"id": "999999-six-digits", "args": {"n": 0}}])
    [millionth] = queue.submit([{"args": {"n": 1}}])
    assert millionth == "1000000-n1"
    queue.submit([{"id": "10-by-hand", "args": {"n": 2}}, {"id": "9-by-hand", "args": {"n": 3}}])
    queue.submit([{"id": "exp-a", "args": {"n": 4}}])
    order = ["9-by-hand", "10-by-hand", "999999-six-digits", "1000000-n1", "exp-a"]
    assert [task.id for task in queue.tasks()] == order
    assert [run.id for run in iter(queue.claim, None)] == order


def test_submitting_the_same_task_again_does_nothing(queue: Queue, remote_repo: RemoteRepo) -> None:
    spec = {"id": "exp-1", "args": {"lr": 0.01}, "priority": 2, "tags": ["a"]}
    assert queue.submit([spec]) == ["exp-1"]
    tip = remote_repo.tip()
    assert queue.submit([dict(spec)]) == ["exp-1"]
    assert remote_repo.tip() == tip
    # also once it has run: same content is the same task wherever it is
    run = queue.claim()
    assert run is not None
    run.done({"acc": 1})
    tip = remote_repo.tip()
    assert queue.submit([dict(spec)]) == ["exp-1"]
    assert remote_repo.tip() == tip
    assert remote_repo.states() == {"exp-1": "done"}


def test_submitting_an_id_with_different_content_commits_nothing(queue: Queue, remote_repo: RemoteRepo) -> None:
    queue.submit([{"id": "exp-1", "args": {"lr": 0.01}}])
    tip = remote_repo.tip()
    with pytest.raises(TaskExists, match="exp-1"):
        queue.submit([{"id": "exp-1", "args": {"lr": 0.02}}])
    with pytest.raises(TaskExists, match="exp-1"):
        queue.submit([{"id": "new-1", "args": {"a": 1}}, {"id": "exp-1", "args": {"lr": 0.01}, "priority": 1}])
    with pytest.raises(TaskExists, match="twice"):
        queue.submit([{"id": "dup", "args": {"a": 1}}, {"id": "dup", "args": {"a": 1}}])
    assert remote_repo.tip() == tip
    assert remote_repo.states() == {"exp-1": "pending"}


def test_a_submit_that_loses_a_race_numbers_its_ids_again(
    bare_remote: Path, remote_repo: RemoteRepo, tmp_path: Path
) -> None:
    with (
        Queue.init(str(bare_remote), worker="a/0", cache=tmp_path / "a") as one,
        Queue.open(str(bare_remote), worker="b/0", cache=tmp_path / "b") as two,
    ):
        real_push = one.store.push
        theirs: list[str] = []

        def push_after_the_other(new: str, old: str | None, **options: object) -> object:
            if not theirs:
                theirs.extend(two.submit([{"args": {"who": "b"}}, {"args": {"who": "b2"}}]))
            return real_push(new, old, **options)  # type: ignore[arg-type]

        one.store.push = push_after_the_other  # type: ignore[method-assign]
        ours = one.submit([{"args": {"who": "a"}}])
    assert theirs == ["000001-whob", "000002-whob2"] and ours == ["000003-whoa"]
    assert remote_repo.states() == dict.fromkeys([*theirs, *ours], "pending")
    assert remote_repo.log()[1:] == ["submit 2 tasks", "submit 000003-whoa"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"args": {"a": 1}, "id": "../escape"}, InvalidId),
        ({"args": {"a": 1}, "id": "a b"}, InvalidId),
        ({"args": {"a": 1}, "priority": "high"}, InvalidTask),
        ({"args": {"a": 1}, "colour": "red"}, InvalidTask),
        ({"args": [1, 2]}, InvalidTask),
        ({"priority": 1}, InvalidTask),
    ],
)
def test_invalid_submissions_commit_nothing(queue: Queue, remote_repo: RemoteRepo, spec: dict, error: type) -> None:
    tip = remote_repo.tip()
    with pytest.raises(error):
        queue.submit([{"args": {"fine": 1}}, spec])
    assert remote_repo.tip() == tip


def test_ten_thousand_tasks_in_one_commit_fanned_out(queue: Queue, remote_repo: RemoteRepo) -> None:
    before = remote_repo.count()
    ids = queue.submit([{"args": {"seed": i}} for i in range(10_000)])
    assert len(ids) == len(set(ids)) == 10_000
    assert remote_repo.count() == before + 1
    assert remote_repo.log()[-1] == "submit 10000 tasks"
    files = [f for f in remote_repo.files() if f.endswith(".yaml") and "/" in f]
    assert len(files) == 10_000
    assert sorted(f.rsplit("/", 1)[1].removesuffix(".yaml") for f in files) == sorted(ids)
    assert set(files) == {f"pending/{fan(i)}/{i}.yaml" for i in ids}
    folders = Counter(path.rsplit("/", 1)[0] for path in remote_repo.files())
    folders["pending"] = len(remote_repo.git("ls-tree", "main:pending").splitlines())
    assert max(folders.values()) <= 1000, folders.most_common(3)
    # the first task is claimable; a hand-placed file directly in pending/ still counts
    remote_repo.person_commit({"pending/by-hand.yaml": "args: {lr: 0.01}\npriority: 1\n"})
    run = queue.claim()
    assert run is not None and run.id == "by-hand"
    run.done()
    run = queue.claim()
    assert run is not None and run.id == ids[0]
    states = remote_repo.states()
    assert Counter(states.values()) == {"pending": 9_999, "running": 1, "done": 1}
    remote_repo.fsck()


def test_full_state_folders_fan_out(queue: Queue, remote_repo: RemoteRepo) -> None:
    done = {f"done/old-{i:04d}.yaml": f"args: {{i: {i}}}\n" for i in range(1000)}
    remote_repo.person_commit(done, "import 1000 finished runs")
    [task_id] = queue.submit([{"id": "next", "args": {"i": 1000}}])
    run = queue.claim()
    assert run is not None and run.id == task_id
    run.done({"ok": True})
    assert remote_repo.locations()[task_id] == [f"done/{fan(task_id)}/{task_id}.yaml"]
    assert queue.get(task_id).state is State.DONE
    assert queue.requeue([task_id]) == [task_id]
    assert remote_repo.locations()[task_id] == [f"pending/{task_id}.yaml"]
    assert len(remote_repo.states()) == 1001


# ---------------------------------------------------------------- claiming


def test_claim_order_is_priority_then_id(queue: Queue, remote_repo: RemoteRepo) -> None:
    queue.submit(
        [
            {"id": "b", "args": {"n": 1}},
            {"id": "a", "args": {"n": 2}},
            {"id": "urgent", "args": {"n": 3}, "priority": 10},
            {"id": "later", "args": {"n": 4}, "priority": -1},
            {"id": "c", "args": {"n": 5}, "priority": 10},
        ]
    )
    order = [run.id for run in iter(queue.claim, None)]
    assert order == ["c", "urgent", "a", "b", "later"]
    assert set(remote_repo.states().values()) == {"running"}
    assert queue.claim() is None


def test_requires_and_labels(queue: Queue, remote_repo: RemoteRepo) -> None:
    queue.submit(
        [
            {"id": "big", "args": {"n": 1}, "requires": {"gpu": ["a100", "h100"]}, "priority": 5},
            {"id": "any", "args": {"n": 2}},
            {"id": "boxed", "args": {"n": 3}, "requires": {"host": "box-1", "gpu": "a100"}, "priority": 9},
        ]
    )
    plain = queue.claim()
    assert plain is not None and plain.id == "any"
    assert queue.claim() is None
    assert queue.claim(labels={"gpu": "v100"}) is None
    run = queue.claim(labels={"gpu": "a100"})
    assert run is not None and run.id == "big"
    tip = remote_repo.tip()
    assert queue.claim(labels={"gpu": "h100", "host": "box-2"}) is None
    assert remote_repo.tip() == tip
    run = queue.claim(labels={"gpu": "a100", "host": "box-1"})
    assert run is not None and run.id == "boxed"
    assert remote_repo.states() == {"any": "running", "big": "running", "boxed": "running"}


def test_claim_records_the_run(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}, "lease": 45}])
    run = queue.claim()
    assert run is not None
    assert (run.id, run.args, run.attempt, run.lease) == (task_id, {"a": 1}, 1, 45)
    assert re.fullmatch(r"[0-9a-f]{16}", run.token)
    task = task_file(remote_repo, task_id)
    assert task.state is State.RUNNING and task.token == run.token
    assert task.run is not None and task.run["worker"] == "test-box/0" and task.run["lease"] == 45
    override = queue.submit([{"args": {"b": 2}}])
    run2 = queue.claim(lease=7)
    assert run2 is not None and run2.id == override[0] and task_file(remote_repo, run2.id).run["lease"] == 7


def test_an_invalid_task_file_is_skipped_and_kept(queue: Queue, remote_repo: RemoteRepo) -> None:
    remote_repo.person_commit(
        {
            "pending/aa-bad.yaml": "args: {lr: 0.01\n",
            "pending/ab-typo.yaml": "arg: {x: 1}\n",
            "pending/zz.yaml": "args: {}\n",
        }
    )
    run = queue.claim()
    assert run is not None and run.id == "zz"
    assert queue.claim() is None
    assert remote_repo.states() == {"aa-bad": "pending", "ab-typo": "pending", "zz": "running"}
    invalid = queue.status()["invalid"]
    assert [p["path"] for p in invalid] == ["pending/aa-bad.yaml", "pending/ab-typo.yaml"]
    assert "pending/aa-bad.yaml:2:1" in invalid[0]["problem"]
    assert "unknown field 'arg'" in invalid[1]["problem"]


# ---------------------------------------------------------------- finishing


def test_done_moves_the_task_with_its_result(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"lr": 0.01}}])
    run = queue.claim()
    assert run is not None
    finished = run.done({"acc": 0.93, "curve": [1, 2]})
    assert finished.state is State.DONE
    task = task_file(remote_repo, task_id)
    assert task.state is State.DONE and task.result == {"acc": 0.93, "curve": [1, 2]} and task.run is None
    [attempt] = task.attempts
    assert attempt["outcome"] == "done" and attempt["token"] == run.token and attempt["worker"] == "test-box/0"
    assert attempt["duration"] >= 0
    assert remote_repo.states() == {task_id: "done"}


def test_fail_retries_until_max_attempts_then_failed(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}, "max_attempts": 2}])
    first = queue.claim()
    assert first is not None and first.attempt == 1
    assert first.fail("CUDA out of memory", exit_code=137).state is State.PENDING
    assert remote_repo.states() == {task_id: "pending"}
    second = queue.claim()
    assert second is not None and second.id == task_id and second.attempt == 2
    assert second.fail("again").state is State.FAILED
    assert remote_repo.states() == {task_id: "failed"}
    task = task_file(remote_repo, task_id)
    assert [(a["attempt"], a["outcome"]) for a in task.attempts] == [(1, "failed"), (2, "failed")]
    assert task.attempts[0]["error"] == "CUDA out of memory" and task.attempts[0]["exit_code"] == 137
    assert queue.claim() is None
    assert remote_repo.log()[-4:] == [
        f"claim {task_id} by test-box/0 (attempt 1)",
        f"fail {task_id} by test-box/0 (attempt 1): will retry",
        f"claim {task_id} by test-box/0 (attempt 2)",
        f"fail {task_id} by test-box/0 (attempt 2): out of attempts",
    ]


def test_queue_default_max_attempts(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}}])
    for attempt in (1, 2, 3):
        run = queue.claim()
        assert run is not None and run.attempt == attempt
        run.fail(f"try {attempt}")
    assert remote_repo.states() == {task_id: "failed"}


def test_run_as_context_manager(queue: Queue, remote_repo: RemoteRepo) -> None:
    ok, bad = queue.submit([{"args": {"ok": 1}}, {"args": {"ok": 0}, "max_attempts": 1}])
    with queue.claim() as run:  # type: ignore[union-attr]
        assert run.id == ok
    with pytest.raises(ZeroDivisionError), queue.claim() as run:  # type: ignore[union-attr]
        1 / 0  # noqa: B018
    assert remote_repo.states() == {ok: "done", bad: "failed"}
    error = task_file(remote_repo, bad).attempts[-1]["error"]
    assert "ZeroDivisionError" in error and "Traceback" in error


def test_a_stale_token_changes_nothing(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}}])
    old = queue.claim()
    assert old is not None
    queue.requeue([task_id])
    new = queue.claim()
    assert new is not None and new.id == task_id and new.token != old.token and new.attempt == 2
    tip = remote_repo.tip()
    with pytest.raises(NotHeld, match="no longer holds"):
        old.done({"late": True})
    with pytest.raises(NotHeld):
        queue.fail(task_id, token=old.token, error="late")
    assert remote_repo.tip() == tip
    new.done({"fresh": True})
    tip = remote_repo.tip()
    with pytest.raises(NotHeld, match="done now"):
        queue.done(task_id, token=old.token)
    assert remote_repo.tip() == tip
    assert task_file(remote_repo, task_id).result == {"fresh": True}


def test_finishing_without_a_token(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}}])
    tip = remote_repo.tip()
    with pytest.raises(InvalidTransition, match="not running"):
        queue.done(task_id)
    with pytest.raises(TaskNotFound):
        queue.done("no-such-task")
    assert remote_repo.tip() == tip
    assert queue.claim() is not None
    queue.done(task_id, result={"by": "hand"})
    assert task_file(remote_repo, task_id).result == {"by": "hand"}


# ---------------------------------------------------------------- requeue and cancel


def test_requeue_from_every_finished_state(queue: Queue, remote_repo: RemoteRepo) -> None:
    ok, bad, gone = queue.submit([{"args": {"n": 1}}, {"args": {"n": 2}, "max_attempts": 1}, {"args": {"n": 3}}])
    queue.claim().done({"acc": 1})  # type: ignore[union-attr]
    queue.claim().fail("boom")  # type: ignore[union-attr]
    queue.cancel([gone])
    assert remote_repo.states() == {ok: "done", bad: "failed", gone: "cancelled"}
    before = remote_repo.count()
    assert queue.requeue([ok, bad, gone]) == [ok, bad, gone]
    assert remote_repo.count() == before + 1
    assert remote_repo.log()[-1] == f"requeue 3 tasks: {ok}, {bad}, {gone} by gitqueue"
    assert remote_repo.states() == {ok: "pending", bad: "pending", gone: "pending"}
    done_again = task_file(remote_repo, ok)
    assert done_again.result is None and done_again.requeued is not None and done_again.requeued["from"] == "done"
    # a requeued failed task gets a fresh set of attempts
    while (run := queue.claim()) is not None:
        if run.id == bad:
            assert run.attempt == 2
            run.fail("once more")
        else:
            run.done()
    assert remote_repo.states() == {ok: "done", bad: "failed", gone: "done"}


def test_requeue_a_running_task_cuts_its_run_off(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"a": 1}}])
    run = queue.claim()
    assert run is not None
    queue.requeue([task_id])
    task = task_file(remote_repo, task_id)
    assert task.state is State.PENDING and task.attempts[-1]["outcome"] == "requeued"
    tip = remote_repo.tip()
    with pytest.raises(NotHeld):
        run.done()
    assert remote_repo.tip() == tip


def test_requeue_and_cancel_refuse_what_makes_no_sense(queue: Queue, remote_repo: RemoteRepo) -> None:
    pending, finished, failed = queue.submit(
        [{"args": {"n": 1}, "priority": 1}, {"args": {"n": 2}, "priority": 2}, {"args": {"n": 3}, "max_attempts": 1}]
    )
    queue.claim().done()  # type: ignore[union-attr]
    queue.claim()
    queue.claim().fail("x")  # type: ignore[union-attr]
    queue.requeue([pending])
    queue.cancel([pending])
    queue.requeue([pending])
    assert remote_repo.states() == {pending: "pending", finished: "done", failed: "failed"}
    tip = remote_repo.tip()
    with pytest.raises(InvalidTransition, match="already pending"):
        queue.requeue([pending])
    with pytest.raises(InvalidTransition, match="already finished as done"):
        queue.cancel([finished])
    with pytest.raises(InvalidTransition, match="already finished as failed"):
        queue.cancel([pending, failed])  # all or nothing: the pending one stays
    with pytest.raises(TaskNotFound):
        queue.cancel(["nope"])
    queue.cancel([pending])
    with pytest.raises(InvalidTransition, match="already cancelled"):
        queue.cancel([pending])
    assert remote_repo.count() == int(remote_repo.git("rev-list", "--count", tip)) + 1
    assert remote_repo.states() == {pending: "cancelled", finished: "done", failed: "failed"}


def test_cancel_pending_and_running(queue: Queue, remote_repo: RemoteRepo) -> None:
    first, second, third = queue.submit([{"args": {"n": i}, "priority": 3 - i} for i in range(3)])
    run = queue.claim()
    assert run is not None and run.id == first
    before = remote_repo.count()
    assert queue.cancel([first, second]) == [first, second]
    assert remote_repo.count() == before + 1
    assert remote_repo.log()[-1] == f"cancel 2 tasks: {first}, {second} by gitqueue"
    assert remote_repo.states() == {first: "cancelled", second: "cancelled", third: "pending"}
    assert task_file(remote_repo, first).attempts[-1]["outcome"] == "cancelled"
    tip = remote_repo.tip()
    with pytest.raises(NotHeld):
        run.done()
    assert remote_repo.tip() == tip
    nxt = queue.claim()
    assert nxt is not None and nxt.id == third


# ---------------------------------------------------------------- reading


def test_tasks_get_and_status(queue: Queue) -> None:
    ids = queue.submit([{"args": {"n": i}, "tags": ["t"]} for i in range(4)])
    queue.claim().done()  # type: ignore[union-attr]
    run = queue.claim()
    assert run is not None
    assert [t.id for t in queue.tasks()] == [ids[2], ids[3], ids[1], ids[0]]
    assert [t.id for t in queue.tasks("done")] == [ids[0]]
    assert queue.get(ids[1]).state is State.RUNNING
    assert queue.get("000003").id == ids[2]  # a unique prefix
    with pytest.raises(TaskNotFound, match="starts 4 ids"):
        queue.get("0000")
    status = queue.status()
    assert status["counts"] == {"pending": 2, "running": 1, "done": 1, "failed": 0, "cancelled": 0}
    assert status["total"] == 4
    assert status["oldest_pending"]["id"] == ids[2]
    [running] = status["running"]
    assert running["id"] == ids[1] and running["worker"] == "test-box/0" and running["attempt"] == 1
    assert 0 <= running["age"] < 60


# ---------------------------------------------------------------- history


def test_commit_subjects_and_trailers(queue: Queue, remote_repo: RemoteRepo) -> None:
    [task_id] = queue.submit([{"args": {"lr": 0.01, "bs": 32}}])
    run = queue.claim()
    assert run is not None
    run.done({"acc": 1})
    messages = remote_repo.log("%B")
    assert [m.splitlines()[0] for m in messages] == [
        "initialise gitqueue queue",
        f"submit {task_id}",
        f"claim {task_id} by test-box/0 (attempt 1)",
        f"done {task_id} by test-box/0 (attempt 1)",
    ]
    submit, claim, done = (trailers(m) for m in messages[1:])
    assert submit["Gitqueue-Action"] == "submit" and submit["Gitqueue-Count"] == "1"
    assert claim["Gitqueue-Action"] == "claim" and claim["Gitqueue-Task"] == task_id
    assert claim["Gitqueue-Run"] == done["Gitqueue-Run"] == run.token
    assert done["Gitqueue-Action"] == "done" and done["Gitqueue-Task"] == task_id
    assert {claim["Gitqueue-Worker"], done["Gitqueue-Worker"]} == {"test-box/0"}
    nonces = [trailers(m)["Gitqueue-Nonce"] for m in messages]
    assert len(set(nonces)) == len(nonces)
    # git itself reads them as trailers
    assert remote_repo.git("log", "-1", "--format=%(trailers:key=Gitqueue-Task,valueonly)", "main").strip() == task_id


def test_a_fresh_machine_without_git_identity(queue: Queue, remote_repo: RemoteRepo) -> None:
    unset = subprocess.run(["git", "config", "--get", "user.email"], capture_output=True, check=False)
    assert unset.returncode == 1, "the fixture's HOME must have no git identity"
    queue.submit([{"args": {"a": 1}}])
    queue.claim().done()  # type: ignore[union-attr]
    expected = f"gitqueue <test-box.0@{socket.gethostname()}>"
    assert set(remote_repo.log("%an <%ae>")) == {expected}
    assert set(remote_repo.log("%cn <%ce>")) == {expected}


def test_a_configured_identity_authors_the_commits(
    bare_remote: Path, remote_repo: RemoteRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gitconfig = tmp_path / "person.gitconfig"
    gitconfig.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    with Queue.init(str(bare_remote), worker="ada-box/1") as q:
        q.submit([{"args": {"a": 1}}])
        q.claim().done()  # type: ignore[union-attr]
        q.requeue([q.tasks()[0].id])
    assert set(remote_repo.log("%an <%ae>")) == {"Ada Lovelace <ada@example.org>"}
    assert remote_repo.log()[-1].endswith("by Ada Lovelace")
    assert task_file(remote_repo, "000001-a1").submitted["by"] == "Ada Lovelace"  # type: ignore[index]


def test_git_author_variables_name_who_submitted_and_author_the_commits(
    bare_remote: Path, remote_repo: RemoteRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GIT_AUTHOR_NAME and GIT_AUTHOR_EMAIL win over git config, as they do for git itself."""
    gitconfig = tmp_path / "person.gitconfig"
    gitconfig.write_text("[user]\n\tname = Config Name\n\temail = config@example.org\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    monkeypatch.setenv("GIT_AUTHOR_NAME", "Grace Hopper")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "grace@example.org")
    with Queue.init(str(bare_remote), worker="grace-box/1") as q:
        q.submit([{"args": {"a": 1}}])
    assert set(remote_repo.log("%an <%ae>")) == {"Grace Hopper <grace@example.org>"}
    assert task_file(remote_repo, "000001-a1").submitted["by"] == "Grace Hopper"  # type: ignore[index]
    monkeypatch.delenv("GIT_CONFIG_GLOBAL")
    monkeypatch.delenv("GIT_AUTHOR_EMAIL")  # a name alone, with no email anywhere: the fallback's email
    with Queue.open(str(bare_remote), worker="lab/2") as q:
        q.submit([{"args": {"a": 2}}])
    assert remote_repo.log("%an")[-1] == "Grace Hopper"
    assert task_file(remote_repo, "000002-a2").submitted["by"] == "Grace Hopper"  # type: ignore[index]


def test_fsck_is_clean_after_a_run(queue: Queue, remote_repo: RemoteRepo) -> None:
    ids = queue.submit([{"args": {"n": i}, "max_attempts": 1} for i in range(6)])
    runs = [queue.claim() for _ in range(5)]
    runs[0].done({"x": [1, {"y": 2}]})  # type: ignore[union-attr]
    runs[1].fail("no")  # type: ignore[union-attr]
    queue.cancel([ids[2], ids[5]])
    queue.requeue([ids[0]])
    assert Counter(remote_repo.states().values()) == {"pending": 1, "running": 2, "failed": 1, "cancelled": 2}
    remote_repo.fsck()
    RemoteRepo(queue.store.path).git("fsck", "--strict", "--no-progress")
    # nothing the protocol writes is a stray file in the bare cache
    assert not (queue.store.path / "index").exists()


def test_a_stale_lock_on_the_server_is_reported_not_retried_for_ever(bare_remote: Path) -> None:
    """A lock file left by a crashed server refuses every push although nobody moves the
    branch: gitqueue says so instead of counting it as lost races for ever."""
    with Queue.init(str(bare_remote), worker="w", sleep=lambda seconds: None) as q:
        q.submit([{"id": "a", "args": {"n": 1}}])
        tip = (bare_remote / "refs/heads/main").read_text().strip()
        (bare_remote / "refs/heads/main.lock").write_text(tip + "\n")
        # the message quotes the server's own words, which name the lock file
        with pytest.raises(RemoteUnavailable, match=r"Unable to create '[^']*refs/heads/main\.lock'"):
            q.claim()
        assert (bare_remote / "refs/heads/main").read_text().strip() == tip
        (bare_remote / "refs/heads/main.lock").unlink()
        run = q.claim()
        assert run is not None and run.id == "a"


def test_a_batch_keeps_to_a_fair_share_of_the_work_not_done(queue: Queue) -> None:
    """Each worker may hold about (pending + running) / workers runs: running ones count, so a
    crowd of workers does not claim in ever smaller batches as the queue drains."""
    queue.submit([{"args": {"n": i}} for i in range(12)])
    with Queue.open(queue.url, worker="other/0") as other:
        assert len(other.claim_batch(4)) == 4  # alone: the whole queue is its share
    mine = queue.claim_batch(12)
    assert len(mine) == 6, "12 not done, 2 workers: 6 each, whatever the other holds already"
    finished = queue.finish([Report(run.id, run.token, "done") for run in mine[:4]], then_claim={"count": 12})
    assert len(finished.claimed) == 2, "8 not done (2 pending, 4 theirs, 2 mine): 4 each, I hold 2"
    assert [t.id for t in queue.tasks(State.PENDING)] == []
