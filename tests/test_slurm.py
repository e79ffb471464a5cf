"""Workers as a Slurm array job: the script ``gitqueue slurm submit`` writes, and real Slurm runs.

The first tests read the script. The rest submit it to a real one-node cluster this machine runs
for the session (``slurm_cluster``): 4 array tasks drain a sweep, each task done once; ``scancel``
of an array task returns its run unspent and another worker finishes it; a task over its
``timeout`` is stopped and recorded so; Slurm's warning before the time limit returns the run.
Where Slurm cannot start they skip and say why (on CI they fail). Jobs run as root here, with
this test's Python (``sys.executable -m gitqueue``) as the nodes' gitqueue.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RemoteRepo, poll_until
from slurm_cluster import SlurmCluster, skip_or_fail, start_cluster, unavailable
from typer.testing import CliRunner

from gitqueue import Queue, State, Task
from gitqueue.cli import app
from gitqueue.queue import default_worker
from gitqueue.slurm import ArrayJob, render_script, split_options
from gitqueue.task import parse_task

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "slurm" / "gitqueue-workers.sbatch"
PYTHON_GITQUEUE = shlex.join([sys.executable, "-m", "gitqueue"])

# The experiment: notes <task>.<attempt>.started (holding the worker's name), then sleeps
# args.sleep seconds, or (for an attempt listed in args.hold) until <task>.<attempt>.release exists.
EXPERIMENT = r"""
import json, os, pathlib, sys, time
marks = pathlib.Path(sys.argv[1])
task, attempt = os.environ["GITQUEUE_TASK_ID"], int(os.environ["GITQUEUE_ATTEMPT"])
args = json.loads(os.environ["GITQUEUE_ARGS"])
stem = marks / f"{task}.{attempt}"
pathlib.Path(f"{stem}.tmp").write_text(os.environ["GITQUEUE_WORKER"])
pathlib.Path(f"{stem}.tmp").replace(f"{stem}.started")
deadline = time.monotonic() + 300
while attempt in args.get("hold", []) and not pathlib.Path(f"{stem}.release").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(args.get("sleep", 0))
"""


def script_lines(text: str, prefix: str) -> list[str]:
    return [line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)]


# ---------------------------------------------------------------- the script


def test_the_script_is_an_array_of_exec_d_workers_with_logs_and_a_warning_signal() -> None:
    job = ArrayJob(
        queue_url="git@github.com:me/sweeps.git",
        command=["python", "train.py", "--lr", "{lr}", "--note", "a b"],
        workers=8,
        time="4:00:00",
        partition="gpu",
        gpus_per_worker=1,
        log_dir="/scratch/me/logs",
        sbatch_options=["--mem=16G", "-A lab"],
        worker_options=["--idle-timeout", "300", "--label", "gpu=a100"],
    )
    text = render_script(job)
    assert text.startswith("#!/bin/bash\n")
    assert script_lines(text, "#SBATCH ") == [
        "--job-name=gitqueue",
        "--array=0-7",
        "--time=4:00:00",
        "--partition=gpu",
        "--gres=gpu:1",
        "--output=/scratch/me/logs/slurm-%A_%a.out",
        "--signal=B:USR1@120",
        "--mem=16G",
        "-A lab",
    ]
    assert 'export GITQUEUE_CACHE="${GITQUEUE_CACHE:-${TMPDIR:-/tmp}/gitqueue-cache-$(id -u)}"' in text
    [exec_line] = [line for line in text.replace("\\\n", " ").splitlines() if line.startswith("exec ")]
    assert shlex.split(exec_line) == [
        "exec",
        "gitqueue",
        "work",
        "--queue",
        "git@github.com:me/sweeps.git",
        "--log-dir",
        "/scratch/me/logs",
        "--idle-timeout",
        "300",
        "--label",
        "gpu=a100",
        "--",
        "python",
        "train.py",
        "--lr",
        "{lr}",
        "--note",
        "a b",
    ]
    with_gpus = render_script(ArrayJob(queue_url="q", command=["x"], workers=1, gpus_per_worker=2, worker_gpus=True))
    assert "--gpus all" in with_gpus  # once `gitqueue work` takes --gpus, it gets the allocation's


def test_options_of_gitqueue_work_go_to_the_workers_and_the_rest_to_sbatch() -> None:
    work = {"--idle-timeout": True, "--label": True, "-l": True, "--allow-task-cmd": False, "--slots": True}
    args = ["--mem", "16G", "--idle-timeout", "60", "-A", "lab", "--exclusive", "-l", "gpu=a100"]
    args += ["--allow-task-cmd", "--slots=4", "--constraint=v100"]
    sbatch, worker = split_options(args, worker_options=work)
    assert sbatch == ["--mem=16G", "-A lab", "--exclusive", "--constraint=v100"]
    assert worker == ["--idle-timeout", "60", "-l", "gpu=a100", "--allow-task-cmd", "--slots=4"]


def test_slurm_submit_dry_run_prints_the_script_with_the_queue_and_worker_options(queue: Queue) -> None:
    result = CliRunner().invoke(
        app,
        [
            *("slurm", "submit", "--queue", queue.url, "--workers", "3", "--time", "30", "--mem=4G"),
            *("--max-failures", "2", "--task-timeout", "3600", "--dry-run", "--", "./run.sh", "{seed}"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0-2" in result.output and "#SBATCH --mem=4G" in result.output
    assert "#SBATCH --time=30" in result.output
    exec_words = shlex.split(result.output.replace("\\\n", " ").split("\nexec ", 1)[1])
    assert exec_words[:4] == [sys.executable, "-m", "gitqueue", "work"]
    assert exec_words[4:6] == ["--queue", str(Path(queue.url).resolve())]  # absolute: every node must find it
    assert exec_words[8:] == ["--max-failures", "2", "--task-timeout", "3600", "--", "./run.sh", "{seed}"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "four hours", "--", "x"], "--time 'four hours' is not a Slurm time"),
        (["--"], "no command for the workers"),
        (["stray", "--", "x"], "unexpected 'stray'"),
    ],
)
def test_slurm_submit_refuses_what_would_not_run(queue: Queue, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["slurm", "submit", "--queue", queue.url, "--workers", "2", "--dry-run", *args])
    assert result.exit_code == 1 and message in result.output


def test_slurm_submit_without_sbatch_says_where_to_run_it(queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    result = CliRunner().invoke(app, ["slurm", "submit", "--queue", queue.url, "--workers", "2", "--", "x"])
    assert result.exit_code == 1 and "sbatch not found: run this on a Slurm login node" in result.output


def test_the_example_is_what_slurm_submit_writes() -> None:
    job = ArrayJob(
        queue_url="git@github.com:me/sweeps.git",
        command=["python", "train.py", "--lr", "{lr}", "--batch-size", "{bs}"],
        workers=8,
        time="4:00:00",
        partition="gpu",
        gpus_per_worker=1,
        sbatch_options=["--mem=16G"],
        worker_options=["--idle-timeout", "300", "--max-failures", "3"],
    )
    assert EXAMPLE.read_text() == render_script(job)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SLURM_JOB_ID": "1237", "SLURM_ARRAY_JOB_ID": "1234", "SLURM_ARRAY_TASK_ID": "3"}, "slurm-1234_3"),
        ({"SLURM_JOB_ID": "99"}, "slurm-99"),
    ],
)
def test_workers_started_by_slurm_name_themselves_after_the_job(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str
) -> None:
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert default_worker() == name


# ---------------------------------------------------------------- on a real Slurm


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    reason = unavailable()
    if reason:
        skip_or_fail(reason)
    try:
        cluster = start_cluster()
    except RuntimeError as exc:
        skip_or_fail(str(exc))
    yield cluster
    cluster.stop()


class Sweep:
    """A queue on this machine's disk (as on a disk every node mounts), the experiment, and
    the array jobs submitted for it; the nodes' caches go to their own $TMPDIR."""

    def __init__(self, cluster: SlurmCluster, tmp_path: Path, url: str, remote: RemoteRepo) -> None:
        self.cluster, self.url, self.remote = cluster, url, remote
        self.marks = tmp_path / "marks"
        self.marks.mkdir()
        self.logs = tmp_path / "logs"
        self.experiment = tmp_path / "experiment.py"
        self.experiment.write_text(EXPERIMENT)
        self.jobs: list[str] = []

    def submit_tasks(self, *specs: dict[str, Any]) -> None:
        with Queue.open(self.url, worker="submitter") as q:
            q.submit(specs)

    def submit_workers(self, workers: int, *options: str) -> str:
        argv = ["slurm", "submit", "--queue", self.url, "--workers", str(workers), "--log-dir", str(self.logs)]
        argv += ["--gitqueue", PYTHON_GITQUEUE, *options, "--", sys.executable, str(self.experiment), str(self.marks)]
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        job = re.search(r"submitted array job (\d+)", result.output)
        assert job, result.output
        self.jobs.append(job.group(1))
        return job.group(1)

    def ended(self, job: str) -> bool:
        return not self.cluster.jobs(job)

    def wait_for_end(self, job: str, timeout: float = 180) -> None:
        try:
            poll_until(lambda: self.ended(job), what=f"array job {job} to end", timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.out(job)}") from None

    def out(self, job: str) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in sorted(self.logs.glob(f"*{job}*")))

    def started_by(self, task_id: str, attempt: int) -> str | None:
        path = self.marks / f"{task_id}.{attempt}.started"
        return path.read_text() if path.exists() else None

    def task(self, task_id: str) -> Task:
        [path] = self.remote.locations()[task_id]
        return parse_task(self.remote.read(path).encode(), path=path)

    def cancel_all(self) -> None:
        for job in self.jobs:
            if not self.ended(job):
                self.cluster.run("scancel", job)


@pytest.fixture
def sweep(
    slurm: SlurmCluster, tmp_path: Path, queue: Queue, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Sweep]:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.delenv("GITQUEUE_CACHE")  # so the script's default applies: the node's own $TMPDIR
    node_tmp = tmp_path / "node-tmp"
    node_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(node_tmp))
    lab = Sweep(slurm, tmp_path, str(Path(queue.url).resolve()), remote_repo)
    try:
        yield lab
    finally:
        lab.cancel_all()


def attempts(task: Task) -> list[tuple[int, str, str]]:
    return [(a["attempt"], a["outcome"], a["worker"]) for a in task.attempts]


def test_an_array_of_4_workers_drains_a_32_task_sweep_each_task_done_once(sweep: Sweep) -> None:
    sweep.submit_tasks(*({"id": f"{i:02d}", "args": {"i": i, "sleep": 0.2}} for i in range(32)))
    job = sweep.submit_workers(4, "--idle-timeout", "2")
    sweep.wait_for_end(job)  # --idle-timeout: the array ends by itself once the queue is empty

    assert sweep.remote.states() == {f"{i:02d}": "done" for i in range(32)}, sweep.out(job)
    names = {f"slurm-{job}_{k}" for k in range(4)}
    for i in range(32):
        [(attempt, outcome, worker)] = attempts(sweep.task(f"{i:02d}"))
        assert (attempt, outcome) == (1, "done") and worker in names
        assert sweep.started_by(f"{i:02d}", 1) == worker  # the command saw its worker's name too
    assert sorted(p.name for p in sweep.marks.iterdir()) == sorted(f"{i:02d}.1.started" for i in range(32))
    claims = [s for s in sweep.remote.log() if "claim" in s]
    assert len(claims) <= 32 and all(f"by slurm-{job}_" in s for s in claims)
    assert sorted(p.name for p in sweep.logs.glob("slurm-*.out")) == [f"slurm-{job}_{k}.out" for k in range(4)]
    assert (sweep.logs.parent / "node-tmp" / "gitqueue-cache-0").is_dir()  # each node's cache on its own disk


def test_scancel_of_an_array_task_returns_its_run_unspent_and_another_worker_finishes_it(sweep: Sweep) -> None:
    sweep.submit_tasks({"id": "held", "args": {"hold": [1]}})
    job = sweep.submit_workers(2, "--idle-timeout", "120", "--grace", "5")
    victim = poll_until(lambda: sweep.started_by("held", 1), what="the task to start", timeout=120)
    assert victim in {f"slurm-{job}_0", f"slurm-{job}_1"}
    sweep.cluster.run("scancel", victim.removeprefix("slurm-"))

    poll_until(lambda: sweep.remote.states()["held"] == "done", what="another worker to finish the task", timeout=120)
    other = ({f"slurm-{job}_0", f"slurm-{job}_1"} - {victim}).pop()
    task = sweep.task("held")
    assert attempts(task) == [(1, "interrupted", victim), (2, "done", other)]
    assert task.attempts_spent == 0
    assert sweep.started_by("held", 2) == other
    said = (sweep.logs / f"slurm-{victim.removeprefix('slurm-')}.out").read_text()
    assert "got SIGTERM: stopping the current run, returning its task" in said


def test_a_task_over_its_timeout_is_stopped_and_recorded_as_timed_out(sweep: Sweep) -> None:
    sweep.submit_tasks({"id": "hung", "args": {"sleep": 600}, "timeout": 1, "max_attempts": 1})
    job = sweep.submit_workers(1, "--grace", "2")
    sweep.wait_for_end(job)
    task = sweep.task("hung")
    assert task.state is State.FAILED, sweep.out(job)
    [attempt] = task.attempts
    assert (attempt["outcome"], attempt["worker"]) == ("timeout", f"slurm-{job}_0")
    assert "timed out after 1s" in attempt["error"]
    shown = CliRunner().invoke(app, ["log", "hung", "--queue", sweep.url])
    assert shown.exit_code == 0 and "timeout" in shown.output


def test_slurms_warning_before_the_time_limit_returns_the_run_unspent(sweep: Sweep) -> None:
    """--signal=B:USR1@110 with a 2-minute limit: Slurm warns the batch shell, which is the
    worker (the script execs it), within about 40 s (Slurm checks every 30 s or so)."""
    sweep.submit_tasks({"id": "long", "args": {"hold": [1]}})
    job = sweep.submit_workers(1, "--time", "2", "--warn", "110", "--grace", "5")
    sweep.wait_for_end(job, timeout=150)
    out = sweep.out(job)
    assert "got SIGUSR1" in out
    task = sweep.task("long")
    assert task.state is State.PENDING and task.attempts_spent == 0, out
    assert [a["outcome"] for a in task.attempts] in ([], ["interrupted"])  # warned before or after its claim
