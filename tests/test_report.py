"""``gitqueue report``: what the page holds, --where and --metric, hostile task files, --watch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RemoteRepo, poll_until
from typer.testing import CliRunner

from gitqueue import Queue, report
from gitqueue.cli import app
from gitqueue.report import Reporter
from gitqueue.report_page import table_data
from gitqueue.task import MARKER

runner = CliRunner()


def _sweep(queue: Queue) -> list[str]:
    """Six tasks: four done with results, one that failed once and runs again, one pending."""
    ids = queue.submit([{"args": {"lr": lr, "bs": bs}} for lr in (0.1, 0.01, 0.001) for bs in (16, 32)])
    for n in range(4):
        run = queue.claim()
        assert run is not None
        run.done({"acc": 0.5 + n / 10, "loss": 1 - n / 10})
    run = queue.claim()
    assert run is not None
    run.fail("out of memory")
    assert queue.claim() is not None  # the same task, its second attempt
    return ids


def _embedded(page: str, name: str) -> dict:
    found = re.search(rf"const {name} = (.*?);\n", page)
    assert found, f"no {name} in the page"
    return json.loads(found.group(1))


def test_report_writes_one_self_contained_page(queue: Queue, bare_remote: Path) -> None:
    ids = _sweep(queue)
    result = runner.invoke(app, ["report", "--queue", str(bare_remote), "-o", "out/sweep.html"])
    assert result.exit_code == 0, result.output
    page = Path("out/sweep.html").read_text()
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # plotly.js itself is in the file
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", page), "the page loads something from elsewhere"
    assert "default-src 'none'" in page
    table = _embedded(page, "TABLE")
    assert [row[0] for row in table["rows"]] == ids
    states = {row[0]: row[1] for row in table["rows"]}
    assert sorted(states.values()) == ["done"] * 4 + ["pending", "running"]
    plots = _embedded(page, "PLOTS")
    assert set(plots) == {"done-over-time", "timeline", "parallel", "per-arg"}
    parallel = plots["parallel"]["data"][0]
    assert [d["label"] for d in parallel["dimensions"]] == ["lr", "bs", "result.acc"]  # the first numeric field
    assert sorted(parallel["dimensions"][-1]["values"]) == [0.5, 0.6, 0.7, 0.8]
    assert "4 of 6 tasks finished" in page


def test_metric_and_where_choose_what_is_drawn(queue: Queue, bare_remote: Path) -> None:
    _sweep(queue)
    result = runner.invoke(
        app,
        ["report", "--queue", str(bare_remote), "-o", "r.html", "--metric", "result.loss", "--where", "args.bs == 16"],
    )
    assert result.exit_code == 0, result.output
    page = Path("r.html").read_text()
    table = _embedded(page, "TABLE")
    bs = table["columns"].index("args.bs")
    assert {row[bs] for row in table["rows"]} == {16} and len(table["rows"]) == 3
    parallel = _embedded(page, "PLOTS")["parallel"]["data"][0]
    assert parallel["dimensions"][-1]["label"] == "result.loss"
    assert "args.bs == 16" in page


def test_a_bad_where_is_an_error_with_no_file(queue: Queue, bare_remote: Path) -> None:
    result = runner.invoke(app, ["report", "--queue", str(bare_remote), "--where", "args.lr <"])
    assert result.exit_code == 2
    assert not Path("report.html").exists()


def test_hostile_task_files_neither_break_nor_script_the_page(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo
) -> None:
    """Args that close the script element, broken attempt records, an invalid file: escaped, skipped, listed."""
    queue.submit([{"args": {"name": "</script><script>alert(1)</script>", "lr": float("nan")}}])
    odd = (
        f"args: {{x: [1, {{y: 2}}]}}\n{MARKER}\nattempts:\n"
        "- {started: never, ended: 3, worker: [1], duration: fast}\n"
        "- oops\n- {started: '2026-01-01T00:00:00Z', ended: '2025-01-01T00:00:00Z', outcome: [x], attempt: nine}\n"
        "result: 7\n"
    )
    remote_repo.person_commit({"done/odd.yaml": odd, "pending/broken.yaml": "args: {lr: [\n"})
    result = runner.invoke(app, ["report", "--queue", str(bare_remote), "-o", "r.html"])
    assert result.exit_code == 0, result.output
    page = Path("r.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert page.count("</script>") == page.count("<script>") == 2  # plotly.js and the page's own
    table = _embedded(page, "TABLE")
    assert "</script><script>alert(1)</script>" in json.dumps(table)  # still shown, as text
    assert all(row[0] != "odd" for row in table["rows"])  # its forged records make the file invalid ...
    assert "done/odd.yaml" in page and "pending/broken.yaml" in page and "Invalid task files" in page  # ... listed


def test_watch_rewrites_the_page_when_the_queue_changes(queue: Queue, bare_remote: Path, tmp_path: Path) -> None:
    page = tmp_path / "watch.html"
    writes: list[int] = []

    def between(_: float) -> None:  # what happens while the reporter sleeps
        if len(writes) == 1 and len(pauses) == 1:
            queue.submit([{"args": {"lr": 0.5}}])
        pauses.append(1)

    pauses: list[int] = []
    with Queue.open(str(bare_remote)) as q:
        Reporter(q).watch(page, interval=0, sleep=between, rounds=4, on_write=lambda s: writes.append(len(s.rows)))
    assert writes == [0, 1]  # once at the start, once when the task came; not when nothing changed
    assert len(table_data_rows(page)) == 1


def table_data_rows(page: Path) -> list:
    return _embedded(page.read_text(), "TABLE")["rows"]


def test_watch_from_the_command_line(queue: Queue, bare_remote: Path, tmp_path: Path) -> None:
    page = tmp_path / "live.html"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitqueue", "report", "--watch", "--interval", "0.2", "-o", str(page),
         "--queue", str(bare_remote)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        poll_until(lambda: page.exists() and table_data_rows(page) == [], what="the first page")
        queue.submit([{"args": {"lr": 0.5}}, {"args": {"lr": 0.6}}])
        poll_until(lambda: len(table_data_rows(page)) == 2, what="the page rewritten with two tasks")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_table_columns_flatten_args_and_results(queue: Queue) -> None:
    _sweep(queue)
    sweep = Reporter(queue).sweep()
    table = table_data(sweep)
    assert table["columns"] == [
        "id", "state", "args.lr", "args.bs", "result.acc", "result.loss", "attempts", "duration", "worker", "error",
    ]  # fmt: skip
    running = next(row for row in table["rows"] if row[1] == "running")
    assert running[-2] == "test-box/0" and running[-4] == 2  # its failed attempt and the run under way


def test_many_files_are_parsed_in_processes_with_the_same_result(
    queue: Queue, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past PARALLEL_FROM files the reporter parses on every core: the same rows, problems and runs."""
    _sweep(queue)
    remote_repo.person_commit({"pending/broken.yaml": "args: {lr: [\n"})
    serial = Reporter(queue, where="args.bs == 16").sweep()
    monkeypatch.setattr(report, "PARALLEL_FROM", 2)
    monkeypatch.setattr(report, "READ_CHUNK", 2)
    monkeypatch.setattr(report.os, "cpu_count", lambda: 2)
    parallel = Reporter(queue, where="args.bs == 16").sweep()
    assert [r.id for r in parallel.rows] == [r.id for r in serial.rows] and len(serial.rows) == 3
    assert parallel.rows == serial.rows and parallel.runs == serial.runs
    assert [p.path for p in parallel.problems] == ["pending/broken.yaml"] == [p.path for p in serial.problems]
