"""``gitqueue report``: what the page holds, --where and --metric, hostile task files, --watch."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RemoteRepo, poll_until
from typer.testing import CliRunner

from gitqueue import Queue, report, report_cache
from gitqueue.cli import app
from gitqueue.report import Reporter, read_files
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


def _page_data(page: Path) -> tuple[dict, dict, list[str]]:
    """What a page shows of the tasks: its table, its plots (but the timeline, whose running bar
    ends when the page was made), and its invalid files."""
    text = page.read_text()
    plots = _embedded(text, "PLOTS")
    del plots["timeline"]
    return _embedded(text, "TABLE"), plots, re.findall(r"<li>(.*?)</li>", text)


def _odd_tasks(queue: Queue, remote_repo: RemoteRepo) -> None:
    """The sweep, plus files whose reads JSON cannot hold exactly (a NaN, bytes, an int key) and an invalid one."""
    _sweep(queue)
    queue.submit([{"args": {"lr": float("nan"), "bs": 16}}])
    inexact = "args: {b: !!binary aGk=, bs: 16, m: {3: x}}\n"
    remote_repo.person_commit({"pending/inexact.yaml": inexact, "pending/broken.yaml": "args: {lr: [\n"})


def test_a_new_process_reads_what_an_earlier_one_parsed(
    queue: Queue, bare_remote: Path, remote_repo: RemoteRepo, tmp_path: Path
) -> None:
    """A second ``gitqueue report`` process shows what the first showed, with or without another --where."""
    _odd_tasks(queue, remote_repo)

    def report(name: str, *where: str) -> tuple[dict, dict, list[str]]:
        page = tmp_path / name
        command = [sys.executable, "-m", "gitqueue", "report", "--queue", str(bare_remote), "-o", str(page), *where]
        subprocess.run(command, check=True, capture_output=True)
        return _page_data(page)

    cold = report("cold.html")
    cached = sqlite3.connect(queue.store.path / "gitqueue-summaries.sqlite")
    assert cached.execute(f"SELECT count(*) FROM {report_cache.TABLE}").fetchone()[0] == 7  # all but the two inexact
    cached.close()
    assert report("warm.html") == cold
    assert len(cold[0]["rows"]) == 8 and any("broken.yaml" in item for item in cold[2])
    filtered = report("bs16-cold.html", "--where", "args.bs == 16")
    bs = cold[0]["columns"].index("args.bs")
    assert [row[0] for row in filtered[0]["rows"]] == [row[0] for row in cold[0]["rows"] if row[bs] == 16]
    assert len(filtered[0]["rows"]) == 5  # three of the sweep's, the NaN one, the inexact one
    assert report("bs16-warm.html", "--where", "args.bs == 16") == filtered
    assert report("warm-again.html") == cold


def test_a_new_reporter_parses_only_what_no_one_has_read(
    queue: Queue, remote_repo: RemoteRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    _odd_tasks(queue, remote_repo)
    first = Reporter(queue, where="args.bs == 16").sweep()
    parsed: list[str] = []

    def counting(where: str | None, files: list) -> list:
        parsed.extend(entry.path for entry, _ in files)
        return read_files(where, files)

    monkeypatch.setattr(report, "read_files", counting)
    again = Reporter(queue, where="args.bs == 16").sweep()
    assert len(parsed) == 2 and "pending/inexact.yaml" in parsed  # and the NaN task's file: no others
    assert again.rows == first.rows and again.runs == first.runs and again.problems == first.problems
    assert [r.id for r in first.rows] == [r.id for r in Reporter(queue).sweep().rows if r.args.get("bs") == 16]


def test_a_damaged_cache_file_is_worked_without(queue: Queue, bare_remote: Path, remote_repo: RemoteRepo) -> None:
    _odd_tasks(queue, remote_repo)
    expected = Reporter(queue).sweep()
    with sqlite3.connect(queue.store.path / "gitqueue-summaries.sqlite") as db:  # rows no reporter wrote
        db.execute(f"UPDATE {report_cache.TABLE} SET data = 'not json' WHERE rowid % 2 = 0")
        db.execute(f"UPDATE {report_cache.TABLE} SET data = '[\"row\", [1], []]' WHERE rowid % 2 = 1")
    damaged = Reporter(queue).sweep()
    assert damaged.rows == expected.rows and damaged.runs == expected.runs and damaged.problems == expected.problems
    cache = queue.store.path / "gitqueue-summaries.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    cache.write_bytes(b"this is not a database\n" * 100)
    result = runner.invoke(app, ["report", "--queue", str(bare_remote), "-o", "r.html"])
    assert result.exit_code == 0, result.output
    assert [row[0] for row in _embedded(Path("r.html").read_text(), "TABLE")["rows"]] == [r.id for r in expected.rows]
