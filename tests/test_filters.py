"""``--where``: the filter language, its error messages, and its use on ls, results and bulk changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gitqueue import Queue, State, Task
from gitqueue.cli import app
from gitqueue.errors import InvalidFilter
from gitqueue.filters import compile_filter, tokenize

runner = CliRunner()

TASK = Task(
    id="000007-lr0.005-bs32",
    state=State.DONE,
    args={"lr": 0.005, "bs": 32, "model": "resnet50", "aug": True, "layers": [64, 128]},
    priority=3,
    tags=["sweep-3", "gpu"],
    attempts=[{"attempt": 1, "outcome": "failed", "worker": "a/0"}, {"attempt": 2, "outcome": "done", "worker": "b/1"}],
    result={"acc": 0.931, "loss": 0.2, "per_class": {"cat": 0.9}},
    submitted={"at": "2026-11-25T09:00:00.000Z", "by": "Alice"},
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('args.lr < 0.01 and "sweep-3" in tags', True),
        ("args.lr < 0.001", False),
        ("args.lr <= 0.005 and args.lr >= 0.005 and args.lr == 0.005", True),
        ("args.bs == 32 and args.bs != 64 and args.bs > 16.5", True),
        ('args.model == "resnet50"', True),
        ("args.model == 'resnet50'", True),
        ('"resnet" in args.model and "vgg" not in args.model', True),
        ("args.aug == true and args.aug != 1", True),  # a bool is not a number
        ("64 in args.layers and 32 not in args.layers", True),
        ("args.layers.1 == 128", True),
        ('"lr" in args and "momentum" not in args', True),
        ('state == "done"', True),
        ('state in ["failed", "cancelled"]', False),
        ("priority > 2 and priority < 4", True),
        ("attempts == 2 and attempts >= 2", True),
        ('worker == "b/1"', True),
        ("result.acc >= 0.9 and result.loss < 0.25", True),
        ("result.per_class.cat > 0.5", True),
        ('submitted.by == "Alice" and submitted.at > "2026-11-01"', True),
        ("not (priority > 2)", False),
        ("not priority > 2", False),
        ("priority > 5 or args.bs == 32 and args.lr < 0.01", True),  # and binds tighter
        ("(priority > 5 or args.bs == 32) and args.lr > 0.01", False),
        ("args.momentum < 1", False),  # missing: never orders
        ("args.momentum == null and args.momentum != 0", True),
        ("not args.momentum", True),
        ("result", True),  # a bare value is a condition
        ("requires", False),
        ('args.lr < "0.1"', False),  # no conversions: a number is not less than a string
        ("args.lr > -1 and args.lr < 1e-2", True),
        ("id == '000007-lr0.005-bs32'", True),
        ('"it\\"s" == "it\\"s"', True),
    ],
)
def test_expressions(expression: str, expected: bool) -> None:
    assert compile_filter(expression)(TASK) is expected


@pytest.mark.parametrize(
    ("expression", "message", "column"),
    [
        ("args.lr <", "expected a field, a number", 10),
        ("state = 'done'", "unexpected character '=' (write == to compare)", 7),
        ("pending == state", "unknown field 'pending' (quote a string, e.g. \"pending\", or name an argument as", 1),
        ("lr < 0.1", "unknown field 'lr'", 1),
        ("(priority > 1", "expected ')'", 14),
        ("priority > 1 1", "expected 'and', 'or' or the end", 14),
        ("[1, 2", "expected ',' or ']'", 6),
        ("not", "expected a field", 4),
        ("", "expected a condition", 1),
        ("priority not 3", "expected 'in' after 'not'", 14),
        ('args.model == "open', "unexpected character '\"'", 15),
        ("__import__('os')", "unknown field '__import__'", 1),
        ("__import__('os').system('true')", "unexpected character '.'", 17),
        ("args.lr; true", "unexpected character ';'", 8),
    ],
)  # fmt: skip
def test_errors_point_at_the_spot(expression: str, message: str, column: int) -> None:
    with pytest.raises(InvalidFilter) as caught:
        compile_filter(expression)
    text = str(caught.value)
    assert message in text
    assert f"at column {column}:" in text
    lines = text.splitlines()
    assert lines[1] == f"  {expression}" and lines[2] == "  " + " " * (column - 1) + "^"


def test_nothing_is_evaluated_as_python() -> None:
    # field paths are dictionary lookups, never attribute access
    assert compile_filter("args.__class__ == null and args.__dict__ == null")(TASK) is True
    assert [t.kind for t in tokenize("a.b<=1 and 'x'")] == ["name", "op", "number", "keyword", "string", "end"]


@pytest.fixture
def sweep(queue: Queue) -> Queue:
    """Nine tasks of a 3 x 3 sweep; three done with results, one failed, the rest pending."""
    queue.submit(
        [{"args": {"lr": lr, "bs": bs}, "tags": [f"bs{bs}"]} for lr in (0.1, 0.01, 0.001) for bs in (32, 64, 128)]
    )
    for acc in (0.5, 0.7, 0.9):
        run = queue.claim()
        assert run is not None
        run.done({"acc": acc})
    run = queue.claim()
    assert run is not None
    queue.set_fields(run.id, {"max_attempts": 1})
    run.fail("diverged")
    return queue


def test_ls_and_results_take_where(sweep: Queue, bare_remote: Path) -> None:
    where = 'args.lr <= 0.01 and "bs32" in tags'
    listed = runner.invoke(app, ["ls", "--where", where, "--format", "ids", "--queue", str(bare_remote)])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.split() == ["000007-lr0.001-bs32", "000004-lr0.01-bs32"]  # pending, then failed
    rows = runner.invoke(
        app, ["results", "--where", "result.acc >= 0.7", "--format", "json", "--queue", str(bare_remote)]
    )
    assert rows.exit_code == 0, rows.output
    assert [(r["id"], r["result.acc"]) for r in json.loads(rows.stdout)] == [
        ("000002-lr0.1-bs64", 0.7),
        ("000003-lr0.1-bs128", 0.9),
    ]
    bad = runner.invoke(app, ["ls", "--where", "lr < 1", "--queue", str(bare_remote)])
    assert bad.exit_code == 2 and "unknown field 'lr'" in bad.output


def test_bulk_cancel_and_requeue_with_where_in_one_commit_each(sweep: Queue, remote_repo: object) -> None:
    from conftest import RemoteRepo

    assert isinstance(remote_repo, RemoteRepo)
    commits = remote_repo.count()
    # cancel: only the tasks a cancel applies to (pending or running); done ones are skipped, not an error
    cancelled = sweep.cancel(where="args.bs == 128")
    assert cancelled == ["000006-lr0.01-bs128", "000009-lr0.001-bs128"]
    assert remote_repo.count() == commits + 1
    # requeue: every matching task that is not pending, named ones too
    requeued = sweep.requeue(["000001-lr0.1-bs32"], where='state in ["failed", "cancelled"]')
    assert sorted(requeued) == [
        "000001-lr0.1-bs32",
        "000004-lr0.01-bs32",
        "000006-lr0.01-bs128",
        "000009-lr0.001-bs128",
    ]
    assert remote_repo.count() == commits + 2
    states = remote_repo.states()
    assert [i for i, s in sorted(states.items()) if s == "done"] == ["000002-lr0.1-bs64", "000003-lr0.1-bs128"]
    # a filter that matches nothing commits nothing
    assert sweep.cancel(where="args.lr > 1") == []
    assert remote_repo.count() == commits + 2


def test_cli_bulk_requeue_with_where(sweep: Queue, bare_remote: Path) -> None:
    result = runner.invoke(app, ["requeue", "--where", 'state == "failed"', "--queue", str(bare_remote)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "requeued 1: 000004-lr0.01-bs32"
    nothing = runner.invoke(app, ["cancel", "--queue", str(bare_remote)])
    assert nothing.exit_code == 0 and nothing.stdout == "cancelled 0\n"
