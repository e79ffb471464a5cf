"""Progress: status's bar, rate and time left; status --watch in a log; long commands on a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

from conftest import poll_until
from typer.testing import CliRunner

from gitqueue import Queue
from gitqueue.cli import app
from gitqueue.progress import estimate, format_duration, queue_status, watch_lines

runner = CliRunner()


def in_terminal(args: list[str], *, cwd: Path) -> str:
    """Run gitqueue with a pseudo-terminal as its stdin, stdout and stderr: the text it wrote there."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen([sys.executable, "-m", "gitqueue", *args], stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=env)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    screen = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=120) == 0, screen
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)  # the text, without colours and cursor moves


def test_estimate_uses_the_recent_pace_up_to_now() -> None:
    ended = [100.0 + i for i in range(11)]  # ten runs ended a second apart, the last at 110
    live = estimate({"pending": 18, "running": 2, "done": 11}, ended, now=110.0)
    assert live.rate == 1.0 and live.eta == 20.0 and (live.finished, live.total) == (11, 31)
    stalled = estimate({"pending": 18, "running": 2, "done": 11}, ended, now=200.0)  # nothing ended for 90 s
    assert stalled.rate is not None and stalled.rate < 0.11 and stalled.eta is not None and stalled.eta > 180
    drained = estimate({"done": 11}, ended, now=500.0)
    assert drained.rate == 1.0 and drained.eta == 0.0 and drained.describe() == "1 tasks/s, nothing left to run"
    assert estimate({"pending": 3}, [], now=1.0).describe() == "no run ended yet, time left unknown"
    # a quick drain: every run ended in the same second of the branch's history
    assert estimate({"done": 6}, [100.0] * 6, now=100.0).describe() == "rate not known yet, nothing left to run"
    assert format_duration(3725) == "1h02m" and format_duration(59) == "59s"


def test_status_reads_the_rate_from_the_branch(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"args": {"i": i}} for i in range(6)])
    for _ in range(4):
        run = queue.claim()
        assert run is not None
        run.done()
    info = queue_status(queue)
    prog = info["progress"]
    assert (prog["finished"], prog["remaining"], prog["total"]) == (4, 2, 6)
    assert prog["rate"] is not None and prog["rate"] > 0 and prog["eta"] == 2 / prog["rate"]
    shown = runner.invoke(app, ["status", "--queue", str(bare_remote), "--format", "json"])
    assert shown.exit_code == 0 and '"progress"' in shown.output


def test_status_in_a_terminal_shows_a_bar_with_rate_and_time_left(queue: Queue, bare_remote: Path) -> None:
    queue.submit([{"args": {"i": i}} for i in range(4)])
    for _ in range(2):
        run = queue.claim()
        assert run is not None
        run.done()
    screen = in_terminal(["status", "--queue", str(bare_remote)], cwd=Path.cwd())
    assert "━" in screen  # rich's bar
    assert "2/4 finished (50%)" in screen and "tasks/" in screen and "left" in screen


def test_status_watch_in_a_log_prints_a_line_per_change(queue: Queue) -> None:
    lines: list[str] = []
    steps = iter(
        [
            lambda: queue.submit([{"args": {"i": 1}}, {"args": {"i": 2}}]),
            lambda: None,  # nothing changes: no line
            lambda: queue.claim(),
            lambda: None,
        ]
    )
    watch_lines(queue, interval=0, emit=lines.append, sleep=lambda _: next(steps)(), rounds=5)
    assert len(lines) == 3
    assert "pending 0  running 0" in lines[0]
    assert "pending 2  running 0" in lines[1] and "0/2 finished" in lines[1]
    assert "pending 1  running 1" in lines[2]
    assert all(line.endswith(("unknown", "left", "to run")) for line in lines)


def test_status_watch_piped_from_the_command_line(queue: Queue, bare_remote: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gitqueue", "status", "--watch", "--interval", "0.1", "--queue", str(bare_remote)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        poll_until(lambda: len(lines) >= 1, what="the first line")
        queue.submit([{"args": {"i": 1}}])
        poll_until(lambda: any("pending 1" in line for line in lines), what="a line for the submitted task")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=30)
    assert not any("\x1b" in line for line in lines), "terminal codes in a log"


def test_a_big_submit_shows_progress_on_a_terminal_only(bare_remote: Path, tmp_path: Path) -> None:
    with Queue.init(str(bare_remote), folder=tmp_path / "w"):
        pass
    grid = ["submit", "--queue", str(bare_remote), "--grid", f"a={','.join(map(str, range(50)))}", "--grid",
            f"b={','.join(map(str, range(50)))}"]  # fmt: skip
    screen = in_terminal(grid, cwd=tmp_path)
    assert "making task files" in screen and "writing files" in screen
    assert "submitted 2500 tasks" in screen
    piped = subprocess.run([sys.executable, "-m", "gitqueue", *grid[:-4], "--grid", "c=1,2"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    assert "making task files" not in piped.stderr and piped.stderr.strip() == "submitted 2 tasks"


def test_submit_and_validate_report_how_far_they_are(queue: Queue) -> None:
    heard: list[tuple[str, int, int | None]] = []
    queue.on_progress = lambda what, done, total: heard.append((what, done, total))
    queue.submit([{"args": {"i": i}} for i in range(2500)])
    making = [(done, total) for what, done, total in heard if what == "making task files"]
    assert making == [(0, 2500), (1000, 2500), (2000, 2500)]
    assert [done for what, done, _ in heard if what == "writing files"] == [0, 1000, 2000]
    heard.clear()
    assert queue.validate() == []
    assert [done for what, done, _ in heard if what == "checking files"] == [500, 1000, 1500, 2000, 2500]
