"""Faults that must never stop the queue: tasks that cannot start, a wrong command, a damaged cache.

Workers are real ``python -m gitqueue work`` processes (the Lab of test_worker); every test
asserts on what the queue's remote holds afterwards.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_worker import Lab, make_lab  # noqa: F401  (a fixture)

from gitqueue import State


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


def test_a_task_whose_args_make_the_command_line_too_long_fails_and_the_worker_goes_on(lab: Lab) -> None:
    lab.submit(
        {"id": "a-long", "args": {"text": "x" * 200_000}, "priority": 5, "max_attempts": 2},
        {"id": "b-next", "args": {"text": "short"}},
    )
    worker = lab.start("w1", command=reader(lab, "{text}"))
    assert worker.wait() == 0, worker.stderr
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
    assert worker.wait() == 0, worker.stderr
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
    assert worker.wait() == 0, worker.stderr
    assert lab.remote.states() == {"a-lacks": "failed", "b-has": "done", "c-lacks": "failed"}
    for task_id in ("a-lacks", "c-lacks"):
        [attempt] = lab.task(task_id).attempts
        assert attempt["error"] == "placeholder {x} names an arg the task lacks (its args: y)"
