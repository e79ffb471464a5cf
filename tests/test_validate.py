"""``gitqueue validate`` and the worker's own checks, over the hostile corpus and real pushes.

Without a server hook, a broken file reaches the queue: validate names each one, workers
skip and report it once, and every valid task still drains. Nothing deletes the bad files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from clones import Clone, remote_blobs
from corpus import CASES, Hostile, small, stage_submodule, write_corpus
from typer.testing import CliRunner

from gitqueue import Queue, State
from gitqueue.cli import app
from gitqueue.snapshot import Problem
from gitqueue.validate import TRANSITIONS, check_disk, transition_problem

runner = CliRunner()


def lines_about(problems: list[str], case: Hostile) -> list[str]:
    return [p for p in problems if p.startswith(case.shown) and case.expect in p]


def worker_saw(messages: list[str], case: Hostile) -> bool:
    """A worker names the file, or for a folder it never enters, the folder."""
    folder = case.shown.rsplit("/", 1)[0]
    return any(case.expect in m and (m.startswith(case.shown) or m.startswith(folder + "/:")) for m in messages)


@pytest.fixture
def queue_clone(queue: Queue, bare_remote: Path, tmp_path: Path) -> Clone:
    """A person's clone of a queue holding three valid tasks."""
    queue.submit([{"args": {"lr": lr}} for lr in (0.1, 0.01, 0.001)])
    return Clone(str(bare_remote), tmp_path / "alice")


def test_each_hostile_file_gets_its_message_from_validate_on_disk(queue_clone: Clone) -> None:
    write_corpus(queue_clone.path)
    problems = [p.message for p in check_disk(queue_clone.path)]
    for case in CASES:
        assert lines_about(problems, case), f"{case.name}: nothing about {case.path!r} in {problems}"
    assert not [p for p in problems if p.startswith("pending/0000")], "valid tasks are not problems"


def test_validate_command_prints_one_line_per_problem_and_exits_1(
    queue_clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_corpus(queue_clone.path, small())
    monkeypatch.chdir(queue_clone.path / "pending")  # anywhere in the clone
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1, result.output
    printed = result.stdout.splitlines()
    for case in small():
        assert lines_about(printed, case), f"{case.name}: {printed}"
    assert len(printed) == len(small()), printed

    one = runner.invoke(app, ["validate", "broken-yaml.yaml"])
    assert one.exit_code == 1 and one.stdout.startswith("pending/broken-yaml.yaml:2:"), one.output
    clean = runner.invoke(app, ["validate", "--format", "json", "../pending/000001-lr0.1.yaml"])
    assert clean.exit_code == 0 and json.loads(clean.stdout) == []


def test_a_draft_outside_any_clone_is_checked_as_a_pending_task(tmp_path: Path) -> None:
    draft = tmp_path / "drafts" / "next.yaml"
    draft.parent.mkdir()
    draft.write_text("args: {lr: 0.1}\npriority: soon\n")
    result = runner.invoke(app, ["validate", str(draft)])
    assert result.exit_code == 1
    assert result.stdout.strip() == "pending/next.yaml:2:11: field 'priority' must be an integer, not str 'soon'"


def test_without_a_hook_bad_files_land_and_the_queue_still_drains(
    queue_clone: Clone, bare_remote: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cases = write_corpus(queue_clone.path)
    staged = queue_clone.commit("add a hostile corpus", also=lambda: cases.append(stage_submodule(queue_clone.run)))
    assert staged.returncode == 0
    assert queue_clone.push().returncode == 0
    landed = remote_blobs(bare_remote)

    # validate, reading the remote (not a clone): one line for each hostile file
    result = runner.invoke(app, ["validate", "--queue", str(bare_remote)])
    assert result.exit_code == 1
    for case in cases:
        assert lines_about(result.stdout.splitlines(), case), f"{case.name}: {result.stdout}"

    # a worker skips every one of them, reports each once, and drains the valid tasks
    told: list[Problem] = []
    with Queue.open(str(bare_remote), worker="gpu-box/0") as worker:
        worker.checks.tell = told.append
        claimed = []
        while (run := worker.claim()) is not None:
            claimed.append(run.id)
            run.done({"ok": True})
    assert claimed == ["000001-lr0.1", "000002-lr0.01", "000003-lr0.001"]
    messages = [p.message for p in told]
    for case in cases:
        if case.worker:
            assert worker_saw(messages, case), f"{case.name}: {messages}"
    assert len(messages) == len(set(messages)), "each problem is reported once per worker"

    # nothing was deleted or rewritten: every hostile file is as it was pushed
    after = remote_blobs(bare_remote)
    for path, blob in landed.items():
        if not path.startswith("pending/0000"):
            assert after.get(path) == blob, path


def test_a_worker_logs_a_broken_file_once_by_default(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    queue.submit([{"args": {"i": i}} for i in range(3)])
    from conftest import RemoteRepo

    RemoteRepo(Path(queue.url)).person_commit({"pending/bad.yaml": "args: [1\n"})
    with caplog.at_level(logging.WARNING, logger="gitqueue"):
        while (run := queue.claim()) is not None:
            run.done()
    warned = [r.getMessage() for r in caplog.records if "pending/bad.yaml" in r.getMessage()]
    assert warned == ["skipping pending/bad.yaml:2:1: while parsing a flow sequence expected ',' or ']', but got "
                      "'<stream end>'"]  # fmt: skip


def test_a_task_in_two_folders_is_not_claimed_and_is_reported(queue: Queue, bare_remote: Path) -> None:
    from conftest import RemoteRepo

    remote = RemoteRepo(bare_remote)
    queue.submit([{"args": {"lr": 0.1}, "id": "twin"}, {"args": {"lr": 0.2}, "id": "other", "priority": -1}])
    # a person restores an old copy into done/ by hand: the id now sits in two folders
    remote.person_commit({"done/twin.yaml": "args: {lr: 0.1}\ntags: [an-old-copy]\n"})
    told: list[Problem] = []
    queue.checks.tell = told.append
    run = queue.claim()
    assert run is not None and run.id == "other"
    assert queue.claim() is None
    assert [p.message for p in told] == [
        "pending/twin.yaml: task 'twin' is also in done/twin.yaml: not claimed until one is removed"
    ]
    assert sorted(p.message for p in queue.validate()) == [
        "done/twin.yaml: task 'twin' is also in pending/twin.yaml: a task lives in one folder",
        "pending/twin.yaml: task 'twin' is also in done/twin.yaml: a task lives in one folder",
    ]
    assert remote.locations()["twin"] == ["done/twin.yaml", "pending/twin.yaml"]


def test_a_broken_settings_file_and_a_missing_one(tmp_path: Path) -> None:
    (tmp_path / "pending").mkdir()
    assert [p.message for p in check_disk(tmp_path)] == ["gitqueue.yaml: missing, so this is not a gitqueue queue"]
    (tmp_path / "gitqueue.yaml").write_text("defaults: {lease: soon}\n")
    assert [p.message for p in check_disk(tmp_path)] == ["gitqueue.yaml: defaults.lease must be an integer, not 'soon'"]
    (tmp_path / "gitqueue.yaml").write_text(f"defaults: {{lease: {10**400}}}\n")  # a worker divided it as a float
    assert [p.message for p in check_disk(tmp_path)] == [
        "gitqueue.yaml: defaults.lease must be between 1 and 9,223,372,036,854,775,807"
    ]


def test_the_transition_table_names_the_commands() -> None:
    assert transition_problem(State.PENDING, State.RUNNING) is None
    assert transition_problem(State.RUNNING, State.RUNNING) is None
    assert transition_problem(None, State.PENDING) is None
    assert transition_problem(State.PENDING, State.DONE) == (
        "no gitqueue command moves a task from pending/ to done/ (from pending/: running/ by claim; "
        "cancelled/ by cancel; deleted by a person (withdrawing the task))"
    )
    assert transition_problem(State.DONE, None) == (
        "only pending tasks may be deleted; a done task stays (cancel or requeue it instead)"
    )
    assert transition_problem(None, State.DONE) == "a new task must start in pending/, not done/ (submit adds it there)"
    # every state can be left, and every state but pending is reached only from another state
    for state in State:
        assert any(before is state for before, _ in TRANSITIONS)


ROOT = Path(__file__).resolve().parent.parent


def test_the_ci_examples_and_pre_commit_hooks_run_real_checks(
    queue_clone: Clone, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re

    import yaml

    monkeypatch.chdir(queue_clone.path)
    ci = (ROOT / "gitqueue/ci/github-actions.yml").read_text() + (ROOT / "gitqueue/ci/gitlab-ci.yml").read_text()
    assert set(re.findall(r"gitqueue validate --\w+", ci)) == {"gitqueue validate --ci"}  # test_ci.py runs them
    before = queue_clone.head()
    assert runner.invoke(app, ["validate", "--all"]).exit_code == 0
    # a commit a CI run must catch: files all valid, but a move no command makes
    queue_clone.run("mv", "pending/000001-lr0.1.yaml", "done/000001-lr0.1.yaml")
    assert queue_clone.commit("done by hand?").returncode == 0
    assert runner.invoke(app, ["validate", "--all"]).exit_code == 0
    since = runner.invoke(app, ["validate", "--since", before])
    assert since.exit_code == 1
    assert since.stdout.startswith("pending/000001-lr0.1.yaml -> done/000001-lr0.1.yaml: no gitqueue command moves")
    # the pre-commit framework's hooks, as .pre-commit-hooks.yaml spells them
    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    queue_clone.write("pending/bad.yaml", "args: {lr: 0.1\n")
    queue_clone.run("add", "pending/bad.yaml")
    staged = runner.invoke(app, hooks["gitqueue-validate"]["entry"].split()[1:])
    assert staged.exit_code == 1 and staged.stdout.startswith("pending/bad.yaml:2:1: ")
    assert re.search(hooks["gitqueue-validate-files"]["files"], "pending/bad.yaml")
    files = runner.invoke(app, [*hooks["gitqueue-validate-files"]["entry"].split()[1:], "pending/bad.yaml"])
    assert files.exit_code == 1 and files.stdout.startswith("pending/bad.yaml:2:1: ")


def test_gitqueue_work_skips_each_broken_file_once_and_drains_the_rest(queue_clone: Clone, bare_remote: Path) -> None:
    import subprocess
    import sys

    write_corpus(queue_clone.path, small())
    queue_clone.commit("hostile files, pushed where no hook guards the queue")
    assert queue_clone.push().returncode == 0
    before = remote_blobs(bare_remote)
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "gitqueue", "work", "--queue", str(bare_remote), "--worker", "box/0", "--", "true"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},  # the gitqueue under test, wherever pip points
    )
    assert proc.returncode == 0, proc.stderr
    skipped = [line.split("skipping ", 1)[1] for line in proc.stderr.splitlines() if "skipping " in line]
    for case in small():
        if case.worker:
            assert worker_saw(skipped, case), f"{case.name}: {proc.stderr}"
    assert len(skipped) == len(set(skipped)), "each broken file is reported once"
    after = remote_blobs(bare_remote)
    assert sorted(p for p in after if p.startswith("done/0000")) == [
        "done/000001-lr0.1.yaml",
        "done/000002-lr0.01.yaml",
        "done/000003-lr0.001.yaml",
    ]
    assert {p: b for p, b in after.items() if not p.startswith(("done/", "pending/0000"))} == {
        p: b for p, b in before.items() if not p.startswith(("done/", "pending/0000"))
    }
