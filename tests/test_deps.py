"""``after: [id, ...]``: a task waits until each of them is done; stuck ones say why; cycles and
unknown ids are refused by ``validate`` and the server hook."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import test_cli
import test_hooks
from clones import Clone
from test_cli import gq
from test_hooks import Hooked, refused

from gitqueue import InvalidTask, Queue
from gitqueue.queue import Report
from gitqueue.task import parse_task

cli_queue = test_cli.cli_queue  # fixtures
local_hooked = test_hooks.local_hooked


def test_a_task_is_claimed_only_once_all_it_waits_after_are_done(queue: Queue) -> None:
    queue.submit(
        [
            {"id": "prep", "args": {"step": "prep"}},
            {"id": "train", "args": {"step": "train"}, "after": ["prep"], "priority": 9},
            {"id": "eval", "args": {"step": "eval"}, "after": ["prep", "train"], "priority": 9},
            {"id": "side", "args": {"step": "side"}},
        ]
    )
    first = queue.claim()
    assert first is not None and first.id == "prep"  # train outranks it but waits for it
    second = queue.claim()
    assert second is not None and second.id == "side"
    assert queue.claim() is None  # both the rest wait on prep, still running
    finished = queue.finish(Report("prep", first.token, "done"), then_claim={"count": 2})
    assert [run.id for run in finished.claimed] == ["train"]  # freed by the very commit that finishes prep
    queue.done("train", token=finished.claimed[0].token)
    last = queue.claim()
    assert last is not None and last.id == "eval"


def test_a_task_after_a_failed_one_is_stuck_and_status_and_show_say_why(cli_queue: str) -> None:
    with Queue.open(cli_queue, worker="w/0") as q:
        q.submit([{"id": "base", "args": {"x": 1}, "max_attempts": 1}, {"id": "child", "args": {"x": 2}}])
        q.submit([{"id": "grandchild", "args": {"x": 3}, "after": ["child"]}])
        run = q.claim()
        assert run is not None and run.id == "base"
        run.fail("boom")
        q.cancel(["child"])
        assert q.claim() is None  # grandchild waits on a cancelled task: never claimed
        status = q.status()
    assert status["waiting"] == 1
    assert status["stuck"] == [
        {
            "id": "grandchild",
            "waits_on": {"child": "cancelled"},
            "stuck": "it waits on child, which was cancelled: requeue child or edit its 'after'",
        }
    ]
    table = gq("status").stdout
    assert "waiting on other tasks: 1 (stuck 1)" in table and "stuck grandchild: it waits on child" in table
    shown = gq("show", "grandchild").stdout
    assert "# waits on child (cancelled); stuck: it waits on child, which was cancelled" in shown
    assert json.loads(gq("show", "grandchild", "-f", "json").stdout)["waiting"]["waits_on"] == {"child": "cancelled"}
    gq("requeue", "child")
    assert "stuck" not in gq("show", "grandchild").stdout
    assert "# waits on child (pending)" in gq("show", "grandchild").stdout


def test_submit_after_sets_the_field(cli_queue: str) -> None:
    gq("submit", "a=1", "--id", "first")
    gq("submit", "a=2", "--id", "second")
    ids = gq("submit", "--grid", "b=1,2", "--after", "first", "--after", "second").stdout.split()
    with Queue.open(cli_queue) as q:
        assert [q.get(task_id).after for task_id in ids] == [["first", "second"]] * 2
    assert "names a task twice" in gq("submit", "c=1", "--after", "first", "--after", "first", code=1).stderr


def test_after_must_list_other_task_ids() -> None:
    for text, problem in [
        ("args: {}\nafter: prep\n", "field 'after' must be a list of task ids"),
        ("args: {}\nafter: [../up]\n", "'../up' is not one"),
        ("args: {}\nafter: [t]\n", "names the task itself"),
        ("args: {}\nafter: [a, a]\n", "names a task twice"),
    ]:
        with pytest.raises(InvalidTask, match=problem.replace("(", r"\(").replace(".", r"\.")):
            parse_task(text.encode(), path="pending/t.yaml")
    assert parse_task(b"args: {}\nafter: [a, b]\n", path="pending/t.yaml").after == ["a", "b"]


def test_validate_and_the_hook_refuse_unknown_ids_and_cycles(local_hooked: Hooked, tmp_path: Path) -> None:
    with Queue.init(local_hooked.url, worker="w/0") as q:
        q.submit([{"id": "a", "args": {}}, {"id": "b", "args": {}, "after": ["a"]}])
    dana = local_hooked.clone(tmp_path / "dana")
    tip = local_hooked.tip()
    dana.write("pending/c.yaml", "args: {}\nafter: [nosuch]\n")
    assert dana.commit("wait on a typo").returncode == 0
    message = refused(dana.push())
    assert "pending/c.yaml: field 'after' names 'nosuch', which is no task of the queue" in message
    dana.run("reset", "-q", "--hard", "origin/main")
    dana.write("pending/a.yaml", "args: {}\nafter: [b]\n")  # a after b after a
    assert dana.commit("a cycle").returncode == 0
    message = refused(dana.push())
    assert "pending/a.yaml: field 'after' makes a cycle: a -> b -> a" in message
    assert local_hooked.tip() == tip
    dana.run("reset", "-q", "--hard", "origin/main")
    dana.write("pending/c.yaml", "args: {}\nafter: [a, b]\n")  # a real dependency passes
    assert dana.commit("after both").returncode == 0
    assert dana.push().returncode == 0


def test_validate_reports_unknown_ids_and_cycles_in_a_clone(
    cli_queue: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clone = Clone(cli_queue, tmp_path / "alice")
    clone.write("pending/x.yaml", "args: {}\nafter: [y]\n")
    clone.write("pending/y.yaml", "args: {}\nafter: [z]\n")
    clone.write("pending/z.yaml", "args: {}\nafter: [x, gone]\n")
    clone.write("pending/w.yaml", "args: {}\nafter: [x]\n")  # waits on the cycle, is not part of it
    monkeypatch.chdir(clone.path)
    printed = gq("validate", code=1).stdout.splitlines()
    assert printed == [
        "pending/x.yaml: field 'after' makes a cycle: x -> y -> z -> x (each waits for the next: none would ever run)",
        "pending/z.yaml: field 'after' names 'gone', which is no task of the queue",
    ]


def test_waiting_tasks_in_fanned_out_folders_go_once_their_task_is_done(queue: Queue) -> None:
    specs = [{"id": f"{i:05d}-t", "args": {"i": i}, "after": ["gate"] if i < 600 else []} for i in range(1100)]
    queue.submit([{"id": "gate", "args": {}, "priority": 1}, *specs])  # more than a flat folder holds
    gate = queue.claim()
    assert gate is not None and gate.id == "gate"
    first = queue.claim_batch(3)
    assert [run.id for run in first] == ["00600-t", "00601-t", "00602-t"]  # the 600 before wait on the gate
    finished = queue.finish(Report("gate", gate.token, "done"), then_claim={"count": 2})
    assert [run.id for run in finished.claimed] == ["00000-t", "00001-t"]
    queue.requeue(["gate"])  # not done any more: the rest wait again
    assert [run.id for run in queue.claim_batch(2)] == ["gate", "00603-t"]
