"""``gitqueue tune``: Optuna search with the queue as its only storage, run by real workers.

A study of a quadratic in two args, ``loss = (x - 1)^2 + (y + 2)^2``, whose trials ``gitqueue
work`` runs as a small script. The tuner runs as its own process, is killed mid-study and
started again (twice at once, each with a cache of its own, as on two machines).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RemoteRepo, poll_until
from test_cli import gq

from gitqueue import Queue, State
from gitqueue.errors import InvalidStudy
from gitqueue.tune import Study, Tuner

REPO = Path(__file__).resolve().parent.parent
QUAD = """\
import json, os, sys
x, y = float(sys.argv[1]), float(sys.argv[2])
with open(os.environ["GITQUEUE_RESULT_FILE"], "w") as out:
    json.dump({"loss": (x - 1) ** 2 + (y + 2) ** 2}, out)
"""
STUDY = """\
study: quad
metric: result.loss
direction: minimize
trials: 30
parallel: 3
sampler: tpe
space: {x: "uniform:-5:5", y: "uniform:-5:5"}
"""


class Processes:
    """Processes a test starts, each in a session of its own; stopped at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, cache: str | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        if cache:
            env["GITQUEUE_CACHE"] = str(self.tmp / cache)
        logs = self.tmp / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gitqueue", *args], stdout=out, stderr=err, env=env, start_new_session=True
            )
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(60)

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(60)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


@pytest.fixture
def study_queue(bare_remote: Path, tmp_path: Path, procs: Processes) -> str:
    """An initialised queue, the study file, the experiment script and three workers on it."""
    url = str(bare_remote.resolve())
    Queue.init(url, folder=tmp_path / "work").close()
    (tmp_path / "quad.py").write_text(QUAD)
    (tmp_path / "quad.yaml").write_text(STUDY)
    for n in range(3):
        procs.start(
            f"worker{n}", "work", "--queue", url, "--worker", f"box/{n}", "--wait", "--log-dir",
            str(tmp_path / "runs"), "--", sys.executable, str(tmp_path / "quad.py"), "{x}", "{y}",
        )  # fmt: skip
    return url


def trials(url: str) -> list[tuple[str, State]]:
    with Queue.open(url, worker="checker/0") as q:
        return sorted((t.id, t.state) for t in q.tasks() if "quad" in t.tags)


def done_count(url: str) -> int:
    return sum(1 for _, state in trials(url) if state is State.DONE)


def check_the_whole_study(url: str, remote_repo: RemoteRepo) -> list[dict[str, float]]:
    """30 trials quad-0000..quad-0029, each once in done/, each claimed and finished once."""
    locations = remote_repo.locations()
    ids = sorted(task_id for task_id in locations if task_id.startswith("quad-"))
    assert ids == [f"quad-{n:04d}" for n in range(30)]
    assert all(paths == [f"done/{task_id}.yaml"] for task_id, paths in locations.items() if task_id in ids)
    history = "\n".join(remote_repo.log("%B"))
    assert Counter(re.findall(r"\bclaim (quad-\d+) by", history)) == dict.fromkeys(ids, 1)
    assert Counter(re.findall(r"\bdone (quad-\d+) by", history)) == dict.fromkeys(ids, 1)
    with Queue.open(url, worker="checker/0") as q:
        tasks = [q.get(task_id) for task_id in ids]
    assert all(t.attempts and len(t.attempts) == 1 and t.attempts[0]["outcome"] == "done" for t in tasks)
    args = [t.args for t in tasks]
    assert len({json.dumps(a, sort_keys=True) for a in args}) == 30  # no trial was asked twice
    return args


def test_a_study_of_30_trials_on_3_workers_ends_near_the_optimum(
    study_queue: str, tmp_path: Path, procs: Processes, remote_repo: RemoteRepo
) -> None:
    tuner = procs.start("tuner", "tune", str(tmp_path / "quad.yaml"), "--queue", study_queue, "--poll", "0.2")
    poll_until(lambda: tuner.poll() is not None, what="the tuner to finish 30 trials", timeout=600)
    assert tuner.returncode == 0, (tmp_path / "logs" / "tuner.err").read_text()
    check_the_whole_study(study_queue, remote_repo)
    best = json.loads(gq("tune", tmp_path / "quad.yaml", "--best", "--queue", study_queue, "-f", "json").stdout)
    with Queue.open(study_queue) as q:
        losses = {t.id: t.result["loss"] for t in q.tasks(State.DONE)}
    assert best["value"] == min(losses.values()) and best["id"] == min(losses, key=losses.__getitem__)
    assert best["value"] < 2.0  # the optimum is 0 at x=1, y=-2; a box of 10 x 10 around it was searched
    assert abs(best["args"]["x"] - 1) < 1.5 and abs(best["args"]["y"] + 2) < 1.5
    printed = gq("tune", tmp_path / "quad.yaml", "--best", "--queue", study_queue).stdout
    assert printed.startswith(f"{best['id']}  result.loss = ")
    assert "quad: 30 done, 0 failed, 0 in the queue" in (tmp_path / "logs" / "tuner.err").read_text()


def test_a_tuner_killed_mid_study_and_two_started_again_lose_and_duplicate_nothing(
    study_queue: str, tmp_path: Path, procs: Processes, remote_repo: RemoteRepo
) -> None:
    study = str(tmp_path / "quad.yaml")
    first = procs.start("tuner-1", "tune", study, "--queue", study_queue, "--poll", "0.2")
    poll_until(lambda: done_count(study_queue) >= 10, what="10 trials done", timeout=600)
    procs.stop(first, signal.SIGKILL)  # no chance to tidy up: it kept nothing to tidy
    stopped_at = trials(study_queue)
    assert 10 <= len(stopped_at) < 30
    # Two tuners at once, each with a cache of its own (as on two machines).
    again = [
        procs.start(f"tuner-{n}", "tune", study, "--queue", study_queue, "--poll", "0.2", cache=f"cache-{n}")
        for n in (2, 3)
    ]
    for proc in again:
        poll_until(lambda proc=proc: proc.poll() is not None, what="the tuners to finish", timeout=600)
        assert proc.returncode == 0
    check_the_whole_study(study_queue, remote_repo)
    assert [task_id for task_id, _ in stopped_at] == [f"quad-{n:04d}" for n in range(len(stopped_at))]


def test_the_same_study_and_seed_asks_the_same_trials(bare_remote: Path, tmp_path: Path) -> None:
    made = []
    for n in range(2):
        url = str(tmp_path / f"q{n}.git")
        with Queue.init(url, folder=tmp_path / f"f{n}") as q:
            study = Study.from_mapping(
                {"study": "s", "metric": "result.loss", "trials": 5, "parallel": 5, "seed": 3, "sampler": "random",
                 "space": {"lr": "loguniform:1e-5:1e-1", "bs": "choice:16,32", "n": "int:1:4"}},
                where="s.yaml",
            )  # fmt: skip
            progress = Tuner(q, study).step()
            assert progress.submitted == [f"s-{i:04d}" for i in range(5)]
            made.append([t.args for t in q.tasks()])
    assert made[0] == made[1]
    assert all(1e-5 <= a["lr"] <= 1e-1 and a["bs"] in (16, 32) and a["n"] in range(1, 5) for a in made[0])


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("study: q\nmetric: result.loss\nspace: {x: 'normal:0:1'}\n", "'x: normal:0:1': unknown distribution"),
        ("study: q\nmetric: result.loss\nspace: {x: 'uniform:2:1'}\n", "low 2 is above high 1"),
        ("study: q\nmetric: loss\nspace: {x: 'uniform:0:1'}\n", "must name a field of the result"),
        ("study: q\nmetric: result.loss\nsampler: grid\nspace: {x: 'uniform:0:1'}\n", "sampler 'grid' is not one"),
        ("study: q/x\nmetric: result.loss\nspace: {x: 'uniform:0:1'}\n", "must be a short name"),
        ("study: q\nmetric: result.loss\nspace: {x: 'uniform:0:1'}\ntrials: 0\n", "trials must be a whole number"),
        ("study: q\nmetric: result.loss\n", "missing field 'space'"),
        ("study: q\nmetric: result.loss\nspace: {x: 'uniform:0:1'}\ncolour: red\n", "unknown field 'colour'"),
    ],
)
def test_a_bad_study_file_is_refused_naming_the_file(
    text: str, problem: str, tmp_path: Path, bare_remote: Path
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidStudy) as caught:
        Study.load(path)
    assert str(caught.value).startswith(f"{path}: ") and problem in str(caught.value)
    gq("init", bare_remote)
    result = gq("tune", path, code=2)
    assert problem in result.stderr


def test_the_readme_shows_the_example_study_as_it_is() -> None:
    example = REPO / "examples" / "search.yaml"
    readme = (REPO / "README.md").read_text()
    shown = readme.split("(this is `examples/search.yaml`):\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert shown == "".join(example.read_text().splitlines(keepends=True)[1:])  # all but its header comment
    study = Study.load(example)
    assert (study.name, study.trials, study.parallel, sorted(study.space)) == ("search", 12, 2, ["bs", "lr"])


def test_failed_cancelled_and_metricless_trials_are_told_to_optuna_as_failed(queue: Queue) -> None:
    study = Study.from_mapping(
        {"study": "s", "metric": "result.loss", "trials": 4, "parallel": 4, "sampler": "random",
         "space": {"x": "uniform:0:1"}},
        where="s.yaml",
    )  # fmt: skip
    tuner = Tuner(queue, study)
    assert tuner.step().submitted == ["s-0000", "s-0001", "s-0002", "s-0003"]
    queue.set_fields("s-0001", {"max_attempts": 1})
    for outcome in ("done", "fail", "no metric"):
        run = queue.claim()
        assert run is not None
        if outcome == "fail":
            run.fail("diverged")
        else:
            run.done({"loss": 0.5} if outcome == "done" else {"acc": 0.9})
    queue.cancel(["s-0003"])
    progress = tuner.step()
    assert (progress.done, progress.failed, progress.queued, progress.submitted) == (1, 3, 0, [])
    assert progress.best is not None and (progress.best.id, progress.best_value) == ("s-0000", 0.5)
    states = [trial.state.name for trial in tuner.rebuild(tuner.trials()).trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
