"""``@gitqueue.loop``: an experiment function as a worker, in this process, on a real queue.

This module uses ``from __future__ import annotations`` on purpose: most scripts do, and then
a parameter's annotation is the string ``"int"``, which type conversion must still honour.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo

import gitqueue
from gitqueue import GitqueueError, Queue, State

LEASE_REFS = "refs/gitqueue/leases"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_parameters_come_from_args_with_type_conversion_and_defaults(queue: Queue) -> None:
    queue.submit(
        [
            {"id": "a", "args": {"lr": "0.5", "epochs": "3", "flag": "yes"}},
            {"id": "b", "args": {"lr": 1, "epochs": 2.0, "name": 7, "unused": "x"}},
        ]
    )
    seen: list[tuple[Any, ...]] = []

    @gitqueue.loop(queue)
    def train(lr: float, epochs: int, flag: bool = False, name: str = "default") -> dict[str, Any]:
        seen.append((lr, epochs, flag, name))
        return {"loss": lr * epochs}

    assert train() == 0
    assert seen == [(0.5, 3, True, "default"), (1.0, 2, False, "7")]
    assert [tuple(type(v) for v in call) for call in seen] == [(float, int, bool, str)] * 2
    assert {t.id: t.result for t in queue.tasks(State.DONE)} == {"a": {"loss": 1.5}, "b": {"loss": 2.0}}
    assert train.__name__ == "train"


def test_the_return_value_becomes_the_result(queue: Queue) -> None:
    queue.submit([{"id": "dict", "args": {"r": {"acc": 0.9}}}, {"id": "num", "args": {"r": 3}}])
    queue.submit([{"id": "none", "args": {"r": None}}])

    @gitqueue.loop(queue)
    def run(r: Any) -> Any:
        return r

    assert run() == 0
    results = {t.id: t.result for t in queue.tasks(State.DONE)}
    assert results == {"dict": {"acc": 0.9}, "num": {"value": 3}, "none": None}
    [attempt] = queue.get("dict").attempts
    assert attempt["outcome"] == "done" and attempt["worker"] == "test-box/0" and attempt["duration"] >= 0


def test_an_exception_fails_the_task_with_its_traceback_tail(queue: Queue) -> None:
    queue.submit([{"id": "bad", "args": {"step": 7}, "max_attempts": 2}])
    calls = []

    @gitqueue.loop(queue)
    def diverge(step: int) -> None:
        calls.append(step)
        raise FloatingPointError(f"loss is nan at step {step}")

    assert diverge() == 7  # its task failed
    assert calls == [7, 7]
    task = queue.get("bad")
    assert task.state is State.FAILED and [a["outcome"] for a in task.attempts] == ["failed", "failed"]
    error = task.attempts[-1]["error"]
    assert error.startswith("Traceback (most recent call last):")
    assert "in diverge" in error and error.rstrip().endswith("FloatingPointError: loss is nan at step 7")


def test_current_task_inside_the_function(queue: Queue) -> None:
    [task_id] = queue.submit([{"args": {"seed": 1}, "tags": ["sweep"]}])
    seen = []

    @gitqueue.loop(queue)
    def experiment(seed: int) -> dict[str, Any]:
        run = gitqueue.current_task()
        seen.append((run.id, run.args, run.attempt, run.task.tags))
        return {"id": run.id}

    assert experiment() == 0
    assert seen == [(task_id, {"seed": 1}, 1, ["sweep"])]
    with pytest.raises(GitqueueError, match=r"only available inside a @gitqueue\.loop function"):
        gitqueue.current_task()


def test_args_that_do_not_fit_the_parameters_fail_without_a_call(queue: Queue) -> None:
    queue.submit(
        [
            {"id": "missing", "args": {"lr": 0.1}, "max_attempts": 1},
            {"id": "lossy", "args": {"lr": 0.1, "epochs": 2.5}, "max_attempts": 1},
            {"id": "word", "args": {"lr": "fast", "epochs": 1}, "max_attempts": 1},
        ]
    )
    calls = []

    @gitqueue.loop(queue)
    def train(lr: float, epochs: int) -> None:
        calls.append((lr, epochs))

    assert train() == 7  # every task failed
    assert calls == []
    errors = {t.id: t.attempts[0]["error"] for t in queue.tasks(State.FAILED)}
    assert errors == {
        "missing": "parameter 'epochs' has no default and the task lacks it (its args: lr)",
        "lossy": "arg epochs=2.5 cannot be read as int",
        "word": "arg lr='fast' cannot be read as float",
    }


def test_labels_and_limits(queue: Queue) -> None:
    queue.submit(
        [
            {"id": "a100-1", "args": {"ok": False}, "requires": {"gpu": "a100"}, "max_attempts": 1},
            {"id": "a100-2", "args": {"ok": False}, "requires": {"gpu": "a100"}, "max_attempts": 1},
            {"id": "a100-3", "args": {"ok": True}, "requires": {"gpu": "a100"}},
            {"id": "v100", "args": {"ok": True}, "requires": {"gpu": "v100"}},
        ]
    )

    def body(ok: bool) -> None:
        if not ok:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    assert gitqueue.loop(queue, labels={"gpu": "a100"}, max_failures=2)(body)() == 1
    assert {t.id: t.state.value for t in queue.tasks()} == {
        "a100-1": "failed", "a100-2": "failed", "a100-3": "pending", "v100": "pending",
    }  # fmt: skip
    assert gitqueue.loop(queue, labels={"gpu": "a100"}, max_tasks=1)(body)() == 0
    assert queue.get("a100-3").state is State.DONE and queue.get("v100").state is State.PENDING


def test_loop_opens_a_queue_by_url_as_the_named_worker(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"id": "t", "args": {"x": 2}}])

    @gitqueue.loop(str(bare_remote), worker="laptop/1")
    def square(x: int) -> int:
        return x * x

    assert square() == 0
    task = queue.get("t")
    assert task.result == {"value": 4} and task.attempts[0]["worker"] == "laptop/1"


def test_a_long_function_keeps_its_lease_alive(queue: Queue, remote_repo: RemoteRepo) -> None:
    queue.submit([{"id": "long", "args": {}, "lease": 3}])

    def lease_refs() -> list[str]:
        return remote_repo.git("for-each-ref", "--format=%(refname)", LEASE_REFS).split()

    @gitqueue.loop(queue)
    def long() -> dict[str, Any]:
        deadline = time.monotonic() + 10  # heartbeats come every lease / 3 = 1 s
        while not lease_refs():
            assert time.monotonic() < deadline, "no heartbeat while the function ran"
            time.sleep(0.05)
        return {"refs": lease_refs()}

    assert long() == 0
    task = queue.get("long")
    assert task.state is State.DONE and task.result == {"refs": [f"{LEASE_REFS}/{task.attempts[0]['token']}"]}
    assert lease_refs() == []  # dropped with the report
    assert not any(s.startswith("heartbeat") for s in remote_repo.log())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_interrupts_the_function_and_returns_its_task(queue: Queue, sig: int) -> None:
    queue.submit([{"id": "t", "args": {}}, {"id": "u", "args": {}}])
    finished = []

    @gitqueue.loop(queue)
    def train() -> None:
        os.kill(os.getpid(), sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.01)
        finished.append(True)

    assert train() == 128 + sig
    assert finished == []
    task = queue.get("t")
    assert task.state is State.PENDING and [a["outcome"] for a in task.attempts] == ["interrupted"]
    assert task.attempts_spent == 0
    assert queue.get("u").state is State.PENDING  # and the worker took nothing else
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_report_from_a_reaped_run_changes_nothing(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, capsys: pytest.CaptureFixture[str]
) -> None:
    queue.submit([{"id": "t", "args": {}, "lease": 60}])
    clock = FakeClock()
    tips = []

    @gitqueue.loop(queue)
    def experiment() -> dict[str, str]:
        with Queue(str(bare_remote), worker="reaper", monotonic=clock) as reaper:
            assert reaper.reap() == []
            clock.now += 61
            assert reaper.reap() == ["t"]
        with Queue(str(bare_remote), worker="other") as other:
            assert other.claim() is not None
        tips.append(remote_repo.tip())
        return {"late": "yes"}

    assert experiment() == 0
    assert remote_repo.tip() == tips[0]
    task = queue.get("t")
    assert task.state is State.RUNNING and task.run is not None and task.run["worker"] == "other"
    assert [a["outcome"] for a in task.attempts] == ["reaped"] and task.result is None
    log = capsys.readouterr().err
    told = "t: its task is held by another run now (of other), no longer by this one; its run had ended"
    late = r"run \w+ no longer holds task t: run \w+ of other holds it now; nothing changed"
    assert told in log or re.search(late, log), log  # found out as the run ended, or when it reported
    remote_repo.fsck()
