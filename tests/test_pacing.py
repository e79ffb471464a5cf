"""Pacing a fleet's pushes: ``push_budget`` in gitqueue.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import RemoteRepo
from typer.testing import CliRunner

from gitqueue import Queue
from gitqueue.cli import app
from gitqueue.config import PushBudget, Settings
from gitqueue.validate import check_disk

runner = CliRunner()
SETTINGS = "format: 1\ndefaults: {priority: 0, max_attempts: 3, lease: 600}\n"


# ---------------------------------------------------------------- push_budget in gitqueue.yaml


def test_push_budget_is_read_in_each_form_and_absent_means_none() -> None:
    for text, pushes, seconds in [("6/min", 6, 60.0), ("2/s", 2, 1.0), ("100 / h", 100, 3600.0)]:
        budget = Settings.parse(f"push_budget: {text}\n".encode()).push_budget
        assert budget == PushBudget(pushes, seconds)
        assert budget is not None and budget.rate == pushes / seconds
    assert Settings.parse(SETTINGS.encode()).push_budget is None
    kept = Settings(push_budget=PushBudget(6, 60.0))
    assert Settings.parse(kept.render()) == kept
    assert b"push_budget: 6/min" in kept.render()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("fast", "push_budget must look like 6/min (N/s, N/min or N/h), not 'fast'"),
        ("6/day", "push_budget must look like 6/min (N/s, N/min or N/h), not '6/day'"),
        ("6", "push_budget must look like 6/min (N/s, N/min or N/h), not 6"),
        ("-1/min", "push_budget must look like 6/min (N/s, N/min or N/h), not '-1/min'"),
        ("0/min", "push_budget must allow at least 1 push, not '0/min'"),
    ],
)
def test_a_bad_push_budget_is_a_problem_of_gitqueue_yaml_and_no_budget(tmp_path: Path, value: str, says: str) -> None:
    settings = Settings.parse(f"{SETTINGS}push_budget: {value}\n".encode())
    assert settings.push_budget is None and settings.lease == 600  # the rest is still read
    assert settings.problem == f"gitqueue.yaml: {says}"
    (tmp_path / "pending").mkdir()
    (tmp_path / "gitqueue.yaml").write_text(f"{SETTINGS}push_budget: {value}\n")
    assert [p.message for p in check_disk(tmp_path)] == [f"gitqueue.yaml: {says}"]


def test_a_queue_with_a_bad_push_budget_keeps_working_and_validate_says_why(queue: Queue, bare_remote: Path) -> None:
    RemoteRepo(bare_remote).person_commit({"gitqueue.yaml": f"{SETTINGS}push_budget: lots\n"})
    [task_id] = queue.submit([{"args": {"lr": 0.1}}])
    run = queue.claim()
    assert run is not None and run.id == task_id
    problems = [p.message for p in queue.validate()]
    assert problems == ["gitqueue.yaml: push_budget must look like 6/min (N/s, N/min or N/h), not 'lots'"]
    result = runner.invoke(app, ["validate", "--queue", str(bare_remote)])
    assert result.exit_code == 1 and "gitqueue.yaml: push_budget must look like 6/min" in result.stdout, result.output
