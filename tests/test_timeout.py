"""Wall-clock limits and stopping signals, with real ``gitqueue work`` processes.

A run past its task's ``timeout`` (else the worker's ``--task-timeout``) is stopped: its
process group gets SIGTERM, then SIGKILL after ``--grace``, and the attempt is spent with
outcome ``timeout``. A worker told to stop (SIGTERM, or SIGUSR1, Slurm's warning before a
job's time limit) returns its run without spending an attempt, even when the signal reached
its command too, as Slurm's ``scancel`` does. Tests wait for the worker process to exit and
then read the remote; the commands they run sleep, the tests never do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo, poll_until
from typer.testing import CliRunner

from gitqueue import Queue, State, Task
from gitqueue.cli import app
from gitqueue.errors import InvalidTask
from gitqueue.task import parse_task

REPO = Path(__file__).resolve().parent.parent

# Writes its pid to <argv[1]>/<task id>.pid; then exits 0, unless its task says `hang: true` (it sleeps) or
# `stubborn: true` (it sleeps and ignores SIGTERM).
SLEEPER = r"""
import json, os, pathlib, signal, sys, time
args = json.loads(os.environ["GITQUEUE_ARGS"])
if args.get("stubborn"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
pid_file = pathlib.Path(sys.argv[1]) / (os.environ["GITQUEUE_TASK_ID"] + ".pid")
pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
pid_file.with_suffix(".tmp").replace(pid_file)
if args.get("hang") or args.get("stubborn"):
    time.sleep(600)
"""


def start_worker(tmp_path: Path, url: str, *flags: str, command: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "gitqueue", "work", "--queue", url, "--worker", "w1"]
    argv += ["--log-dir", str(tmp_path / "logs"), *flags, "--", *command]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    err = open(tmp_path / "worker.err", "wb")  # noqa: SIM115 -- the worker writes to it while it runs
    try:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env)
    finally:
        err.close()


def finish(worker: subprocess.Popen[bytes], tmp_path: Path, timeout: float = 60.0) -> int:
    try:
        return worker.wait(timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
        said = (tmp_path / "worker.err").read_text()
        raise AssertionError(f"the worker still ran after {timeout:.0f}s:\n{said}") from None


def task_on(remote: RemoteRepo, task_id: str) -> Task:
    [path] = remote.locations()[task_id]
    return parse_task(remote.read(path).encode(), path=path)


def submit(url: str, *specs: dict[str, Any]) -> None:
    with Queue.open(url, worker="submitter") as q:
        q.submit(specs)


@pytest.fixture
def sleeper(tmp_path: Path) -> list[str]:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    return [sys.executable, str(script), str(tmp_path)]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").exists() or ") Z" not in Path(f"/proc/{pid}/stat").read_text()


def test_a_run_over_its_tasks_timeout_is_stopped_and_spends_the_attempt(
    tmp_path: Path, queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, sleeper: list[str]
) -> None:
    url = str(bare_remote)
    submit(
        url,
        {"id": "a-hung", "args": {"hang": True}, "timeout": 0.5, "max_attempts": 1},
        {"id": "b-quick", "args": {}},
    )
    # The task's own timeout wins over the worker's; b-quick has none, and finishes.
    worker = start_worker(tmp_path, url, "--task-timeout", "3600", "--grace", "5", command=sleeper)
    assert finish(worker, tmp_path) == 7  # a run it ran timed out: not all went well
    task = task_on(remote_repo, "a-hung")
    assert task.state is State.FAILED
    [attempt] = task.attempts
    assert attempt["outcome"] == "timeout" and attempt["exit_code"] == -signal.SIGTERM
    assert "timed out after 0.5s" in attempt["error"]
    assert task.attempts_spent == 1
    pid = int((tmp_path / "a-hung.pid").read_text())
    assert not alive(pid)
    assert any(s.startswith("timeout a-hung by w1 (attempt 1): out of attempts") for s in remote_repo.log())
    shown = CliRunner().invoke(app, ["log", "a-hung", "--queue", url])
    assert shown.exit_code == 0, shown.output
    assert "timeout" in shown.output and "running -> failed" in shown.output
    assert [a["outcome"] for a in task_on(remote_repo, "b-quick").attempts] == ["done"]


def test_task_timeout_on_the_worker_kills_a_command_that_ignores_sigterm_after_the_grace(
    tmp_path: Path, queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, sleeper: list[str]
) -> None:
    url = str(bare_remote)
    submit(url, {"id": "stubborn", "args": {"stubborn": True}, "max_attempts": 2})
    worker = start_worker(tmp_path, url, "--task-timeout", "0.5", "--grace", "0.5", command=sleeper)
    assert finish(worker, tmp_path) == 7  # a run it ran timed out: not all went well
    task = task_on(remote_repo, "stubborn")
    assert task.state is State.FAILED
    assert [(a["attempt"], a["outcome"], a["exit_code"]) for a in task.attempts] == [
        (1, "timeout", -signal.SIGKILL),
        (2, "timeout", -signal.SIGKILL),
    ]
    assert any(s.startswith("timeout stubborn by w1 (attempt 1): will retry") for s in remote_repo.log())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_that_reaches_the_command_too_returns_the_task_unspent(
    tmp_path: Path, queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, sleeper: list[str], sig: int
) -> None:
    """Slurm's scancel (and a node's shutdown) signal every process of the job at once: the
    command dies of the signal as the worker learns it must stop. That is no failure of the
    task: it goes back to pending with no attempt spent."""
    url = str(bare_remote)
    submit(url, {"id": "long", "args": {"hang": True}})
    worker = start_worker(tmp_path, url, "--grace", "5", command=sleeper)
    pid_file = tmp_path / "long.pid"
    poll_until(lambda: pid_file.exists() and pid_file.read_text(), what="the run to start")
    # As Slurm's scancel does: every process of the job at once, the worker's own git helpers
    # too; here the command and the helpers first, the worker an instant later.
    for process in descendants(worker.pid):
        os.kill(process, signal.SIGTERM)
    worker.send_signal(sig)
    assert finish(worker, tmp_path) == 128 + sig
    task = task_on(remote_repo, "long")
    assert task.state is State.PENDING
    assert [(a["attempt"], a["outcome"]) for a in task.attempts] == [(1, "interrupted")]
    assert task.attempts_spent == 0
    assert f"got {signal.Signals(sig).name}" in (tmp_path / "worker.err").read_text()


@pytest.mark.parametrize(
    ("value", "problem"),
    [("-1", "positive number"), ("0", "positive number"), ("soon", "a number"), ("true", "positive number")],
)
def test_a_timeout_must_be_a_positive_number_of_seconds(value: str, problem: str) -> None:
    path = "pending/x.yaml"
    with pytest.raises(InvalidTask) as caught:
        parse_task(f"args: {{}}\ntimeout: {value}\n".encode(), path=path)
    assert path in str(caught.value) and "timeout" in str(caught.value) and problem in str(caught.value)
    assert parse_task(b"args: {}\ntimeout: 1.5\n", path=path).timeout == 1.5
