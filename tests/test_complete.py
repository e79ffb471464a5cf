"""Shell completion: task ids from the local cache (no fetch), states for ``--state``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gitqueue import Queue, complete
from gitqueue.testing import SmartHTTPServer, make_bare_repo


def _queue_over_http(tmp_path: Path) -> str:
    """A queue with a1 running and b2, c3 pending, served over HTTP until this returns: then
    the remote is gone and only the cache can answer."""
    base = tmp_path / "srv"
    make_bare_repo(base / "queue.git")
    with SmartHTTPServer(base) as server:
        url = server.url("queue.git")
        with Queue.init(url, worker="box/0") as q:
            q.submit([{"id": name, "args": {"n": n}} for n, name in enumerate(("a1", "b2", "c3"))])
            q.claim()
    return url


def test_ids_come_from_the_cache_without_the_remote(tmp_path: Path) -> None:
    url = _queue_over_http(tmp_path)  # its server is stopped: a fetch would fail
    assert complete.task_ids("", queue=url, command="show") == ["a1", "b2", "c3"]
    assert complete.task_ids("b", queue=url, command="log") == ["b2"]
    assert complete.task_ids("", queue=url, command="done") == ["a1"]  # only running tasks finish
    assert complete.task_ids("", queue=url, command="fail") == ["a1"]
    assert complete.task_ids("", queue=url, command="cancel") == ["a1", "b2", "c3"]
    assert complete.task_ids("", queue=url, command="requeue") == ["a1"]


def test_no_queue_or_no_cache_suggests_nothing(tmp_path: Path) -> None:
    assert complete.task_ids("") == []  # no --queue, no GITQUEUE_QUEUE, no .gitqueue
    assert complete.task_ids("", queue=str(make_bare_repo(tmp_path / "never-used.git"))) == []


def test_states_for_the_state_option() -> None:
    assert complete.states("") == ["pending", "running", "done", "failed", "cancelled"]
    assert complete.states("c") == ["cancelled"]


def test_the_installed_command_completes_ids_in_bash(tmp_path: Path) -> None:
    """typer's completion through the installed entry point, as bash's completion script calls it."""
    exe = Path(sys.executable).parent / "gitqueue"
    folder = tmp_path / "work"
    subprocess.run([exe, "init"], cwd=folder, check=True, capture_output=True)
    subprocess.run([exe, "submit", "--grid", "lr=0.1,0.01"], cwd=folder, check=True, capture_output=True)

    def completions(words: str, *, shell: str = "bash") -> list[str]:
        env = {**os.environ, "_GITQUEUE_COMPLETE": f"complete_{shell}", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(len(words.split(" ")) - 1)
        proc = subprocess.run([exe], cwd=folder, env=env, capture_output=True, text=True, check=False, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert completions("gitqueue show 0000") == ["000001-lr0.1", "000002-lr0.01"]
    assert completions("gitqueue cancel 000002") == ["000002-lr0.01"]
    assert completions("gitqueue done ") == []  # nothing is running
    assert completions("gitqueue ls --state r") == ["running"]
