"""What a later worker does with the records of commands that dead workers left running.

Real process groups (``sleep`` under ``sh``), real signals; the clock for the grace period
is passed in. The end-to-end case (a SIGKILLed ``gitqueue work``) is in test_worker.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import poll_until

from gitqueue.leftovers import members, record, running, stop_leftovers

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds processes through /proc (Linux)")

RUN_ENV = {"GITQUEUE_TASK_ID": "t1", "GITQUEUE_WORKER": "gpu/0"}


@pytest.fixture
def groups() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Process groups a test starts (each its own session, as a worker starts commands)."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)


def start(groups: list[subprocess.Popen[bytes]], script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], env={**os.environ, **env}, start_new_session=True)
    groups.append(proc)
    return proc


def dead_owner_record(folder: Path, group: int, host: str = socket.gethostname()) -> Path:
    """The record a worker (on ``host``) that has since died would have left for ``group``."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{group}.json"
    owner = {"group": group, "task": "t1", "worker": "gpu/0", "host": host, "pid": gone.pid, "pid_started": "0"}
    path.write_text(json.dumps(owner))
    return path


def test_a_live_workers_command_is_left_alone(tmp_path: Path, groups: list[subprocess.Popen[bytes]]) -> None:
    proc = start(groups, "exec sleep 600", RUN_ENV)
    path = record(tmp_path, proc.pid, "t1", "gpu/0")  # this process is its worker, and it is alive
    assert path is not None and path.exists()
    assert stop_leftovers(tmp_path, grace=10) == []
    assert running(proc.pid) and path.exists()


def test_a_group_id_that_now_belongs_to_something_else_is_not_signalled(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    stranger = start(groups, "exec sleep 600", {"GITQUEUE_TASK_ID": "another-task", "GITQUEUE_WORKER": "gpu/0"})
    path = dead_owner_record(tmp_path, stranger.pid)
    assert stop_leftovers(tmp_path, grace=10) == []
    assert running(stranger.pid), "its processes do not carry the run's task id"
    assert not path.exists(), "the record is dropped: nothing of that run is left"


def test_records_from_another_machine_sharing_the_cache_are_left_alone(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    same_ids_here = start(groups, "exec sleep 600", RUN_ENV)
    path = dead_owner_record(tmp_path, same_ids_here.pid, host="another-machine")
    assert stop_leftovers(tmp_path, grace=10) == []
    assert running(same_ids_here.pid) and path.exists(), "its pids name processes of that machine"


def test_sigterm_first_then_sigkill_once_the_grace_period_has_passed(
    tmp_path: Path, groups: list[subprocess.Popen[bytes]]
) -> None:
    # A script that ignores SIGTERM, and the sleep it started (which ignores it too).
    leader = start(groups, "trap '' TERM; sleep 600 & wait; wait", RUN_ENV)
    poll_until(lambda: len(members(leader.pid)) == 2, what="the script to start its sleep")
    path = dead_owner_record(tmp_path, leader.pid)

    said = stop_leftovers(tmp_path, grace=10, now=1000.0)
    assert said == ["stopping 2 process(es) of t1 that dead worker gpu/0 left running"]
    assert json.loads(path.read_text())["terminated"] == 1000.0
    assert all(running(pid) for pid in members(leader.pid)), "both ignore SIGTERM"
    assert stop_leftovers(tmp_path, grace=10, now=1009.0) == [], "within the grace period: no SIGKILL yet"
    assert stop_leftovers(tmp_path, grace=10, now=1010.0) == [
        "killing 2 process(es) of t1 that outlived SIGTERM for 10s"
    ]
    poll_until(lambda: not members(leader.pid), what="the group to die")
    assert stop_leftovers(tmp_path, grace=10, now=1011.0) == [] and not path.exists()


def test_only_notes_of_dead_workers_of_this_machine_and_queue_name_dead_runs(tmp_path: Path) -> None:
    from gitqueue.leftovers import Holdings, dead_runs, noted_runs

    mine = Holdings(tmp_path, queue="q main", worker="gpu/0")
    mine.note({"tok-live": ("t1", True)})  # this process: alive
    gone = subprocess.Popen(["true"])
    gone.wait()
    base = {
        "worker": "gpu/1",
        "pid": gone.pid,
        "pid_started": "0",
        "runs": {"tok-dead": {"task": "t2", "started": False}},
    }
    notes = tmp_path / "workers"
    (notes / "dead.json").write_text(json.dumps({**base, "queue": "q main", "host": socket.gethostname()}))
    (notes / "elsewhere.json").write_text(json.dumps({**base, "queue": "q main", "host": "another-machine"}))
    (notes / "other-queue.json").write_text(json.dumps({**base, "queue": "other main", "host": socket.gethostname()}))
    (notes / "torn.json").write_text('{"queue": "q ma')
    assert {token: run.alive for token, run in noted_runs(tmp_path, queue="q main").items()} == {
        "tok-live": True,
        "tok-dead": False,
    }
    [dead] = dead_runs(tmp_path, queue="q main").values()
    assert (dead.task_id, dead.worker, dead.started) == ("t2", "gpu/1", False)
    mine.note({})
    assert not mine.path.exists(), "nothing held: no note"
