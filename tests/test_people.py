"""People in the loop: hand edits with plain git in real clones, and edit/set/log.

A person writes YAML, commits and pushes; workers claim what the person wrote, honour
their edits, and keep every line they wrote (comments and key order included) through
every move. When a person's push races a worker's claim, git refuses the person's push;
``git pull --rebase`` and a second push lose nothing.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from clones import Clone, remote_file, remote_tip
from typer.testing import CliRunner

from gitqueue import Queue, State
from gitqueue.cli import app
from gitqueue.errors import EditConflict, InvalidTransition
from gitqueue.hooks import install
from gitqueue.task import MARKER
from gitqueue.testing import make_bare_repo

runner = CliRunner()

URGENT = """# Alice: the run the reviewers asked for (see issue 12)
args: {lr: 0.5, bs: 64}   # as in table 2
priority: 10
tags: [rebuttal]
"""


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A queue remote with the server hook installed, three tasks submitted by gitqueue."""
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    install(server=bare)
    with Queue.init(str(bare), worker="setup/0") as q:
        q.submit([{"args": {"lr": lr}} for lr in (0.1, 0.01, 0.001)])
    return bare


@pytest.fixture
def alice(remote: Path, tmp_path: Path) -> Clone:
    return Clone(str(remote), tmp_path / "alice")


@pytest.fixture
def worker(remote: Path) -> Iterator[Queue]:
    with Queue.open(str(remote), worker="gpu-box/0") as q:
        yield q


def person_part(data: bytes) -> str:
    return data.decode().partition(MARKER)[0]


def test_a_hand_written_high_priority_task_is_claimed_before_older_ones(
    alice: Clone, worker: Queue, remote: Path
) -> None:
    alice.write("pending/urgent-lr0.5.yaml", URGENT)
    assert alice.commit("queue the reviewers' run first").returncode == 0
    assert alice.push().returncode == 0
    run = worker.claim()
    assert run is not None and run.id == "urgent-lr0.5"
    assert run.args == {"lr": 0.5, "bs": 64}
    run.done({"acc": 0.93})
    assert person_part(remote_file(remote, "done/urgent-lr0.5.yaml")) == URGENT
    nxt = worker.claim()
    assert nxt is not None and nxt.id == "000001-lr0.1"


def test_a_priority_edited_by_hand_is_honoured_at_the_next_claim(alice: Clone, worker: Queue) -> None:
    path = "pending/000003-lr0.001.yaml"
    alice.write(
        path, alice.read(path).replace("args: {lr: 0.001}\n", "args: {lr: 0.001}\npriority: 5  # try this first\n")
    )
    assert alice.commit("bump the smallest lr").returncode == 0
    assert alice.push().returncode == 0
    run = worker.claim()
    assert run is not None and run.id == "000003-lr0.001" and run.task.priority == 5


def test_deleting_a_pending_file_withdraws_it(alice: Clone, worker: Queue, remote: Path) -> None:
    alice.run("rm", "-q", "pending/000002-lr0.01.yaml")
    assert alice.commit("drop lr=0.01: the live results say it is pointless").returncode == 0
    assert alice.push().returncode == 0
    claimed = []
    while (run := worker.claim()) is not None:
        claimed.append(run.id)
        run.done()
    assert claimed == ["000001-lr0.1", "000003-lr0.001"]
    last = worker.log("000002-lr0.01")[-1]
    assert (last.action, last.by_hand, last.author, last.before, last.after) == (
        "delete",
        True,
        "Alice Person",
        "pending",
        None,
    )


def test_comments_and_key_order_survive_every_move(alice: Clone, worker: Queue, remote: Path) -> None:
    alice.write("pending/urgent-lr0.5.yaml", URGENT)
    alice.commit("add by hand")
    assert alice.push().returncode == 0
    task = "urgent-lr0.5"
    seen = []

    def check(where: str) -> None:
        seen.append(where)
        text = person_part(remote_file(remote, f"{where}/{task}.yaml"))
        assert text == URGENT, f"after the move to {where}/:\n{text}"

    run = worker.claim()
    assert run is not None and run.id == task
    check("running")
    run.fail("CUDA out of memory")
    check("pending")
    run = worker.claim()
    assert run is not None
    run.done({"acc": 0.91})
    check("done")
    worker.requeue([task])
    check("pending")
    run = worker.claim()
    assert run is not None
    worker.cancel([task])
    check("cancelled")
    worker.requeue([task])
    check("pending")
    # and the person's later edit of the moved file applies cleanly
    assert alice.pull().returncode == 0
    path = f"pending/{task}.yaml"
    alice.write(path, alice.read(path).replace("tags: [rebuttal]", "tags: [rebuttal, final]"))
    assert alice.commit("tag it").returncode == 0
    assert alice.push().returncode == 0
    assert person_part(remote_file(remote, path)) == URGENT.replace("[rebuttal]", "[rebuttal, final]")


def test_a_persons_push_racing_a_claim_is_refused_then_rebased_and_nothing_is_lost(
    alice: Clone, worker: Queue, remote: Path
) -> None:
    # Alice edits two tasks: one a worker is about to claim, one it is not.
    first, third = "pending/000001-lr0.1.yaml", "pending/000003-lr0.001.yaml"
    alice.write(first, alice.read(first).replace("args: {lr: 0.1}\n", "args: {lr: 0.1}\ntags: [watch]  # alice\n"))
    alice.write(third, alice.read(third).replace("args: {lr: 0.001}\n", "args: {lr: 0.001}\npriority: 2\n"))
    assert alice.commit("tag one, bump another").returncode == 0
    run = worker.claim()  # ...while a worker claims the first task
    assert run is not None and run.id == "000001-lr0.1"
    claimed_at = remote_tip(remote)

    pushed = alice.push()
    assert pushed.returncode != 0 and "fetch first" in pushed.stderr  # git refuses: nothing was overwritten
    assert remote_tip(remote) == claimed_at

    assert alice.pull().returncode == 0  # what the person does then (see README)
    assert alice.push().returncode == 0
    running = remote_file(remote, "running/000001-lr0.1.yaml").decode()
    assert "tags: [watch]  # alice" in running and f"token: {run.token}" in running  # both kept
    assert "priority: 2" in remote_file(remote, third).decode()
    run.done({"acc": 0.8})  # the run still holds its task
    assert "tags: [watch]  # alice" in remote_file(remote, "done/000001-lr0.1.yaml").decode()


def test_gitqueue_set_changes_one_line_and_keeps_the_rest(alice: Clone, remote: Path) -> None:
    alice.write("pending/urgent-lr0.5.yaml", URGENT)
    alice.commit("add by hand")
    assert alice.push().returncode == 0
    result = runner.invoke(app, ["set", "urgent", "priority=50", "args.bs=128", "--queue", str(remote)])
    assert result.exit_code == 0, result.output
    assert person_part(remote_file(remote, "pending/urgent-lr0.5.yaml")) == URGENT.replace(
        "priority: 10", "priority: 50"
    ).replace("{lr: 0.5, bs: 64}", "{lr: 0.5, bs: 128}")
    alice.run("fetch", "-q")
    subject = alice.run("log", "-1", "--format=%s", "origin/main").stdout.strip()
    assert subject.startswith("set urgent-lr0.5 by ") and subject.endswith("args.bs 64 -> 128, priority 10 -> 50")


def test_set_refuses_what_would_corrupt_a_run(worker: Queue) -> None:
    run = worker.claim()
    assert run is not None
    with pytest.raises(InvalidTransition, match="args of a running task cannot change"):
        worker.set_fields(run.id, {"args.lr": 0.5})
    assert worker.set_fields(run.id, {"priority": 3}) is not None  # harmless: allowed
    run.done()


def _editor_script(tmp_path: Path, body: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_gitqueue_edit_opens_the_editor_again_until_the_file_is_valid(remote: Path, tmp_path: Path) -> None:
    counter = tmp_path / "calls"
    editor = _editor_script(
        tmp_path,
        f"""n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}
if [ "$n" = 0 ]; then sed -i 's/^args: {{lr: 0.01}}$/args: {{lr: 0.02/' "$1"
else grep -q '^# gitqueue: .*expected' "$1" && sed -i 's/^args: {{lr: 0.02$/args: {{lr: 0.02}}  # halved/' "$1"; fi
""",
    )
    before = remote_tip(remote)
    result = runner.invoke(app, ["edit", "000002", "--queue", str(remote)], env={"EDITOR": editor, "VISUAL": editor})
    assert result.exit_code == 0, result.output
    assert counter.read_text().strip() == "2"
    text = remote_file(remote, "pending/000002-lr0.01.yaml").decode()
    assert text.startswith("args: {lr: 0.02}  # halved\n") and "# gitqueue:" not in text
    proc = Clone(str(remote), tmp_path / "check").run("rev-list", "--count", f"{before}..origin/main")
    assert proc.stdout.strip() == "1"  # one commit


def test_an_edit_of_a_task_claimed_meanwhile_lands_on_the_moved_file(remote: Path, worker: Queue) -> None:
    def editor(text: str) -> str:
        with Queue.open(str(remote), worker="other/0") as other:
            assert other.claim() is not None  # the task moves to running/ while the person types
        return text.replace("args: {lr: 0.1}\n", "args: {lr: 0.1}\npriority: 1  # keep an eye on it\n")

    task = worker.edit("000001", editor)
    assert task is not None and task.state is State.RUNNING and task.priority == 1
    assert "priority: 1  # keep an eye on it" in remote_file(remote, "running/000001-lr0.1.yaml").decode()

    def change_args(text: str) -> str:
        return text.replace("args: {lr: 0.01}", "args: {lr: 0.5}")

    def racing_editor(text: str) -> str:
        with Queue.open(str(remote), worker="other/1") as other:
            assert other.claim() is not None
        return change_args(text)

    with pytest.raises(InvalidTransition, match="args of a running task cannot change"):
        worker.edit("000002", racing_editor)


def test_an_edit_racing_another_persons_edit_writes_nothing_and_keeps_the_text(remote: Path, worker: Queue) -> None:
    def editor(text: str) -> str:
        with Queue.open(str(remote), worker="bob/0") as bob:
            bob.set_fields("000003", {"priority": 7})
        return text.replace("args: {lr: 0.001}", "args: {lr: 0.002}")

    with pytest.raises(EditConflict) as caught:
        worker.edit("000003", editor)
    assert "args: {lr: 0.002}" in caught.value.text
    text = remote_file(remote, "pending/000003-lr0.001.yaml").decode()
    assert "priority: 7" in text and "lr: 0.001" in text


def test_edit_fixes_a_file_that_is_broken_now(tmp_path: Path) -> None:
    bare = make_bare_repo(tmp_path / "srv2" / "queue.git")  # no hook: the broken file lands
    with Queue.init(str(bare), worker="w/0") as q:
        q.submit([{"args": {"lr": 0.1}}])
        ivy = Clone(str(bare), tmp_path / "ivy")
        ivy.write("pending/oops.yaml", "args: {lr: 0.3\n")
        ivy.commit("typo")
        assert ivy.push().returncode == 0
        task = q.edit("oops", lambda text: text.replace("{lr: 0.3\n", "{lr: 0.3}\n"))
        assert task is not None and task.args == {"lr": 0.3}
        assert q.validate() == []


def test_gitqueue_log_tells_a_tasks_life(alice: Clone, worker: Queue, remote: Path) -> None:
    path = "pending/000001-lr0.1.yaml"
    alice.write(path, alice.read(path).replace("args: {lr: 0.1}\n", "args: {lr: 0.1}\npriority: 4\n"))
    alice.commit("bump")
    assert alice.push().returncode == 0
    run = worker.claim()
    assert run is not None
    run.fail("diverged")
    run = worker.claim()
    assert run is not None
    run.done({"acc": 0.7})
    worker.requeue(["000001-lr0.1"])
    result = runner.invoke(app, ["log", "000001", "--queue", str(remote), "--format", "json"])
    assert result.exit_code == 0, result.output
    events = json.loads(result.stdout)
    assert [(e["action"], e["before"], e["after"]) for e in events] == [
        ("submit", None, "pending"),
        ("edit", "pending", "pending"),
        ("claim", "pending", "running"),
        ("fail", "running", "pending"),
        ("claim", "pending", "running"),
        ("done", "running", "done"),
        ("requeue", "done", "pending"),
    ]
    edit = events[1]
    assert (edit["author"], edit["by_hand"], edit["detail"]) == ("Alice Person", True, "priority 0 -> 4")
    assert all(len(e["commit"]) == 40 and e["when"] for e in events)
    table = runner.invoke(app, ["log", "000001", "--queue", str(remote)])
    assert "edit (by hand): priority 0 -> 4" in table.stdout
    # moves made by hand are named as the command that makes them would be
    assert alice.pull().returncode == 0
    for before, after in (("pending", "cancelled"), ("cancelled", "pending")):
        alice.run("mv", f"{before}/000001-lr0.1.yaml", f"{after}/000001-lr0.1.yaml")
        alice.commit(f"{before} to {after} by hand")
        assert alice.push().returncode == 0
    result = runner.invoke(app, ["log", "000001", "--queue", str(remote), "--format", "json"])
    assert [(e["action"], e["by_hand"], e["detail"]) for e in json.loads(result.stdout)[-2:]] == [
        ("cancel", True, "pending -> cancelled"),
        ("requeue", True, "cancelled -> pending"),
    ]


def test_a_file_without_a_final_newline_goes_through_every_move(alice: Clone, worker: Queue, remote: Path) -> None:
    alice.write("pending/terse.yaml", "args: {lr: 0.5}\npriority: 1  # no newline at the end")
    alice.commit("a terse task")
    assert alice.push().returncode == 0
    run = worker.claim()  # the claim adds the missing newline above the marker: the hook lets it pass
    assert run is not None and run.id == "terse"
    run.done()
    assert remote_file(remote, "done/terse.yaml").startswith(
        b"args: {lr: 0.5}\npriority: 1  # no newline at the end\n" + MARKER.encode()
    )


def test_when_the_rebase_conflicts_the_readme_advice_works_and_keeping_both_is_refused(
    alice: Clone, worker: Queue, remote: Path
) -> None:
    alice.write("pending/tiny.yaml", "args: {lr: 1}\npriority: 1\n")
    alice.commit("a tiny task")
    assert alice.push().returncode == 0
    alice.write("pending/tiny.yaml", "args: {lr: 1}\npriority: 5\n")
    alice.commit("bump it")
    run = worker.claim()  # claimed meanwhile: the small file changed too much for git to follow the move
    assert run is not None and run.id == "tiny"
    assert alice.push().returncode != 0
    rebase = alice.pull()
    assert rebase.returncode != 0 and "CONFLICT (modify/delete): pending/tiny.yaml" in rebase.stdout + rebase.stderr
    # keeping both files is what a hurried person does; the hook refuses it
    alice.run("add", "pending/tiny.yaml")
    alice.run("-c", "core.editor=true", "rebase", "--continue")
    assert "task 'tiny' is also in running/tiny.yaml" in alice.push().stderr
    # the advice: make the change in the task's new file, drop the old one
    alice.run("reset", "-q", "--hard", "origin/main")
    text = alice.read("running/tiny.yaml").replace("priority: 1\n", "priority: 5\n")
    alice.write("running/tiny.yaml", text)
    alice.commit("bump it, where it is now")
    assert alice.push().returncode == 0
    run.done()
    assert remote_file(remote, "done/tiny.yaml").startswith(b"args: {lr: 1}\npriority: 5\n")


def test_an_args_edit_a_rebase_carries_onto_a_running_task_is_recorded_and_flagged(tmp_path: Path) -> None:
    """The issue's case: no server hook (github.com), a person changes args.lr while a worker
    claims the task, and `git pull --rebase` carries the edit onto running/ID.yaml."""
    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    with Queue.init(str(bare), worker="setup/0") as q:
        [task_id] = q.submit([{"args": {"lr": 0.1, "bs": 32}, "id": "lr-bs"}])
    alice = Clone(str(bare), tmp_path / "alice")
    path = f"pending/{task_id}.yaml"
    alice.write(path, alice.read(path).replace("lr: 0.1", "lr: 0.5"))
    assert alice.commit("lr 0.5 instead").returncode == 0
    with Queue.open(str(bare), worker="gpu-box/0") as worker:
        run = worker.claim()
        assert run is not None and run.args == {"lr": 0.1, "bs": 32}
        assert alice.push().returncode != 0 and alice.pull().returncode == 0
        assert "lr: 0.5" in alice.read(f"running/{task_id}.yaml")  # git carried the edit along
        assert alice.push().returncode == 0
        finished = run.done({"acc": 0.7})  # the run used lr=0.1, as it was claimed
    attempt = finished.attempts[-1]
    assert finished.state is State.DONE and attempt["ran_with"] == {"lr": 0.1, "bs": 32}
    assert finished.args == {"lr": 0.5, "bs": 32} and finished.args_changed
    subject = Clone(str(bare), tmp_path / "reader").run("log", "-1", "--format=%s").stdout.strip()
    assert subject.endswith("(its args changed while it ran)")

    rows = json.loads(runner.invoke(app, ["results", "--queue", str(bare), "--format", "json"]).stdout)
    assert rows[0]["args.lr"] == 0.1 and rows[0]["result.acc"] == 0.7, "the result beside the args it came from"
    assert rows[0]["warning"] == "args changed while it ran: the file now says lr=0.5 bs=32"
    flagged = runner.invoke(app, ["validate", "--queue", str(bare)])
    assert flagged.exit_code == 1 and flagged.stdout.strip() == (
        f"done/{task_id}.yaml: its result came from other args than the file's (it ran with lr=0.1 bs=32); "
        "requeue it to run the file's args"
    )


def test_a_run_whose_args_did_not_change_records_nothing_extra(worker: Queue, remote: Path) -> None:
    run = worker.claim()
    assert run is not None
    done = run.done()
    assert "ran_with" not in done.attempts[-1] and not done.args_changed
    assert runner.invoke(app, ["validate", "--queue", str(remote)]).exit_code == 0


def test_a_script_finishing_with_done_and_a_token_records_the_args_its_claim_had(tmp_path: Path) -> None:
    """`gitqueue claim` in one process, `gitqueue done ID --token T` in another: the args the
    run used come from its claim commit."""
    from conftest import RemoteRepo

    bare = make_bare_repo(tmp_path / "srv" / "queue.git")
    with Queue.init(str(bare), worker="setup/0") as q:
        q.submit([{"args": {"lr": 0.1}, "id": "scripted"}, {"args": {"lr": 0.2}, "id": "untouched", "priority": -1}])
    claimed = json.loads(runner.invoke(app, ["claim", "--queue", str(bare), "--format", "json"]).stdout)
    remote = RemoteRepo(bare)
    text = remote.read("running/scripted.yaml")
    remote.person_commit({"running/scripted.yaml": text.replace("lr: 0.1", "lr: 0.5")})
    done = runner.invoke(app, ["done", "scripted", "--token", claimed["token"], "--queue", str(bare)])
    assert done.exit_code == 0, done.output
    other = json.loads(runner.invoke(app, ["claim", "--queue", str(bare), "--format", "json"]).stdout)
    assert runner.invoke(app, ["done", "untouched", "--token", other["token"], "--queue", str(bare)]).exit_code == 0
    with Queue.open(str(bare), worker="reader/0") as q:
        scripted, untouched = q.get("scripted"), q.get("untouched")
    assert scripted.args == {"lr": 0.5} and scripted.attempts[-1]["ran_with"] == {"lr": 0.1}
    assert "ran_with" not in untouched.attempts[-1]
